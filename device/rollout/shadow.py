"""Shadow runs: the new model classifies live frames beside the current one, off the live path.

Each camera's inference thread hands its result to ``ShadowRun.offer`` right after the live
classification (device.pipeline's shadow hook). ``offer`` never waits: when the shadow thread
is still busy with an earlier frame the frame is skipped (counted), otherwise the frame's pixels
are copied into a one-slot mailbox. The "rollout-shadow" thread classifies the copy with the
camera's candidate classifier (the new model with the same interpreter options and the same
region of interest), and records whether its top-1 label equals the live one and how long its
inference took. So the live loop never stalls on the new model; on a busy device the shadow sees
fewer frames, and both models share the CPU while it runs (the latencies show it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from device.classifier import Classifier
from device.metrics import percentiles
from device.sinks import Result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowPlan:
    """How long a shadow runs and what it must show (from the command and rollout config)."""

    frames: int | None  # compare this many frames ...
    seconds: float | None  # ... or run this long
    min_agreement: float
    max_latency_ms: float | None  # None: at most max_latency_ratio x the current model's
    max_latency_ratio: float
    min_frames: int
    max_seconds: float  # a frame-count shadow fails when it has not finished by then

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "seconds": self.seconds,
            "min_agreement": self.min_agreement,
            "max_latency_ms": self.max_latency_ms,
        }


@dataclass
class _Offered:
    camera: str
    pixels: np.ndarray
    live_label: str
    live_ms: float


class ShadowRun:
    def __init__(self, candidates: Mapping[str, Classifier], plan: ShadowPlan):
        self.candidates = dict(candidates)
        self.plan = plan
        self._cond = threading.Condition()
        self._pending: _Offered | None = None
        self.compared = 0
        self.agreed = 0
        self.skipped = 0  # frames offered while the shadow was busy
        self._candidate_ms: list[float] = []
        self._live_ms: list[float] = []
        self.error: BaseException | None = None
        self.stop_event = threading.Event()
        self.done = threading.Event()
        self.started = 0.0
        self._thread = threading.Thread(target=self._run, name="rollout-shadow", daemon=True)

    # -- the inference threads -------------------------------------------------------------------
    def offer(self, result: Result) -> None:
        """Take a copy of this live result's frame if the shadow is free; never blocks long."""
        if self.done.is_set() or not result.top or result.camera not in self.candidates:
            return
        if self._pending is not None:
            self.skipped += 1
            return
        item = _Offered(
            result.camera, result.frame.pixels.copy(), result.top[0].label, result.inference_ms
        )
        with self._cond:
            if self._pending is None:
                self._pending = item
                self._cond.notify()
            else:
                self.skipped += 1

    # -- the shadow thread -------------------------------------------------------------------------
    def start(self) -> ShadowRun:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(10.0)

    def elapsed(self) -> float:
        return time.monotonic() - self.started if self.started else 0.0

    def _finished(self) -> bool:
        plan = self.plan
        if plan.seconds is not None:
            return self.elapsed() >= plan.seconds
        return self.compared >= (plan.frames or 0) or self.elapsed() >= plan.max_seconds

    def _run(self) -> None:
        try:
            while not self.stop_event.is_set() and not self._finished():
                with self._cond:
                    if self._pending is None:
                        self._cond.wait(0.2)
                    item, self._pending = self._pending, None
                if item is None:
                    continue
                top, ms = self.candidates[item.camera].classify(item.pixels, 1)
                agreed = bool(top) and top[0].label == item.live_label
                with self._cond:
                    self.compared += 1
                    self.agreed += agreed
                    self._candidate_ms.append(ms)
                    self._live_ms.append(item.live_ms)
        except Exception as exc:  # the thread boundary: the rollout reports it
            log.exception("rollout: the new model failed in shadow")
            self.error = exc
        finally:
            self.done.set()

    # -- results ---------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Frames compared, agreement and latencies so far (any thread)."""
        with self._cond:
            compared, agreed = self.compared, self.agreed
            candidate, live = list(self._candidate_ms), list(self._live_ms)
        c50, c95 = percentiles(candidate)
        l50, l95 = percentiles(live)
        return {
            "frames": compared,
            "target_frames": self.plan.frames if self.plan.seconds is None else None,
            "seconds": round(self.elapsed(), 1),
            "agreement": round(agreed / compared, 4) if compared else None,
            "latency_ms": {"p50": round(c50, 2), "p95": round(c95, 2)},
            "current_latency_ms": {"p50": round(l50, 2), "p95": round(l95, 2)},
            "skipped_busy": self.skipped,
        }

    def verdict(self) -> str | None:
        """None when the new model may be promoted, else why not (after the run ended)."""
        if self.error is not None:
            return (
                f"the new model failed on a live frame: {type(self.error).__name__}: {self.error}"
            )
        plan = self.plan
        report = self.report()
        frames = report["frames"]
        if plan.seconds is None and frames < (plan.frames or 0):
            return (
                f"the shadow compared only {frames} of {plan.frames} frames in "
                f"{plan.max_seconds:g} s (is the camera delivering frames?)"
            )
        if frames < plan.min_frames:
            return (
                f"the shadow compared only {frames} frames (at least {plan.min_frames} needed; "
                "is the camera delivering frames?)"
            )
        agreement = report["agreement"]
        if agreement < plan.min_agreement:
            return (
                f"agreement {agreement:.3f} with the current model is below min_agreement "
                f"{plan.min_agreement:g} ({self.agreed} of {frames} frames have the same top-1)"
            )
        p50 = report["latency_ms"]["p50"]
        if plan.max_latency_ms is not None:
            if p50 > plan.max_latency_ms:
                return (
                    f"median latency {p50:.1f} ms is above max_latency_ms {plan.max_latency_ms:g}"
                )
        else:
            limit = plan.max_latency_ratio * report["current_latency_ms"]["p50"]
            if p50 > limit:
                return (
                    f"median latency {p50:.1f} ms is above {plan.max_latency_ratio:g} x the "
                    f"current model's {report['current_latency_ms']['p50']:.1f} ms "
                    "(rollout.shadow.max_latency_ratio)"
                )
        return None
