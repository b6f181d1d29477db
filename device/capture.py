"""The capture thread: owns one source, preprocesses, hands the newest frame to inference.

Live sources (and files paced with ``realtime``) write into a one-slot "latest frame" buffer:
inference always takes the newest frame, a frame not taken in time is replaced and counted as
dropped, so latency never grows when inference is slower than the camera. Files read as fast
as possible hand over every frame (the capture thread waits for the slot to empty).

Preprocessing (crop, resize, normalise) runs here too, into a small ring of preallocated input
tensors, so it overlaps with inference of the previous frame.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from device.errors import SourceError
from device.sources.base import Frame, FrameSource

log = logging.getLogger(__name__)


@dataclass
class Captured:
    """A frame and its preprocessed model input (a buffer from the capture ring)."""

    frame: Frame
    tensor: np.ndarray
    ready_mono: float  # when preprocessing finished


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
    """Reads ``source`` in its own thread; see the module docstring."""

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
    ):
        super().__init__(name=f"capture-{name}", daemon=True)
        self.source = source
        self.prepare = prepare
        self.realtime = (source.live or source.stand_in) if realtime is None else realtime
        self.loop = loop or source.stand_in
        self.reconnect_max_s = reconnect_max_s
        self.nice = nice
        self.stop_event = stop or threading.Event()
        self.slot = FrameSlot(drop=self.realtime)
        self._free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        for _ in range(self.RING):
            self._free.put(new_buffer())
        self.frames = 0
        self.reconnects = 0
        self.error: SourceError | None = None
        self.finished = threading.Event()

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
        except SourceError as exc:
            self.error = exc
            log.error("%s: %s", self.name, exc)
        finally:
            self.source.close()
            self.slot.close()
            self.finished.set()

    def _run(self) -> None:
        fps = self.source.fps
        interval = 1.0 / fps if (self.realtime and not self.source.live and fps) else 0.0
        next_due = time.monotonic()
        while not self.stop_event.is_set():
            if not self.slot.drop:
                # Read the next file frame only when inference is about to want it: it is then
                # preprocessed while the current one is inferred, and waits at most one frame.
                self.slot.wait_for_room(self.stop_event)
                if self.stop_event.is_set() or self.slot.closed:
                    return
            pixels = self.source.read()
            if pixels is None:
                if self.source.live:
                    self._reconnect()
                    continue
                if self.loop and self.source.rewind():
                    continue
                log.info(
                    "%s: end of %s after %d frames", self.name, self.source.describe(), self.frames
                )
                return
            now_mono, now_wall = time.monotonic(), time.time()
            frame = Frame(pixels, now_mono, now_wall, self.frames)
            self.frames += 1
            buffer = self._take_buffer()
            if buffer is None:
                return
            tensor = self.prepare(pixels, buffer)
            displaced = self.slot.put(Captured(frame, tensor, time.monotonic()))
            if displaced is not None:
                self._free.put(displaced.tensor)
            if interval:
                next_due += interval
                delay = next_due - time.monotonic()
                if delay > 0:
                    self.stop_event.wait(delay)
                else:
                    next_due = time.monotonic()

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

    def _reconnect(self) -> None:
        """Reopen a failed live source with exponential backoff until it works or we stop."""
        log.warning(
            "%s: %s stopped delivering frames; reconnecting", self.name, self.source.describe()
        )
        delay = 0.5
        while not self.stop_event.is_set():
            self.source.close()
            if self.stop_event.wait(delay):
                return
            try:
                self.source.open()
            except SourceError as exc:
                log.debug("%s: reconnect failed: %s", self.name, exc)
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            self.reconnects += 1
            log.info("%s: %s reconnected", self.name, self.source.describe())
            return
