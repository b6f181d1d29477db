"""``edgecam-train serve``: the ingest application on uvicorn, with TLS, limits and clean errors.

The listening socket is bound here (not by uvicorn) so that a port in use or a bad address is
a one-line error with a fix, and the TLS certificate and key are loaded once before serving for
the same reason. Plain HTTP on anything but loopback is allowed (behind a TLS reverse proxy) but
warned about: the tokens would cross the network in clear.

uvicorn runs the h11 protocol (pure Python, with a hard limit on the size of a request's
headers: ``MAX_HEADER_BYTES``), at most ``max_connections`` connections at once (more get 503),
and stops on SIGINT/SIGTERM after the uploads in flight have been answered.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from training.ingest.app import Ingest, create_app
from training.ingest.errors import IngestError
from training.ingest.limits import DEFAULT_PORT, UploadLimits
from training.ingest.store import open_store
from training.ingest.tokens import TokenRegistry

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 << 10
KEEP_ALIVE_S = 30
GRACEFUL_SHUTDOWN_S = 10


@dataclass
class ServeOptions:
    inbox: str
    tokens: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    limits: UploadLimits = field(default_factory=UploadLimits)
    max_connections: int = 64
    log_interval_s: float = 10.0
    access_log: bool = False
    s3_endpoint: str | None = None
    review: bool = True  # the review page under /review (training.review)
    reviewers: Path | None = None  # default: edgecam-reviewers.txt beside the tokens file
    review_db: Path | None = None  # default: INBOX/review.sqlite (required for s3://)
    run: Path | None = None  # a run folder: embeddings for groups, Grad-CAM

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


def check_tls(cert: Path | None, key: Path | None) -> None:
    """Both or neither; readable; a key that matches the certificate."""
    if (cert is None) != (key is None):
        raise IngestError("give both --tls-cert and --tls-key, or neither")
    if cert is None or key is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise IngestError(f"TLS file not found: {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise IngestError(
            f"cannot use the TLS certificate {cert} with the key {key}: {exc}",
            "give a PEM certificate (chain) and its unencrypted PEM private key",
        ) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port``; IngestError with a fix when it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise IngestError(f"cannot listen on {host}:{port}: {exc}", "check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise IngestError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            "stop what uses the port or choose another with --port; ports below 1024 need root",
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(options: ServeOptions) -> None:
    """Run the server until SIGINT/SIGTERM."""
    import uvicorn

    check_tls(options.tls_cert, options.tls_key)
    tokens = TokenRegistry(options.tokens)
    if not len(tokens):
        log.warning("%s has no tokens: every upload gets 401 until `token add`", options.tokens)
    store = open_store(options.inbox, options.s3_endpoint)
    store.check()
    review = None
    if options.review and options.inbox.startswith("s3://") and options.review_db is None:
        log.warning(
            "the review page is off: an s3:// inbox keeps its review decisions in a local "
            "database, give --review-db PATH"
        )
    elif options.review:
        from training.review.users import default_reviewers_path
        from training.review.web import create_review

        review = create_review(
            store,
            options.inbox,
            options.reviewers or default_reviewers_path(options.tokens),
            options.review_db,
            options.run,
        )
    ingest = Ingest(
        store, tokens, options.limits, log_interval_s=options.log_interval_s, review=review
    )
    sock = bind(options.host, options.port)
    if not options.tls_cert and not _is_loopback(options.host):
        log.warning(
            "serving plain HTTP on %s: device tokens cross the network in clear; give "
            "--tls-cert/--tls-key, or put a TLS reverse proxy in front",
            options.host,
        )
    config = uvicorn.Config(
        create_app(ingest),
        http="h11",
        loop="asyncio",
        lifespan="on",
        log_config=None,
        access_log=options.access_log,
        server_header=False,
        proxy_headers=False,
        limit_concurrency=options.max_connections,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
        ssl_keyfile=str(options.tls_key) if options.tls_key else None,
    )
    log.info(
        "ingest server on %s://%s:%d, inbox %s, %d token(s) from %s",
        options.scheme,
        options.host,
        options.port,
        store.url,
        len(tokens),
        options.tokens,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        store.close()
