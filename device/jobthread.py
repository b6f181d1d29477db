"""A named thread that does queued jobs in order, one at a time (slow work off the loop).

The alerts worker (JPEGs, outbox writes) and the sampling writer (JPEGs, sample files) are
both one of these: the inference thread hands a job over and goes on; a job that raises is
reported and the thread goes on with the next; ``stop()`` finishes what is queued first.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

J = TypeVar("J")


class JobThread(Generic[J]):
    """Subclasses implement ``do(job)`` and may override ``on_error(exc, job)``.
    ``maxsize`` bounds the queue (0: unbounded); ``offer`` never waits."""

    def __init__(self, name: str, maxsize: int = 0):
        self._jobs: queue.Queue[J | None] = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def do(self, job: J) -> None:
        raise NotImplementedError

    def on_error(self, exc: Exception, job: J) -> None:
        log.error("%s: %s failed", self._thread.name, type(job).__name__, exc_info=exc)

    def put(self, job: J) -> None:
        """Queue ``job``, waiting for room when the queue is bounded and full."""
        self._jobs.put(job)

    def offer(self, job: J) -> bool:
        """Queue ``job`` if there is room now; False otherwise."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            return False
        return True

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued jobs, then end the thread (waits at most ``timeout`` for each)."""
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):  # still full after timeout: it is a daemon
                self._jobs.put(None, timeout=timeout)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self.do(job)
            except Exception as exc:  # one failed job must not end the thread
                self.on_error(exc, job)
