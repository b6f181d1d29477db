"""One HTTP(S) connection to the ingest server: ``POST /api/v1/samples`` with the standard library.

The body is multipart/form-data built by hand (two parts: ``image``, the JPEG, and ``meta``, the
sidecar JSON), so the ``[device]`` extra needs no HTTP library. HTTPS verifies the server's
certificate and host name (``ssl.create_default_context``, with a private CA file when one is
configured). The token travels only in the ``Authorization`` header; it is never logged and
never part of an error message. The connection is kept open between uploads and opened again
after any error.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from device import __version__

SAMPLES_PATH = "/api/v1/samples"
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]  # the JSON object of the answer ({} when it was none)
    retry_after: float | None = None
    location: str | None = None

    @property
    def error(self) -> str:
        """The server's ``error`` (or a short description of a non-JSON answer)."""
        value = self.body.get("error")
        return str(value)[:300] if value else f"HTTP {self.status}"


def multipart(sample_id: str, jpeg: bytes, meta: bytes) -> tuple[bytes, str]:
    """(body, content type) of the upload form: ``image`` (a file) and ``meta`` (JSON text)."""
    while True:
        boundary = "edgecam-" + secrets.token_hex(16)
        if boundary.encode() not in jpeg and boundary.encode() not in meta:
            break
    b = boundary.encode()
    body = b"".join(
        [
            b"--" + b + b"\r\n",
            b'Content-Disposition: form-data; name="image"; filename="'
            + sample_id.encode()
            + b'.jpg"\r\n',
            b"Content-Type: image/jpeg\r\n\r\n",
            jpeg,
            b"\r\n--" + b + b"\r\n",
            b'Content-Disposition: form-data; name="meta"\r\n',
            b"Content-Type: application/json\r\n\r\n",
            meta,
            b"\r\n--" + b + b"--\r\n",
        ]
    )
    return body, f"multipart/form-data; boundary={boundary}"


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificate and host name verification, against the system's CAs or ``ca_file``."""
    return ssl.create_default_context(cafile=ca_file)


class UploadClient:
    def __init__(
        self,
        url: str,
        token: SecretStr,
        ca_file: str | None = None,
        timeout_s: float = 20.0,
    ):
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token
        self._context = ssl_context(ca_file) if self.https else None
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()  # the connection, between the uploader and abort()
        self._aborted = False

    def _connection(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._conn is None:
                if self.https:
                    self._conn = http.client.HTTPSConnection(
                        self.host, self.port, timeout=self.timeout_s, context=self._context
                    )
                else:
                    self._conn = http.client.HTTPConnection(
                        self.host, self.port, timeout=self.timeout_s
                    )
            return self._conn

    def post_sample(self, sample_id: str, jpeg: bytes, meta: bytes) -> Answer:
        """Send one sample; the server's answer. OSError / http.client.HTTPException (the
        connection is closed then) when there was none. A kept-alive connection the server has
        closed meanwhile (its idle timeout) is replaced and the sample sent once more at once:
        the upload is idempotent (the server names a sample by its content)."""
        body, content_type = multipart(sample_id, jpeg, meta)
        headers = {
            "Content-Type": content_type,
            "Authorization": f"Bearer {self._token.get_secret_value()}",
            "Accept": "application/json",
            "User-Agent": f"edgecam-device/{__version__}",
        }
        conn = self._connection()
        reused = conn.sock is not None
        try:
            return self._post(conn, body, headers)
        except (OSError, http.client.HTTPException):
            if not reused or self._aborted:
                raise
        return self._post(self._connection(), body, headers)

    def _post(
        self, conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]
    ) -> Answer:
        try:
            if conn.sock is None:
                conn.connect()
            if self._aborted:  # abort() came while connecting: it could not cut this socket
                raise ConnectionAbortedError("upload stopped")
            conn.request("POST", self.prefix + SAMPLES_PATH, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if len(data) > MAX_ANSWER_BYTES or response.will_close:
            self.close()
        return Answer(
            response.status,
            _json_object(data),
            _seconds(response.getheader("Retry-After")),
            response.getheader("Location"),
        )

    def abort(self) -> None:
        """Interrupt a request in progress (from another thread, on stop); no request after
        this one."""
        self._aborted = True
        with self._lock:
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the backoff decides
