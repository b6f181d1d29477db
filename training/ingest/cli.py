"""The ``serve`` and ``token`` subcommands of ``edgecam-train`` (parsers and commands).

Kept light to import: the server's libraries load only when ``serve`` runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from device.cliapp import EXIT_OK

DEFAULT_HOST = "127.0.0.1"


def _tokens_option(parser: argparse.ArgumentParser) -> None:
    from training.ingest.tokens import DEFAULT_TOKENS_FILE, TOKENS_ENV

    parser.add_argument(
        "--tokens",
        type=Path,
        help=f"tokens file (default: ${TOKENS_ENV} or ./{DEFAULT_TOKENS_FILE})",
    )


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from training.ingest.limits import DEFAULT_MAX_BODY, DEFAULT_MAX_PIXELS, DEFAULT_PORT

    p = sub.add_parser(
        "serve",
        help="run the ingest server that receives field samples from devices",
        description="Receive field samples (JPEG + sidecar) from devices over HTTP(S) into "
        "INBOX/<device>/<YYYY-MM-DD>/<sample_id>.jpg|.json. See docs/field-loop.md.",
    )
    p.add_argument("inbox", help="inbox folder, or s3://bucket/prefix")
    _tokens_option(p)
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on ({DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate (chain): serve HTTPS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument(
        "--max-body",
        type=_positive,
        default=DEFAULT_MAX_BODY,
        help=f"largest upload in bytes ({DEFAULT_MAX_BODY})",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest image in pixels ({DEFAULT_MAX_PIXELS})",
    )
    p.add_argument("--max-connections", type=_positive, default=64, help="connections at once (64)")
    p.add_argument(
        "--log-interval", type=float, default=10.0, help="seconds between batch log lines (10)"
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--s3-endpoint",
        help="S3 endpoint URL for MinIO/Ceph (default: AWS or $AWS_ENDPOINT_URL_S3)",
    )
    from training.review.cli import add_serve_options

    add_serve_options(p)  # the review page: --reviewers, --review-db, --run, --no-review

    p = sub.add_parser("token", help="make, list and revoke device tokens of the ingest server")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    t = tsub.add_parser(
        "add", help="make a token for a device: printed once, only its hash is stored"
    )
    t.add_argument("name", help="the device_id of the device (or a name for an --admin token)")
    _tokens_option(t)
    t.add_argument("--admin", action="store_true", help="a token that reads every device's stats")
    t.add_argument("--replace", action="store_true", help="replace the name's existing token")
    t = tsub.add_parser("list", help="list the names with a token (never the tokens)")
    _tokens_option(t)
    t = tsub.add_parser("revoke", help="delete a name's token (the server stops taking it)")
    t.add_argument("name", help="device_id or admin name")
    _tokens_option(t)


def cmd_serve(args: argparse.Namespace) -> int:
    from training.ingest.limits import UploadLimits
    from training.ingest.server import ServeOptions, serve
    from training.ingest.tokens import default_tokens_path

    if args.log_interval <= 0:
        from training.ingest.errors import IngestError

        raise IngestError("--log-interval must be above 0 seconds")
    serve(
        ServeOptions(
            inbox=args.inbox,
            tokens=args.tokens or default_tokens_path(),
            host=args.host,
            port=args.port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            limits=UploadLimits(max_body=args.max_body, max_pixels=args.max_pixels),
            max_connections=args.max_connections,
            log_interval_s=args.log_interval,
            access_log=args.access_log,
            s3_endpoint=args.s3_endpoint,
            review=not args.no_review,
            reviewers=args.reviewers,
            review_db=args.review_db,
            run=args.run,
        )
    )
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    from training.ingest import tokens

    path = args.tokens or tokens.default_tokens_path()
    if args.token_command == "add":
        role = "admin" if args.admin else "device"
        token = tokens.add_token(path, args.name, role=role, replace=args.replace)
        print(token)
        print(
            f"stored the sha256 of {args.name!r}'s {role} token in {path}; the token above is "
            "shown only now: put it in the device's upload token file",
            file=sys.stderr,
        )
    elif args.token_command == "list":
        entries = tokens.read_tokens(path)
        for e in entries:
            print(f"{e.name:<24} {e.role:<7} {e.created}  sha256:{e.digest[:12]}")
        if not entries:
            print(f"no tokens in {path}", file=sys.stderr)
    else:
        tokens.revoke_token(path, args.name)
        print(f"revoked {args.name!r}'s token in {path}", file=sys.stderr)
    return EXIT_OK


COMMANDS = {"serve": cmd_serve, "token": cmd_token}
