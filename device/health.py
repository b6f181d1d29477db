"""Camera health: notice when a camera cannot see, and say so on MQTT and in Home Assistant.

A covered, fogged, blinded or frozen camera keeps producing frames, and a classifier keeps
reporting "nothing here" with confidence. ``HealthMonitor`` watches one camera from the small
grey copy the capture thread already makes (device.motion.GreyCopy), at most every
``CHECK_INTERVAL_S``:

- ``dark``: mean grey level below ``dark_level``;
- ``bright``: mean grey level above ``bright_level`` (overexposed, blinded);
- ``covered``: at least ``covered_fraction`` of an 8 x 8 grid of blocks is flat (grey-level
  standard deviation under ``flat_std``): a lens covered, fogged or looking at a uniform surface
  (not judged while too dark: a dark picture is flat too, and ``dark`` says so);
- ``blurred``: the focus measure (variance of the Laplacian divided by the grey-level variance,
  so that light and contrast do not change it) below ``blur_ratio`` of this camera's own
  baseline (a running mean with time constant ``baseline_s``, learnt only from frames with no
  condition), so a plain scene is not called blurred; not judged while dark/bright/covered;
- ``frozen``: a live source delivers identical frames;
- ``no_frames``: no frame for ``raise_s`` (the source is lost and reconnecting, or hangs).

Each problem has hysteresis: raised when its condition held for ``raise_s``, cleared when it was
absent for ``clear_s``. A change is logged, and handed to a ``HealthSink``: the retained health
state on ``<prefix>/<device>/<camera>/health`` and a start/end event on the camera's alert
topic (rule ``health.<problem>``), through the alert outbox when alerts are on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from device.alerts.events import new_event_id
from device.mqtt import utc_iso

log = logging.getLogger(__name__)

PROBLEMS = ("dark", "bright", "covered", "blurred", "frozen", "no_frames")
Problem = Literal["dark", "bright", "covered", "blurred", "frozen", "no_frames"]
CHECK_INTERVAL_S = 0.2  # frames are checked at most this often (5 per second)
GRID = 8  # the covered check looks at GRID x GRID blocks
BASELINE_WARMUP = 5  # checks before blur is judged against the baseline
WATCHED_STATES = ("starting", "running", "reconnecting")  # camera states that expect frames


class HealthConfig(BaseModel):
    """The ``cameras[].health`` section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    enabled: bool = Field(
        False,
        description="Watch the camera's picture (dark, bright, covered, blurred, frozen, no "
        "frames); publish its health state, events and a Home Assistant problem sensor.",
    )
    checks: list[Problem] = Field(
        default_factory=lambda: list(PROBLEMS),
        description="The checks to run (dark, bright, covered, blurred, frozen, no_frames).",
    )
    raise_s: float = Field(
        30.0, gt=0, description="A condition must hold this long before its problem is raised."
    )
    clear_s: float = Field(
        15.0, gt=0, description="A raised problem clears after its condition was gone this long."
    )
    dark_level: float = Field(
        20.0, ge=0, le=255, description="Too dark: mean grey level (0-255) below this."
    )
    bright_level: float = Field(
        230.0, ge=0, le=255, description="Too bright (overexposed): mean grey level above this."
    )
    flat_std: float = Field(
        4.0, gt=0, description="A block whose grey-level standard deviation is below this is flat."
    )
    covered_fraction: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Covered or uniform: at least this fraction of the frame's 8 x 8 blocks "
        "is flat.",
    )
    blur_ratio: float = Field(
        0.35,
        gt=0,
        lt=1,
        description="Blurred: focus below this fraction of the camera's own recent baseline.",
    )
    baseline_s: float = Field(
        600.0, gt=0, description="Time constant (s) of the focus baseline the blur check uses."
    )


@dataclass(frozen=True)
class Measures:
    """What one check measured on the grey copy."""

    mean: float
    std: float
    flat: float  # fraction of flat blocks
    focus: float  # var(Laplacian) / var(grey)

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


def measure(grey: np.ndarray, flat_std: float) -> Measures:
    mean, std = cv2.meanStdDev(grey)
    m, s = float(mean[0, 0]), float(std[0, 0])
    h, w = grey.shape
    bh, bw = h // GRID, w // GRID
    flat = 1.0
    if bh and bw:
        blocks = grey[: bh * GRID, : bw * GRID].reshape(GRID, bh, GRID, bw).astype(np.float32)
        flat = float((blocks.std(axis=(1, 3)) < flat_std).mean())
    focus = 0.0
    if s >= 1.0:
        _, lap_std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))
        focus = float(lap_std[0, 0]) ** 2 / (s * s)
    return Measures(m, s, flat, focus)


class HealthSink(Protocol):
    """Where health changes go: the alerts (outbox) or the MQTT publisher directly."""

    def publish_health(self, camera: str, state: dict[str, Any], event: dict[str, Any] | None):
        """Send the retained ``state`` and, when given, the health ``event`` (alert topic)."""


class DirectHealthSink:
    """Health on MQTT without the alert outbox (alerts disabled): published at QoS 1 as is."""

    def __init__(self, publisher: Any):
        self.publisher = publisher

    def publish_health(
        self, camera: str, state: dict[str, Any], event: dict[str, Any] | None
    ) -> None:
        topics = self.publisher.topics
        self.publisher.publish(topics.camera(camera, "health"), state, qos=1, retain=True)
        if event is not None:
            self.publisher.publish(topics.alert(camera), event, qos=1)


@dataclass
class _Hysteresis:
    """One problem: its condition over time, raised / cleared with hysteresis."""

    name: str
    active: bool = False
    cond_since: float | None = None  # clock time the condition started (None: absent)
    gone_since: float | None = None  # clock time the condition went away while raised
    value: float | None = None
    limit: float | None = None
    event_id: str | None = None
    started_wall: float = 0.0
    seq: int = 0

    def update(self, cond: bool, t: float, raise_s: float, clear_s: float) -> str | None:
        """Feed the condition at clock ``t``; "start" or "end" when the problem changes."""
        if cond:
            self.gone_since = None
            if self.cond_since is None:
                self.cond_since = t
            if not self.active and t - self.cond_since >= raise_s:
                self.active = True
                return "start"
            return None
        self.cond_since = None
        if self.active:
            if self.gone_since is None:
                self.gone_since = t
            if t - self.gone_since >= clear_s:
                self.active = False
                self.gone_since = None
                return "end"
        return None


class HealthMonitor:
    """One camera's health (module docstring). ``observe`` runs on the capture thread, ``tick``
    on the runner's main loop, ``state`` and ``metrics`` anywhere. ``live``: the frozen check
    runs (a file may hold a still picture); ``clock`` is the monotonic clock of ``tick``."""

    def __init__(
        self,
        camera: str,
        cfg: HealthConfig,
        sink: HealthSink | None = None,
        *,
        device_id: str = "",
        live: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.camera = camera
        self.cfg = cfg
        self.sink = sink
        self.device_id = device_id
        self.live = live
        self.clock = clock
        self._lock = threading.Lock()
        self._problems = {name: _Hysteresis(name) for name in PROBLEMS if name in cfg.checks}
        self._previous: np.ndarray | None = None
        self._last_check: float | None = None
        self._last_frame_mono = clock()
        self._baseline: float | None = None
        self._learnt = 0
        self.measures: Measures | None = None
        self.checks = 0

    # -- the capture thread -------------------------------------------------------------------
    def observe(self, grey: np.ndarray, t: float) -> None:
        """Check a frame's grey copy (taken at clock ``t``), at most every CHECK_INTERVAL_S."""
        self._last_frame_mono = self.clock()
        if self._last_check is not None and 0 <= t - self._last_check < CHECK_INTERVAL_S:
            return
        cfg = self.cfg
        dt = 0.0 if self._last_check is None else max(0.0, t - self._last_check)
        self._last_check = t
        m = measure(grey, cfg.flat_std)
        frozen = False
        if self.live and "frozen" in self._problems:
            previous = self._previous
            frozen = previous is not None and previous.shape == grey.shape
            frozen = frozen and cv2.norm(grey, previous, cv2.NORM_INF) == 0
            if previous is None or previous.shape != grey.shape:
                self._previous = grey.copy()
            else:
                np.copyto(previous, grey)
        conditions: dict[str, tuple[bool, float, float]] = {
            "dark": (m.mean < cfg.dark_level, m.mean, cfg.dark_level),
            "bright": (m.mean > cfg.bright_level, m.mean, cfg.bright_level),
            # a dark picture is flat too: "dark" says it, "covered" is for what dark does not
            "covered": (
                m.flat >= cfg.covered_fraction and m.mean >= cfg.dark_level,
                m.flat,
                cfg.covered_fraction,
            ),
            "frozen": (frozen, 1.0 if frozen else 0.0, 1.0),
        }
        unclear = any(conditions[k][0] for k in ("dark", "bright", "covered"))
        blurred = False
        if not unclear and self._baseline is not None and self._learnt >= BASELINE_WARMUP:
            blurred = m.focus < cfg.blur_ratio * self._baseline
        limit = cfg.blur_ratio * (self._baseline or 0.0)
        conditions["blurred"] = (blurred, m.focus, limit)
        blur = self._problems.get("blurred")
        if not unclear and not blurred and not (blur is not None and blur.active):
            self._learn(m.focus, dt)
        with self._lock:
            self.measures = m
            self.checks += 1
        self._step(conditions, t)

    def _learn(self, focus: float, dt: float) -> None:
        if self._baseline is None:
            self._baseline = focus
        else:
            alpha = min(1.0, dt / self.cfg.baseline_s) if dt else 0.0
            self._baseline += (focus - self._baseline) * alpha
        self._learnt += 1

    # -- the runner's loop --------------------------------------------------------------------
    def tick(self, camera_state: str) -> None:
        """Check that frames still come (``no_frames``), on the monotonic clock."""
        if "no_frames" not in self._problems:
            return
        now = self.clock()
        age = now - self._last_frame_mono
        waiting = camera_state in WATCHED_STATES and age >= self.cfg.raise_s
        self._step({"no_frames": (waiting, round(age, 1), self.cfg.raise_s)}, now)

    def stop(self) -> None:
        """End the raised problems' events (reason "stopped"), as alert events end on stop."""
        with self._lock:
            changes = []
            for problem in self._problems.values():
                if problem.active:
                    problem.active = False
                    problem.cond_since = problem.gone_since = None
                    changes.append((problem, "end"))
        for problem, kind in changes:
            self._report(problem, kind, "stopped")

    # -- changes -------------------------------------------------------------------------------
    def _step(self, conditions: dict[str, tuple[bool, float, float]], t: float) -> None:
        changes = []
        with self._lock:
            for name, (cond, value, limit) in conditions.items():
                problem = self._problems.get(name)
                if problem is None:
                    continue
                kind = problem.update(cond, t, self.cfg.raise_s, self.cfg.clear_s)
                if cond or kind:
                    problem.value, problem.limit = value, limit
                if kind:
                    changes.append((problem, kind))
        for problem, kind in changes:
            self._report(problem, kind, None)

    def _report(self, problem: _Hysteresis, kind: str, reason: str | None) -> None:
        now = time.time()
        if kind == "start":
            problem.event_id = new_event_id(now)
            problem.started_wall = now
            problem.seq = 0
        else:
            problem.seq += 1
        event = self._event(problem, kind, now, reason)
        state = self.state(now)
        if kind == "start":
            log.warning(
                "camera %s: health problem %s (%s %.4g, limit %.4g)",
                self.camera,
                problem.name,
                _MEASURE.get(problem.name, "value"),
                problem.value if problem.value is not None else math.nan,
                problem.limit if problem.limit is not None else math.nan,
            )
        else:
            log.info(
                "camera %s: health problem %s cleared%s",
                self.camera,
                problem.name,
                f" ({reason})" if reason else "",
            )
        if self.sink is not None:
            self.sink.publish_health(self.camera, state, event)

    def _event(
        self, problem: _Hysteresis, kind: str, now: float, reason: str | None
    ) -> dict[str, Any]:
        ended = kind == "end"
        return {
            "event_id": problem.event_id,
            "type": kind,
            "seq": problem.seq,
            "device": self.device_id,
            "camera": self.camera,
            "rule": f"health.{problem.name}",
            "kind": "health",
            "problem": problem.name,
            "label": None,
            "score": None,
            "value": _round(problem.value),
            "limit": _round(problem.limit),
            "ts": utc_iso(now),
            "start": utc_iso(problem.started_wall),
            "end": utc_iso(now) if ended else None,
            "duration_s": round(now - problem.started_wall, 3) if ended else None,
            "reason": reason,
            "snapshot": None,
        }

    def start(self) -> None:
        """The camera starts: frames are expected from now on; the retained state at start
        (``ok`` until a problem is raised)."""
        self._last_frame_mono = self.clock()
        if self.sink is not None:
            self.sink.publish_health(self.camera, self.state(), None)

    # -- reading -------------------------------------------------------------------------------
    @property
    def problems(self) -> list[str]:
        return [name for name, p in self._problems.items() if p.active]

    def state(self, now: float | None = None) -> dict[str, Any]:
        """The retained health message (stable keys: add, never rename)."""
        now = time.time() if now is None else now
        with self._lock:
            active = [p for p in self._problems.values() if p.active]
            m = self.measures
            baseline = self._baseline
        return {
            "state": "problem" if active else "ok",
            "problems": [p.name for p in active],
            "camera": self.camera,
            "ts": utc_iso(now),
            "details": {
                p.name: {
                    "since": utc_iso(p.started_wall),
                    "value": _round(p.value),
                    "limit": _round(p.limit),
                }
                for p in active
            },
            "measures": None if m is None else {**m.as_dict(), "focus_baseline": _round(baseline)},
        }

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            m = self.measures
            problems = [name for name, p in self._problems.items() if p.active]
        return {
            "state": "problem" if problems else "ok",
            "problems": problems,
            "checks": self.checks,
            "measures": None if m is None else m.as_dict(),
        }


_MEASURE = {
    "dark": "mean level",
    "bright": "mean level",
    "covered": "flat fraction",
    "blurred": "focus",
    "frozen": "identical",
    "no_frames": "seconds without a frame",
}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
