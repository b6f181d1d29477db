"""The capture thread: owns one source, preprocesses, hands the newest frame to inference.

Live sources (and files paced with ``realtime``) write into a one-slot "latest frame" buffer:
inference always takes the newest frame, a frame not taken in time is replaced and counted as
dropped, so latency never grows when inference is slower than the camera. Files read as fast
as possible hand over every frame (the capture thread waits for the slot to empty).

Preprocessing (crop, resize, normalise) runs here too, into a small ring of preallocated input
tensors, so it overlaps with inference of the previous frame. An optional ``mask`` (privacy
masks with ``mask_inference``, device.privacy) blacks out parts of each frame first, so that
neither the classifier nor anything after it sees them.

With motion gating or camera health on, the capture thread also makes a small grey copy of each
frame (device.motion.GreyCopy, of the picture as the camera saw it) and feeds it to the camera's
health monitor (device.health) and motion gate (device.motion): a frame the gate skips is
neither preprocessed nor handed to inference; it costs its decoding and the grey copy only.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from device.errors import SourceError
from device.sources.base import Frame, FrameSource
from device.supervision import OUTAGE_REMINDER_S

if TYPE_CHECKING:
    from device.health import HealthMonitor
    from device.motion import MotionGate

log = logging.getLogger(__name__)


@dataclass
class Captured:
    """A frame and its preprocessed model input (a buffer from the capture ring)."""

    frame: Frame
    tensor: np.ndarray
    ready_mono: float  # when preprocessing finished
    reason: str = "always"  # why it is classified: always, or the motion gate's reason


class FrameSlot:
    """A one-slot mailbox. ``drop=True``: put replaces; ``drop=False``: put waits for room."""

    def __init__(self, drop: bool):
        self.drop = drop
        self._cond = threading.Condition()
        self._item: Captured | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Captured) -> Captured | None:
        """Store ``item``; return the item it displaced (dropped), if any."""
        with self._cond:
            if not self.drop:
                while self._item is not None and not self._closed:
                    self._cond.wait()
            displaced, self._item = self._item, item
            if displaced is not None:
                self.dropped += 1
            self._cond.notify_all()
            return displaced

    def get(self, timeout: float) -> Captured | None:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def wait_for_room(self, stop: threading.Event) -> None:
        """Block until the slot is empty (no-drop mode), closed, or ``stop`` is set."""
        with self._cond:
            while self._item is not None and not self._closed and not stop.is_set():
                self._cond.wait(0.2)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def _lower_priority(nice: int) -> None:
    """Run the calling thread at a lower priority (Linux: per-thread nice value).

    Inference threads keep the cores; decoding and preprocessing fill the gaps, so a busy
    capture thread does not stall the interpreter's thread pool at its barriers.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:
        log.debug("cannot lower the capture thread's priority: %s", exc)


class CaptureThread(threading.Thread):
    """Reads ``source`` in its own thread; see the module docstring.

    A source that is not open yet, fails to deliver (a live camera), raises SourceError (a
    folder that disappeared) or cannot start again at its end is reopened with backoff until
    it works or the thread is stopped: logged once when lost, once when back, and reminded
    every OUTAGE_REMINDER_S in between. Any other exception ends the thread and is kept in
    ``crash`` for the supervisor (device.pipeline) to log and act on.
    """

    RING = 3  # one being written, one in the slot, one being inferred

    def __init__(
        self,
        name: str,
        source: FrameSource,
        prepare: Callable[[np.ndarray, np.ndarray], np.ndarray],
        new_buffer: Callable[[], np.ndarray],
        *,
        realtime: bool | None = None,
        loop: bool = False,
        reconnect_max_s: float = 30.0,
        stop: threading.Event | None = None,
        nice: int = 5,
        first_index: int = 0,
        on_state: Callable[[str], None] | None = None,
        mask: Callable[[np.ndarray], np.ndarray] | None = None,
        gate: MotionGate | None = None,
        health: HealthMonitor | None = None,
    ):
        super().__init__(name=f"capture-{name}", daemon=True)
        self.source = source
        self.prepare = prepare
        self.mask = mask
        self.realtime = (source.live or source.stand_in) if realtime is None else realtime
        self.loop = loop or source.stand_in
        self.reconnect_max_s = reconnect_max_s
        self.nice = nice
        self.stop_event = stop or threading.Event()
        self.slot = FrameSlot(drop=self.realtime)
        self._free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        for _ in range(self.RING):
            self._free.put(new_buffer())
        self.first_index = first_index
        self.frames = 0
        self.reconnects = 0
        self.crash: BaseException | None = None
        self.finished = threading.Event()
        self._on_state = on_state or (lambda state: None)
        self._outage: _Outage | None = None
        self.gate = gate
        self.health = health
        self._grey = None
        self._video_dt: float | None = None
        if gate is not None or health is not None:
            from device.motion import GreyCopy

            self._grey = GreyCopy()

    @property
    def dropped(self) -> int:
        return self.slot.dropped

    def release(self, item: Captured) -> None:
        """Give an item's buffer back to the ring once inference has used it."""
        self._free.put(item.tensor)

    def run(self) -> None:
        _lower_priority(self.nice)
        try:
            self._run()
        except Exception as exc:  # the thread boundary: the supervisor acts on it
            self.crash = exc
        finally:
            self.source.close()
            self.slot.close()
            self.finished.set()

    def _run(self) -> None:
        if not self.source.is_open and not self._reconnect(None):
            return
        if self._outage is None:
            self._on_state("running")
        fps = self.source.fps
        interval = 1.0 / fps if (self.realtime and not self.source.live and fps) else 0.0
        # the gate's and health's clock: capture time, or the position in a file read unpaced
        self._video_dt = 1.0 / fps if (fps and not self.realtime) else None
        next_due = time.monotonic()
        since_rewind = 0
        while not self.stop_event.is_set():
            if not self.slot.drop:
                # Read the next file frame only when inference is about to want it: it is then
                # preprocessed while the current one is inferred, and waits at most one frame.
                self.slot.wait_for_room(self.stop_event)
                if self.stop_event.is_set() or self.slot.closed:
                    return
            try:
                pixels = self._next_pixels(since_rewind)
            except SourceError as exc:
                if not self._reconnect(exc):
                    return
                since_rewind = 0
                continue
            if pixels is None:
                if self.source.live:
                    if not self._reconnect(None):
                        return
                    continue
                if self.loop:
                    since_rewind = 0
                    continue
                log.info(
                    "%s: end of %s after %d frames", self.name, self.source.describe(), self.frames
                )
                return
            since_rewind += 1
            if self._outage is not None:
                self._recovered()
            now_mono, now_wall = time.monotonic(), time.time()
            index = self.first_index + self.frames
            self.frames += 1
            reason = self._inspect(pixels, index, now_mono)
            if reason is not None:
                pixels = self.source.to_rgb(pixels)
                full = self.source.full_res()
                if self.mask is not None:
                    pixels = self.mask(pixels)
                    if full is not None:  # roi classifiers and snapshots read the full picture
                        full = self.mask(full)
                frame = Frame(pixels, now_mono, now_wall, index, full)
                buffer = self._take_buffer()
                if buffer is None:
                    return
                tensor = self.prepare(pixels, buffer)
                displaced = self.slot.put(Captured(frame, tensor, time.monotonic(), reason))
                if displaced is not None:
                    self._free.put(displaced.tensor)
            if interval:
                next_due += interval
                delay = next_due - time.monotonic()
                if delay > 0:
                    self.stop_event.wait(delay)
                else:
                    next_due = time.monotonic()

    def _inspect(self, pixels: np.ndarray, index: int, now_mono: float) -> str | None:
        """Camera health and the motion gate on the grey copy of ``pixels`` (still in the
        source's channel order): why the frame is classified, or None when the gate skips it."""
        if self._grey is None:
            return "always"
        grey = self._grey.update(pixels, self.source.native_order)
        t = index * self._video_dt if self._video_dt else now_mono
        if self.health is not None:
            self.health.observe(grey, t)
        return self.gate.decide(grey, t) if self.gate is not None else "always"

    def _next_pixels(self, since_rewind: int) -> np.ndarray | None:
        """The next frame; at the end of a looping file, rewind it (None: it just rewound).

        SourceError when the source is lost, or when a whole pass delivered no frame (so a
        folder of unreadable images is retried with backoff instead of spun on).
        """
        pixels = self.source.read_native()  # converted to RGB only when classified
        if pixels is not None or self.source.live or not self.loop:
            return pixels
        if since_rewind == 0:
            raise SourceError(f"{self.source.describe()} delivered no frame in a whole pass")
        if not self.source.rewind():
            raise SourceError(f"{self.source.describe()} cannot start again from the beginning")
        return None

    def _take_buffer(self) -> np.ndarray | None:
        while not self.stop_event.is_set():
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def stop(self) -> None:
        self.stop_event.set()
        self.slot.close()

    def _reconnect(self, cause: SourceError | None) -> bool:
        """(Re)open the source with exponential backoff; False when stopped first.

        ``cause`` None: the source never opened (start) or a live source stopped delivering.
        The outage lasts until a frame comes (``_recovered``), not just until the source opens
        again: a folder of unreadable images that opens but delivers nothing keeps backing off,
        and the log says once that it is lost and once that it is back.
        """
        what = self.source.describe()
        outage = self._outage
        if outage is None:
            first_open = not self.source.is_open and cause is None and self.frames == 0
            outage = self._outage = _Outage(first_open, self.reconnect_max_s)
            self._on_state("reconnecting")
            if not first_open:
                why = cause.message if cause is not None else f"{what} stopped delivering frames"
                log.warning("%s: %s; reconnecting", self.name, why)
        elif cause is not None:
            log.debug("%s: still lost: %s", self.name, cause.message)
        while not self.stop_event.is_set():
            self.source.close()
            delay = outage.next_delay()
            if delay and self.stop_event.wait(delay):
                return False
            outage.attempts += 1
            try:
                self.source.open()
            except SourceError as exc:
                if outage.attempts == 1 and outage.first_open:
                    log.warning("%s: %s; retrying with backoff", self.name, exc.message)
                elif outage.remind():
                    log.warning(
                        "%s: %s still lost after %d attempts: %s",
                        self.name,
                        what,
                        outage.attempts,
                        exc.message,
                    )
                else:
                    log.debug("%s: reopen failed: %s", self.name, exc.message)
                continue
            return True
        return False

    def _recovered(self) -> None:
        """A frame came after an outage: it is over."""
        outage, self._outage = self._outage, None
        assert outage is not None
        what = self.source.describe()
        if not outage.first_open:
            self.reconnects += 1
            log.info("%s: %s reconnected", self.name, what)
        elif outage.attempts > 1:
            log.info("%s: %s opened after %d attempts", self.name, what, outage.attempts)
        self._on_state("running")


class _Outage:
    """Backoff and log pacing of one period in which a source is lost (or not yet open)."""

    def __init__(self, first_open: bool, max_s: float):
        self.first_open = first_open
        self.attempts = 0
        self._delay = 0.0 if first_open else 0.5
        self._max_s = max_s
        self._reminded = time.monotonic()

    def next_delay(self) -> float:
        delay = self._delay
        self._delay = min(max(self._delay * 2, 0.5), self._max_s)
        return delay

    def remind(self) -> bool:
        """True at most once every OUTAGE_REMINDER_S."""
        now = time.monotonic()
        if now - self._reminded < OUTAGE_REMINDER_S:
            return False
        self._reminded = now
        return True
