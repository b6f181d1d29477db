"""The ingest API (v1) as a Starlette application.

- ``POST /api/v1/samples``: multipart ``image`` (JPEG) + ``meta`` (the edgecam.sample/1
  sidecar), ``Authorization: Bearer <device token>``. 201 ``{"sample_id", "stored": true}``;
  200 ``{"sample_id", "duplicate": true}`` when the inbox already has it; otherwise a 4xx/5xx
  with ``{"error", "fix"}``.
- ``GET /api/v1/stats``: counters (see :mod:`.stats`); a device token sees its own device, an
  admin token every device.
- ``GET /healthz``: ``{"status": "ok"}``, no token needed (for probes and load balancers).

The order of the checks keeps the cheap refusals cheap: the token is checked before a byte of
the body is read, the Content-Type and Content-Length before the body is read, the body is read
only up to ``max_body`` (counted while it streams: a chunked body cannot go over either), and
parsing, validation and storing run in the thread pool, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from training.ingest.errors import Rejected, StoreError
from training.ingest.limits import UploadLimits
from training.ingest.multipart import boundary_of, parse_upload
from training.ingest.stats import IngestStats
from training.ingest.store import Store
from training.ingest.tokens import Identity, TokenRegistry
from training.ingest.validate import validate_upload

log = logging.getLogger(__name__)

API = "/api/v1"
ENDPOINTS = f"POST {API}/samples, GET {API}/stats, GET /healthz"
TOKEN_FIX = "send 'Authorization: Bearer <token>'; a device gets one with edgecam-train token add"
STORE_ERROR_LOG_EVERY_S = 10.0
RETRY_AFTER_S = 30  # a 503 (the inbox cannot store): when a device should try again


@dataclass
class Ingest:
    """What the endpoints share: the store, the tokens, the limits and the counters."""

    store: Store
    tokens: TokenRegistry
    limits: UploadLimits = field(default_factory=UploadLimits)
    stats: IngestStats = field(default_factory=IngestStats)
    log_interval_s: float = 10.0
    review: Any = None  # training.review.web.Review: the review page (routes under /review)
    _store_error_logged: float = -1e9

    def authenticate(self, request: Request) -> Identity:
        header = request.headers.get("authorization")
        if not header:
            raise Rejected(
                401, "missing_token", "the request has no Authorization header", TOKEN_FIX
            )
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Rejected(
                401, "bad_token", "the Authorization header is not 'Bearer <token>'", TOKEN_FIX
            )
        identity = self.tokens.lookup(token.strip())
        if identity is None:
            raise Rejected(
                401,
                "bad_token",
                "the token is not valid (unknown, revoked or mistyped)",
                "check the device's upload token file, or make a new token with "
                "edgecam-train token add DEVICE --replace",
            )
        return identity

    def ingest(
        self, content_type: str | None, body: bytes, sender: Identity
    ) -> tuple[str, bool, int]:
        """Parse, validate and store one upload (in a worker thread): (sample_id, stored, JPEG
        bytes)."""
        parts = parse_upload(content_type, body)
        meta = validate_upload(parts, sender, self.limits)
        try:
            stored = self.store.put(meta, parts.image)
        except StoreError as exc:
            now = time.monotonic()
            if now - self._store_error_logged >= STORE_ERROR_LOG_EVERY_S:
                self._store_error_logged = now
                log.error("cannot store samples (answering 503 until it works): %s", exc)
            raise Rejected(
                503,
                "store_error",
                "the server could not store the sample",
                "retry later; the server's log says what is wrong with its inbox",
            ) from exc
        return meta.sample_id, stored, len(parts.image)


def _error(
    status: int, error: str, fix: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "fix": fix}, status_code=status, headers=headers)


def _refusal(rejected: Rejected) -> JSONResponse:
    headers = None
    if rejected.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="edgecam"'}
    elif rejected.status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return _error(rejected.status, rejected.error, rejected.fix, headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``."""
    too_large = Rejected(
        413,
        "too_large",
        f"the upload is larger than the server's limit of {limit:,} bytes",
        "send smaller JPEGs (lower resolution or quality), or raise the server's --max-body",
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Rejected(
                400, "bad_request", "the Content-Length is not a number", "fix the client"
            )
        if int(declared) > limit:
            raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def upload(request: Request) -> Response:
    ingest: Ingest = request.app.state.ingest
    sender: Identity | None = None
    try:
        sender = ingest.authenticate(request)
        if sender.is_admin:
            raise Rejected(
                403,
                "forbidden",
                f"{sender.name!r} holds an admin token, which reads stats but uploads nothing",
                "upload with the device's own token",
            )
        content_type = request.headers.get("content-type")
        boundary_of(content_type)
        body = await _read_body(request, ingest.limits.max_body)
        sample_id, stored, nbytes = await run_in_threadpool(
            ingest.ingest, content_type, body, sender
        )
    except Rejected as rejected:
        ingest.stats.rejected(sender.name if sender else None, rejected.reason)
        log.debug("refused an upload (%s %s): %s", rejected.status, rejected.reason, rejected.error)
        return _refusal(rejected)
    except ClientDisconnect:
        ingest.stats.rejected(sender.name if sender else None, "disconnected")
        return Response(status_code=400)
    ingest.stats.accepted(sender.name, stored, nbytes)
    if stored:
        return JSONResponse({"sample_id": sample_id, "stored": True}, status_code=201)
    return JSONResponse({"sample_id": sample_id, "duplicate": True}, status_code=200)


async def stats(request: Request) -> Response:
    ingest: Ingest = request.app.state.ingest
    try:
        reader = ingest.authenticate(request)
    except Rejected as rejected:
        return _refusal(rejected)
    only = None if reader.is_admin else reader.name
    return JSONResponse(ingest.stats.snapshot(only), headers={"Cache-Control": "no-store"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error(404, f"no such endpoint: {request.url.path[:100]}", f"the API is {ENDPOINTS}")
    if exc.status_code == 405:
        return _error(
            405,
            f"{request.method} is not allowed on {request.url.path}",
            f"the API is {ENDPOINTS}",
            headers=exc.headers,
        )
    return _error(exc.status_code, str(exc.detail), f"the API is {ENDPOINTS}")


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal server error", "retry later; the server's log has the details")


async def _log_batches(ingest: Ingest) -> None:
    while True:
        await asyncio.sleep(ingest.log_interval_s)
        line = ingest.stats.take_batch()
        if line:
            log.info("%s", line)


def create_app(ingest: Ingest) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_log_batches(ingest), name="ingest-batch-log")
        if ingest.review is not None:
            ingest.review.start()
        try:
            yield
        finally:
            if ingest.review is not None:
                ingest.review.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            line = ingest.stats.take_batch()
            if line:
                log.info("%s", line)

    app = Starlette(
        routes=[
            Route(f"{API}/samples", upload, methods=["POST"]),
            Route(f"{API}/stats", stats, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            *(ingest.review.routes() if ingest.review is not None else []),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.ingest = ingest
    app.state.review = ingest.review
    return app
