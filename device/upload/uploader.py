"""The "upload" thread: sends waiting samples to the ingest server, oldest first.

A sample is deleted only when the server confirmed it: ``201`` (stored) or ``200`` (a
duplicate: it already has it, e.g. the answer to an earlier try was lost). What the answer
means otherwise:

- another ``4xx`` (a bad image, an invalid sidecar, too large): the server will never take it;
  it is moved to ``rejected/`` with the answer and counted by the server's ``error``;
- ``401`` / ``403``: the token is wrong or belongs to another device; logged once, clearly;
  samples are kept and tried again with backoff;
- ``404`` / ``405`` / a redirect: the URL is wrong (not a fault of the sample); logged once,
  samples kept, backoff;
- ``408``, ``429``, ``5xx``, no answer (network down, timeout, TLS failure): tried again after
  an exponential backoff with jitter (``Retry-After`` is honoured up to ``retry_max_s``).

Nothing is lost to a restart: the samples wait on disk (device.upload.outbox).
"""

from __future__ import annotations

import http.client
import logging
import random
import ssl
import threading
from typing import Any

from pydantic import SecretStr

from device.supervision import Backoff, describe_exception
from device.upload.client import Answer, UploadClient
from device.upload.config import UploadConfig
from device.upload.outbox import SampleOutbox

log = logging.getLogger(__name__)

IDLE_WAIT_S = 60.0  # with nothing to send, look again this often (samples also wake it)
MAX_REASONS = 20  # distinct rejection reasons counted; more are counted as "other"


class Uploader:
    def __init__(
        self,
        cfg: UploadConfig,
        outbox: SampleOutbox,
        token: SecretStr,
        rng: random.Random | None = None,
    ):
        assert cfg.url is not None
        self.cfg = cfg
        self.outbox = outbox
        self.client = UploadClient(cfg.url, token, cfg.ca_file, cfg.timeout_s)
        self.rng = rng or random.Random()
        self.backoff = Backoff(cfg.retry_min_s, cfg.retry_max_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upload", daemon=True)
        self._lock = threading.Lock()  # the counters (metrics are read from another thread)
        self.uploaded = 0
        self.duplicates = 0
        self.rejected: dict[str, int] = {}
        self.failures = 0
        self.last_error: str | None = None
        self.state = "idle"  # idle | uploading | backoff | stopped
        self.retry_in_s = 0.0
        self._trouble: str | None = None  # the kind of failure logged, until a success

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        log.info("upload: sending samples to %s", self.cfg.url)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop now: a request in progress is cut off (its sample stays and is sent again)."""
        self._stop.set()
        self.outbox.notify()
        self.client.abort()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.client.close()
        self.state = "stopped"

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            item = self.outbox.oldest()
            if item is None:
                self.state = "idle"
                self.outbox.wait(IDLE_WAIT_S, self._stop)
                continue
            data = self.outbox.read(item.sample_id)
            if data is None:
                continue
            self.state = "uploading"
            delay = self.send(item.sample_id, *data)
            if delay is not None:
                self._wait(delay)

    def send(self, sample_id: str, jpeg: bytes, meta: bytes) -> float | None:
        """Upload one sample and act on the answer; the wait before the next try, or None."""
        try:
            answer = self.client.post_sample(sample_id, jpeg, meta)
        except ssl.SSLCertVerificationError as exc:
            return self._failed(
                "tls",
                f"the server's certificate is not trusted ({exc.verify_message}); "
                "set upload.ca_file to the CA that signed it",
            )
        except (OSError, http.client.HTTPException) as exc:
            if self._stop.is_set():
                return None
            return self._failed(
                "network", f"no answer from {self.cfg.url}: {describe_exception(exc)}"
            )
        return self._answered(sample_id, answer)

    def _answered(self, sample_id: str, answer: Answer) -> float | None:
        status = answer.status
        if status in (200, 201):
            self.outbox.remove(sample_id)
            with self._lock:
                if status == 201:
                    self.uploaded += 1
                else:
                    self.duplicates += 1
            self._recovered()
            return None
        if status in (401, 403):
            what = "401: no valid token" if status == 401 else "403: the token is not allowed"
            return self._failed(
                f"auth-{status}",
                f"the server refused this device's token ({what}: {answer.error}); samples are "
                "kept. Check EDGECAM_UPLOAD_TOKEN / upload.token_file against `edgecam-train "
                "token add DEVICE` for this device_id",
                level=logging.ERROR,
            )
        if status in (404, 405) or 300 <= status < 400:
            where = (
                f" (it answered with a redirect to {answer.location})" if answer.location else ""
            )
            return self._failed(
                f"url-{status}",
                f"{self.cfg.url} is not an ingest server's address (HTTP {status}{where}); "
                "samples are kept. Check upload.url",
                level=logging.ERROR,
            )
        if 400 <= status < 500 and status not in (408, 429):
            self.outbox.reject(sample_id, {"status": status, **answer.body})
            reason = answer.error
            with self._lock:
                if reason not in self.rejected and len(self.rejected) >= MAX_REASONS:
                    reason = "other"
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
            fix = answer.body.get("fix")
            log.warning(
                "upload: the server refused sample %s for good (HTTP %d: %s%s); moved to %s",
                sample_id[:12],
                status,
                answer.error,
                f"; fix: {str(fix)[:300]}" if fix else "",
                self.outbox.root / "rejected",
            )
            return None
        delay = self._failed("server", f"the server answered HTTP {status}: {answer.error}")
        if answer.retry_after is not None:
            delay = min(max(delay, answer.retry_after), self.cfg.retry_max_s)
            self.retry_in_s = delay
        return delay

    def _failed(self, kind: str, message: str, level: int = logging.WARNING) -> float:
        """Count a failed try, log it once per kind of trouble, and return the backoff."""
        delay = self.backoff.next() * self.rng.uniform(0.5, 1.0)
        with self._lock:
            self.failures += 1
            self.last_error = message
            self.retry_in_s = delay
        if kind != self._trouble:
            self._trouble = kind
            log.log(
                level,
                "upload: %s (%d sample(s) waiting; retrying with backoff up to %g s, logged "
                "once until it works)",
                message,
                len(self.outbox),
                self.cfg.retry_max_s,
            )
        return delay

    def _recovered(self) -> None:
        self.backoff.reset()
        self.retry_in_s = 0.0
        if self._trouble is not None:
            log.info("upload: the server takes samples again (%d waiting)", len(self.outbox))
            self._trouble = None

    def _wait(self, delay: float) -> None:
        self.state = "backoff"
        self._stop.wait(delay)

    # -- metrics ---------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self.state,
                "uploaded": self.uploaded,
                "duplicates": self.duplicates,
                "rejected_by_error": dict(self.rejected),
                "failures": self.failures,
                "last_error": self.last_error,
                "retry_in_s": round(self.retry_in_s, 1),
            }
