"""One camera: its source, capture thread, inference thread, and their supervisor.

The supervisor thread (``camera-<name>``) starts a capture thread and an inference thread,
waits for them, and acts on how they ended (device.supervision): a normal end (a file ended,
``max_results`` reached, stop requested) ends the camera; an unexpected error in either thread
is logged with its traceback (once per kind of error) and the camera is restarted with backoff
on the same source, with a fresh classifier when the interpreter failed; a camera that keeps
failing is given up (``failed``), and the runner then exits non-zero.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from device.capture import Captured, CaptureThread
from device.classifier import Classifier
from device.config import CameraConfig
from device.errors import EdgecamError
from device.health import HealthMonitor, HealthSink
from device.metrics import CameraStats
from device.motion import MotionGate
from device.preprocess import Preprocessor
from device.sinks import Result, SinkSet
from device.sources import FrameSource, open_source
from device.supervision import (
    Backoff,
    CameraHealth,
    CameraState,
    SupervisionConfig,
    describe_exception,
)

log = logging.getLogger(__name__)


class _Attempt:
    """One start of the capture and inference threads, and how it ended."""

    def __init__(self, capture: CaptureThread):
        self.capture = capture
        self.inference_error: BaseException | None = None
        self.reached_max = False


class CameraPipeline:
    """Capture thread + inference thread for one camera, supervised (module docstring)."""

    def __init__(
        self,
        camera: CameraConfig,
        classifier: Classifier,
        sinks: SinkSet,
        stop: threading.Event,
        *,
        top_k: int = 3,
        min_score: float = 0.0,
        max_results: int | None = None,
        supervision: SupervisionConfig | None = None,
        rebuild: Callable[[], Classifier] | None = None,
        on_change: Callable[[CameraPipeline], None] | None = None,
        frame_mask: Callable[[np.ndarray], np.ndarray] | None = None,
        event_active: Callable[[str], bool] | None = None,
        health_sink: HealthSink | None = None,
        device_id: str = "",
    ):
        self.camera = camera
        self.frame_mask = frame_mask  # privacy masks before classification (mask_inference)
        self.classifier = classifier
        self.top_k = top_k
        self.min_score = min_score
        self.sinks = sinks
        self.stop_event = stop
        self.max_results = max_results
        self.supervision = supervision or SupervisionConfig()
        self.rebuild = rebuild
        self.on_change = on_change or (lambda pipeline: None)
        self.stats = CameraStats()
        self.health = CameraHealth()
        self.source = self._open_source()
        if not self.source.live and not self.source.is_open:
            # a file or folder that cannot be read is a config error: say so at start
            self.source.open()
        log.info("camera %s: %s", camera.name, self.source.describe())
        # motion gating and camera health (device.motion, device.health): the capture thread
        # feeds them the small grey copy of each frame
        self.gate: MotionGate | None = None
        if camera.motion.enabled:
            active = event_active or (lambda name: False)
            self.gate = MotionGate(camera.motion, lambda: active(camera.name))
        self.image_health: HealthMonitor | None = None
        if camera.health.enabled:
            self.image_health = HealthMonitor(
                camera.name, camera.health, health_sink, device_id=device_id, live=self.source.live
            )
        self._attempt: _Attempt | None = None
        self._totals = {"frames": 0, "dropped": 0, "reconnects": 0}
        self._logged: set[type[BaseException]] = set()
        # model updates (device.rollout): a classifier swapped in between two frames, and a
        # shadow hook that sees every live result
        self.shadow: Callable[[Result], None] | None = None
        self._swap: tuple[Classifier, threading.Event] | None = None
        self._swap_lock = threading.Lock()
        self._prepared_by: dict[int, Classifier] = {}  # id(input tensor) -> who prepared it
        self._reprepare: tuple[Classifier, Preprocessor] | None = None
        self.thread = threading.Thread(
            target=self._supervise, name=f"camera-{camera.name}", daemon=True
        )
        self.done = threading.Event()

    @property
    def failed(self) -> bool:
        return self.health.state == CameraState.FAILED

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.stats = CameraStats()
        if self.image_health is not None:
            self.image_health.start()  # frames expected from now on; retained "ok"
        self.thread.start()

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the camera to end (after ``stop`` was set)."""
        attempt = self._attempt
        if attempt is not None:
            attempt.capture.stop()
        self.thread.join(timeout)
        if self.image_health is not None:
            self.image_health.stop()  # end raised health problems (reason "stopped")

    def close(self) -> None:
        """Release the source of a pipeline that was never started."""
        self.source.close()

    def _open_source(self) -> FrameSource:
        """The camera's source; a camera without a configured size captures at the smallest
        size at or above the model's input (enlarged for the camera's roi)."""
        cam = self.camera
        pre = self.classifier.preprocessor
        roi_w, roi_h = (cam.roi[2], cam.roi[3]) if cam.roi else (1.0, 1.0)
        need = (math.ceil(pre.width / roi_w), math.ceil(pre.height / roi_h))
        return open_source(
            cam.source, width=cam.width, height=cam.height, fps=cam.fps, min_size=need
        )

    def check_health(self) -> None:
        """Camera health's time-based check (frames still coming); the runner's loop calls it."""
        if self.image_health is not None:
            self.image_health.tick(self.health.state)

    # -- supervision -------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        if state != self.health.state:
            self.health.set(state)
            self.on_change(self)

    def _supervise(self) -> None:
        cfg = self.supervision
        backoff = Backoff(cfg.restart_min_s, cfg.restart_max_s)
        name = self.camera.name
        try:
            while not self.stop_event.is_set():
                started = time.monotonic()
                failure = self._run_once()
                if failure is None:
                    stopped = self.stop_event.is_set()
                    self._set_state(CameraState.STOPPED if stopped else CameraState.FINISHED)
                    return
                where, exc = failure
                self._report(where, exc)
                if time.monotonic() - started >= cfg.stable_s:
                    self.health.failed_in_a_row = 0
                    backoff.reset()
                self.health.failed_in_a_row += 1
                if self.health.failed_in_a_row > cfg.max_restarts:
                    log.error(
                        "camera %s: giving up after %d failed restart(s) in a row "
                        "(supervision.max_restarts); the device exits with an error",
                        name,
                        cfg.max_restarts,
                    )
                    self._set_state(CameraState.FAILED)
                    return
                delay = backoff.next()
                log.warning(
                    "camera %s: restarting in %.1f s (%d of at most %d in a row)",
                    name,
                    delay,
                    self.health.failed_in_a_row,
                    cfg.max_restarts,
                )
                self._set_state(CameraState.RESTARTING)
                if self.stop_event.wait(delay):
                    break
                if where == "inference" and not self._rebuild_classifier():
                    continue
                self.health.restarts += 1
            self._set_state(CameraState.STOPPED)
        finally:
            self.done.set()

    def _report(self, where: str, exc: BaseException) -> None:
        message = describe_exception(exc)
        self.health.error(f"{where}: {message}")
        first = type(exc) not in self._logged
        self._logged.add(type(exc))
        log.error(
            "camera %s: the %s thread failed: %s%s",
            self.camera.name,
            where,
            message,
            "" if first else " (traceback logged before)",
            exc_info=exc if first else None,
        )

    def _rebuild_classifier(self) -> bool:
        """A fresh interpreter after the old one failed; False (counted as a failed restart)
        when it cannot be built."""
        if self.rebuild is None:
            return True
        try:
            self.classifier = self.rebuild()
        except EdgecamError as exc:
            self.health.error(f"model: {exc.message}")
            log.error("camera %s: cannot reload the model: %s", self.camera.name, exc.message)
            return False
        return True

    def _run_once(self) -> tuple[str, BaseException] | None:
        """Start capture + inference and wait for both; (where, error) when one failed."""
        capture = CaptureThread(
            self.camera.name,
            self.source,
            self._prepare,
            self._new_buffer,
            realtime=self.camera.realtime,
            loop=self.camera.loop,
            reconnect_max_s=self.camera.reconnect_max_s,
            first_index=self._totals["frames"],
            on_state=self._set_state,
            mask=self.frame_mask,
            gate=self.gate,
            health=self.image_health,
        )
        attempt = _Attempt(capture)
        self._attempt = attempt
        inference = threading.Thread(
            target=self._infer,
            args=(attempt,),
            name=f"infer-{self.camera.name}",
            daemon=True,
        )
        capture.start()
        inference.start()
        inference.join()
        capture.stop()
        capture.join(10.0)
        if capture.is_alive():  # stuck in a blocking read: leave it, use a fresh source
            log.warning(
                "camera %s: capture thread did not stop; opening a new source", self.camera.name
            )
            self.source = self._open_source()
        self._attempt = None
        for key in self._totals:
            self._totals[key] += getattr(capture, key)
        if attempt.inference_error is not None:
            return "inference", attempt.inference_error
        if capture.crash is not None and not attempt.reached_max:
            return "capture", capture.crash
        return None

    def _infer(self, attempt: _Attempt) -> None:
        try:
            self._infer_loop(attempt)
        except Exception as exc:  # the thread boundary: the supervisor acts on it
            attempt.inference_error = exc
        finally:
            attempt.capture.stop()

    def _infer_loop(self, attempt: _Attempt) -> None:
        capture = attempt.capture
        classifier = self.classifier
        while not self.stop_event.is_set():
            if self._swap is not None:
                classifier = self._take_swap()
            item = capture.slot.get(timeout=0.5)
            if item is None:
                if capture.finished.is_set():
                    return
                continue
            try:
                tensor = self._input_for(classifier, item)
                top, ms = classifier.classify_tensor(tensor, self.top_k, self.min_score)
            finally:
                capture.release(item)
            now = time.monotonic()
            total_ms = (now - item.frame.ts_mono) * 1000.0
            self.stats.record(ms, total_ms, now)
            result = Result(self.camera.name, item.frame, top, ms, total_ms, classifier.bundle.ref)
            self.sinks.handle(result)
            if (shadow := self.shadow) is not None:
                shadow(result)
            if self.max_results and self.stats.results >= self.max_results:
                log.info("camera %s: %d results, stopping", self.camera.name, self.stats.results)
                attempt.reached_max = True
                return

    # -- model swaps (device.rollout) ----------------------------------------------------------
    def swap_classifier(self, classifier: Classifier) -> threading.Event:
        """Classify with ``classifier`` from the next frame on. The inference thread takes it
        between two frames (or at its next start); the event is set once it has. A frame
        prepared for the old model's input is prepared again for the new one."""
        applied = threading.Event()
        with self._swap_lock:
            if self.done.is_set() or not self.thread.is_alive():
                self.classifier = classifier
                applied.set()
            else:
                self._swap = (classifier, applied)
        return applied

    def _take_swap(self) -> Classifier:
        with self._swap_lock:
            swap, self._swap = self._swap, None
        if swap is None:
            return self.classifier
        self.classifier, applied = swap
        applied.set()
        log.info("camera %s: now classifying with %s", self.camera.name, swap[0].bundle.ref)
        return self.classifier

    def _new_buffer(self) -> np.ndarray:
        return self.classifier.preprocessor.new_buffer()

    def _prepare(self, pixels: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The capture thread's preprocessing, for the classifier in use."""
        classifier = self.classifier
        pre = classifier.preprocessor
        if out.shape != (1, pre.height, pre.width, 3) or out.dtype != pre.tensor.dtype:
            self._prepared_by.pop(id(out), None)
            out = pre.new_buffer()  # only after a swap to a model with another input
        tensor = classifier.prepare(pixels, out)
        self._prepared_by[id(tensor)] = classifier
        return tensor

    def _input_for(self, classifier: Classifier, item: Captured) -> np.ndarray:
        """``item``'s tensor, or — when another model's preprocessing made it (a frame in flight
        during a swap) — the frame prepared again for ``classifier`` on this thread."""
        prepared_by = self._prepared_by.pop(id(item.tensor), classifier)
        if prepared_by is classifier or same_input(prepared_by, classifier):
            return item.tensor
        if self._reprepare is None or self._reprepare[0] is not classifier:
            pre = classifier.preprocessor
            self._reprepare = (classifier, Preprocessor(pre.spec, pre.tensor, roi=pre.roi))
        return self._reprepare[1].process(item.frame.pixels)

    # -- metrics -----------------------------------------------------------------------------
    @property
    def frames_read(self) -> int:
        """Frames the capture threads read so far (cheap: no percentiles, unlike metrics())."""
        attempt = self._attempt
        return self._totals["frames"] + (attempt.capture.frames if attempt is not None else 0)

    def metrics(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        attempt = self._attempt
        current = attempt.capture if attempt is not None else None
        counts = {
            key: total + (getattr(current, key) if current is not None else 0)
            for key, total in self._totals.items()
        }
        snap.update(counts, source=self.source.describe(), **self.health.snapshot())
        if self.gate is not None:
            snap["motion"] = self.gate.metrics()
        if self.image_health is not None:
            snap["health"] = self.image_health.metrics()
        return snap


def same_input(a: Classifier, b: Classifier) -> bool:
    """True when both classifiers turn a frame into the same input tensor."""
    pa, pb = a.preprocessor, b.preprocessor
    ta, tb = pa.tensor, pb.tensor
    return (pa.spec, pa.roi, ta.shape, ta.dtype, ta.scale, ta.zero_point) == (
        pb.spec,
        pb.roi,
        tb.shape,
        tb.dtype,
        tb.scale,
        tb.zero_point,
    )
