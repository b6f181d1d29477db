"""Downloading a bundle archive: allowed schemes only (redirects too), a size cap, a timeout.

Plain ``urllib`` (no extra dependency). The content is not trusted here: the signature check
(``device.rollout.signing``) decides. A URL is never repeated in a message (it may carry a
token); only its scheme and host are.
"""

from __future__ import annotations

import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from device.rollout.errors import RolloutError

log = logging.getLogger(__name__)

CHUNK = 1 << 16


@dataclass(frozen=True)
class Downloaded:
    path: Path
    bytes: int
    seconds: float


def where(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what messages may name."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def check_scheme(url: str, allowed: Sequence[str]) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in allowed:
        raise RolloutError(
            "download",
            f"URL scheme {scheme or '(none)'!r} is not allowed (rollout.allowed_schemes: "
            f"{', '.join(allowed)})",
            "serve the bundle over " + " or ".join(allowed) + ", or add the scheme to "
            "rollout.allowed_schemes in the device config",
        )


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an allowed scheme (never https -> http unless allowed)."""

    def __init__(self, allowed: Sequence[str]):
        self.allowed = allowed

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        check_scheme(newurl, self.allowed)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(
    url: str,
    target: Path,
    *,
    max_bytes: int,
    timeout: float,
    allowed: Sequence[str],
    ca_file: str | None = None,
) -> Downloaded:
    """Fetch ``url`` into ``target``; RolloutError (stage "download") on any failure."""
    check_scheme(url, allowed)
    context = ssl.create_default_context(cafile=ca_file)
    opener = urllib.request.build_opener(
        _Redirects(allowed), urllib.request.HTTPSHandler(context=context)
    )
    request = urllib.request.Request(url, headers={"User-Agent": "edgecam-device"})
    site = where(url)
    started = time.monotonic()
    deadline = started + timeout
    size = 0
    try:
        with opener.open(request, timeout=min(timeout, 30.0)) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise RolloutError(
                    "download",
                    f"the bundle is {int(length):,} bytes; at most {max_bytes:,} are accepted",
                    "raise rollout.max_mb on the device, or ship a smaller model",
                )
            with target.open("wb") as out:
                while chunk := response.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise RolloutError(
                            "download",
                            f"the bundle is larger than {max_bytes:,} bytes (rollout.max_mb)",
                            "raise rollout.max_mb on the device, or ship a smaller model",
                        )
                    if time.monotonic() > deadline:
                        raise RolloutError(
                            "download",
                            f"the download from {site} took longer than {timeout:g} s",
                            "raise rollout.download_timeout_s, or serve the bundle nearer",
                        )
                    out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise RolloutError(
            "download", f"{site} answered HTTP {exc.code} {exc.reason}", "check the URL"
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            why = f"TLS certificate verification failed ({reason.verify_message})"
            hint = "set rollout.ca_file to the CA that signed the server's certificate"
        else:
            why, hint = f"cannot reach it ({reason})", "check the URL and the network"
        raise RolloutError("download", f"download from {site} failed: {why}", hint) from None
    except TimeoutError:
        raise RolloutError("download", f"download from {site} timed out") from None
    except OSError as exc:
        raise RolloutError("download", f"download from {site} failed: {exc}") from None
    seconds = time.monotonic() - started
    log.info("rollout: downloaded %d bytes from %s in %.1f s", size, site, seconds)
    return Downloaded(target, size, seconds)
