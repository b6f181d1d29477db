"""systemd integration: readiness, watchdog pings and status text over the sd_notify protocol.

systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` set to a datagram socket (a
path, or ``@name`` for the abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``
(and ``WATCHDOG_PID``). The service sends newline-separated ``KEY=value`` lines in one datagram
(sd_notify(3)); that is all the protocol is, so it is written here instead of depending on a
library. Without ``NOTIFY_SOCKET`` (a shell, the tests) everything here does nothing.

What the device tells systemd (``ServiceWatch``, fed from the runner's main loop):

- ``READY=1`` once the first frame of any camera is classified: the device is doing its job
  (a second camera that is still connecting does not hold the start up).
- ``WATCHDOG=1`` every quarter of the watchdog interval, and only while every camera that
  should be classifying delivered a result within the last half interval. A camera whose
  capture is stuck in a blocking read, whose inference thread hangs, or that keeps being
  restarted because its interpreter fails, stops the pings, and systemd restarts the service
  (``WatchdogSec=``, ``Restart=on-failure``). Cameras that do not count: a source that is lost
  and being reconnected with backoff (``reconnecting``; restarting the process would not bring a
  network camera back, and the supervision already retries it) unless the camera was restarted
  since its last result (a thread died), and cameras that ended (a file without ``loop``).
  A frame the motion gate skips (a still scene) counts like a result: the camera delivers and
  is looked at. The runner's own loop stopping stops the pings too.
- ``STATUS=`` a line with each camera's fps or state and the model (``<name>@<sha12>``), shown
  by ``systemctl status edgecam-device``.
- ``STOPPING=1`` when the device starts to shut down.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from device.pipeline import CameraPipeline

log = logging.getLogger(__name__)

# cameras in these states are not expected to deliver results (module docstring)
NOT_EXPECTED = frozenset({"reconnecting", "finished", "stopped"})
STATUS_EVERY_S = 5.0


class Notifier:
    """Sends sd_notify datagrams to ``address``; does nothing when ``address`` is None.

    Send errors are logged once and never raised: systemd going away must not stop the device.
    """

    def __init__(self, address: str | None, watchdog_s: float | None = None):
        self.address = _socket_address(address) if address else None
        self.watchdog_s = watchdog_s if self.address else None
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``/``_PID``)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, _watchdog_seconds(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; True when it was sent."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "systemd notify socket %s: %s (notifications dropped)", self.address, exc
                )
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):  # abstract namespace: a leading NUL byte instead of '@'
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name: not notifying systemd", value)
    return None


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog interval systemd set for this process, or None (sd_watchdog_enabled(3))."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1e6


@dataclass
class _Progress:
    results: int
    at: float  # monotonic time the result count last changed (or watching began)
    restarts: int  # the camera's restart count then


def _progress_count(pipeline: CameraPipeline) -> int:
    """Results, plus frames the motion gate decided not to classify (a still scene: the camera
    delivers and is looked at; device.motion), so that gating never starves the watchdog."""
    gate = getattr(pipeline, "gate", None)
    return pipeline.stats.results + (gate.skipped if gate is not None else 0)


class ServiceWatch:
    """Decides what to tell systemd from the cameras' progress (module docstring).

    ``tick(pipelines)`` is called often (every 0.2 s) from the runner's main loop; it reads each
    pipeline's result count and state and sends at most a few datagrams a second.
    """

    def __init__(self, notifier: Notifier, clock: Callable[[], float] = time.monotonic):
        self.notifier = notifier
        self.clock = clock
        self.ready = False
        self.feeding = False  # whether the last check allowed watchdog pings
        self._progress: dict[str, _Progress] = {}
        self._next_ping = 0.0
        self._next_status = 0.0
        wd = notifier.watchdog_s
        self.window_s = wd / 2 if wd else None
        self.ping_every_s = max(wd / 4, 0.05) if wd else None

    def tick(self, pipelines: Sequence[CameraPipeline]) -> None:
        if not self.notifier.enabled:
            return
        now = self.clock()
        stale = self._stale_cameras(pipelines, now)
        if not self.ready:
            if any(p.stats.results > 0 for p in pipelines):
                self.ready = True
                self.notifier.send("READY=1", f"STATUS={self._status_text(pipelines)}")
                self._next_status = now + STATUS_EVERY_S
                log.info("systemd: ready (first frame classified)")
            elif now >= self._next_status:
                self.notifier.send("STATUS=starting: waiting for the first classified frame")
                self._next_status = now + STATUS_EVERY_S
            return
        if self.window_s is not None and self._watchdog(stale, now):
            self._next_status = now  # say at once that it stalled, or that it is back
        if now >= self._next_status:
            self.notifier.send(f"STATUS={self._status_text(pipelines, stale)}")
            self._next_status = now + STATUS_EVERY_S

    def _stale_cameras(self, pipelines: Sequence[CameraPipeline], now: float) -> list[str]:
        """Cameras that should be classifying but delivered nothing within the window."""
        stale = []
        for p in pipelines:
            name, results, health = p.camera.name, _progress_count(p), p.health
            seen = self._progress.get(name)
            if seen is None or seen.results != results:
                self._progress[name] = seen = _Progress(results, now, health.restarts)
            # a restarted camera reopens its source ("reconnecting") before it fails again:
            # only a camera that was not restarted since its last result is excused
            excused = health.state in NOT_EXPECTED and health.restarts == seen.restarts
            if not excused and self.window_s is not None and now - seen.at > self.window_s:
                stale.append(name)
        return stale

    def _watchdog(self, stale: list[str], now: float) -> bool:
        """Ping when no camera is stale; True when that changed (stalled, or back)."""
        if stale:
            if not self.feeding:
                return False
            self.feeding = False
            log.warning(
                "systemd watchdog: no result from camera(s) %s for over %.1f s; not feeding "
                "the watchdog (systemd restarts the service unless results come back)",
                ", ".join(stale),
                self.window_s,
            )
            return True
        changed = not self.feeding and bool(self._next_ping)
        if changed:
            log.info("systemd watchdog: every camera is classifying again")
        self.feeding = True
        if now >= self._next_ping:
            self.notifier.send("WATCHDOG=1")
            self._next_ping = now + (self.ping_every_s or 0.0)
        return changed

    @staticmethod
    def _status_text(pipelines: Sequence[CameraPipeline], stale: Sequence[str] = ()) -> str:
        if stale:
            return f"stalled: no results from {', '.join(stale)}"
        parts = []
        for p in pipelines:
            state = p.health.state
            if state == "running":
                parts.append(f"{p.camera.name} {p.stats.snapshot()['fps']:.1f} fps")
            else:
                parts.append(f"{p.camera.name} {state}")
        model = pipelines[0].classifier.bundle.ref if pipelines else "?"
        return f"classifying: {', '.join(parts)}; model {model}"

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        self.notifier.close()
