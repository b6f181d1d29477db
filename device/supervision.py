"""Supervision of camera pipelines: settings, backoff, health records.

A camera whose capture or inference thread dies of an unexpected error is restarted with
backoff; one that keeps dying (``max_restarts`` restarts in a row, each failing before it ran
``stable_s`` seconds) is given up, and the process then exits non-zero, so that systemd
(``Restart=on-failure``) and whoever watches the device learn of it. A source that cannot be
opened, or is lost, is not a crash: it is retried with backoff for as long as the device runs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# how long an outage stays quiet in the log before it is reported again
OUTAGE_REMINDER_S = 600.0


class SupervisionConfig(BaseModel):
    """The ``supervision:`` section of the device config."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    max_restarts: int = Field(
        5,
        ge=0,
        description="Restarts in a row of a camera that keeps failing before the device gives up "
        "and exits non-zero (0: give up at the first failure).",
    )
    restart_min_s: float = Field(1.0, gt=0, description="First wait before restarting a camera.")
    restart_max_s: float = Field(
        30.0, gt=0, description="Longest wait between restarts of a failing camera."
    )
    stable_s: float = Field(
        60.0,
        gt=0,
        description="A camera that ran this long since its last restart counts as recovered "
        "(its run of failed restarts starts again from zero).",
    )


class Backoff:
    """Exponential backoff: ``next()`` gives min_s, 2*min_s, ... up to max_s."""

    def __init__(self, min_s: float, max_s: float):
        self.min_s = min_s
        self.max_s = max(max_s, min_s)
        self._next = min_s

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.min_s


class CameraState:
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"  # the source is lost or not yet open: retried with backoff
    RESTARTING = "restarting"  # a thread died: restarted with backoff
    FINISHED = "finished"  # a file ended, or --frames results were reached
    STOPPED = "stopped"  # the device was asked to stop
    FAILED = "failed"  # could not be recovered: the device exits non-zero


@dataclass
class CameraHealth:
    """What the metrics say about one camera's supervision (read by the metrics thread)."""

    state: str = CameraState.STARTING
    restarts: int = 0
    failed_in_a_row: int = 0
    last_error: str | None = None
    last_error_at: float | None = None  # wall clock
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def set(self, state: str) -> None:
        with self._lock:
            self.state = state

    def error(self, message: str) -> None:
        with self._lock:
            self.last_error = message
            self.last_error_at = time.time()

    def snapshot(self) -> dict[str, Any]:
        from device.mqtt import utc_iso

        with self._lock:
            return {
                "state": self.state,
                "restarts": self.restarts,
                "last_error": self.last_error,
                "last_error_at": utc_iso(self.last_error_at) if self.last_error_at else None,
            }


def describe_exception(exc: BaseException) -> str:
    """``RuntimeError: message`` on one line (first line of the message)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
