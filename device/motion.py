"""Motion gating: classify a camera's frames only when something in the scene changes.

A surveillance camera looks at an empty scene most of the day; classifying every frame burns the
CPU for nothing. The capture thread (device.capture) makes a small grey copy of each frame
(``GreyCopy``, ``GREY_WIDTH`` pixels wide) and hands it to ``MotionGate.decide``, which says
whether the frame is classified and why:

- ``motion``: more than ``min_area`` of the (unmasked) frame differs by more than ``threshold``
  grey levels from a running background (``cv2.accumulateWeighted``, time constant
  ``background_s``). A change over ``LIGHTING_AREA`` of the frame (lights switched on, an
  exposure jump, the IR filter) resets the background and counts as motion for that frame;
- ``hold``: within ``hold_s`` of the last motion (the rules see how a scene settles);
- ``event``: an alert event is active on the camera (every frame is classified until it ends);
- ``heartbeat``: ``heartbeat_s`` passed since the last classified frame, so results (and the
  rules' view of a still scene) keep flowing;
- None: the frame is skipped: not preprocessed, not handed to inference, counted.

The clock is the frame's capture time, or, for a file read as fast as inference allows, its
position in the video (``index / fps``), so a heartbeat is every ``heartbeat_s`` of video.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, Any

import cv2
import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from device.geometry import check_polygon, check_roi

GREY_WIDTH = 160  # the small grey copy motion and camera health work on
LIGHTING_AREA = 0.6  # a change over this fraction of the frame is lighting, not an object

REASONS = ("motion", "hold", "event", "heartbeat")


def _check_region(value: list[Any]) -> list[Any]:
    """A mask region: a rectangle ``[x, y, w, h]`` or a polygon ``[[x, y], ...]`` (fractions)."""
    if value and all(isinstance(v, int | float) for v in value):
        check_roi(value)
    else:
        check_polygon(value)
    return value


MaskRegion = Annotated[list[float] | list[list[float]], AfterValidator(_check_region)]


def region_points(region: list[Any]) -> list[tuple[float, float]]:
    """The corner points of a mask region (a rectangle becomes 4 points), as fractions."""
    if region and not isinstance(region[0], list):
        x, y, w, h = region
        return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    return [(float(p[0]), float(p[1])) for p in region]


class MotionConfig(BaseModel):
    """The ``cameras[].motion`` section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    enabled: bool = Field(
        False,
        description="Classify a frame only when something moved (plus heartbeats, and every "
        "frame during an alert event); false: classify every frame.",
    )
    threshold: int = Field(
        20,
        ge=1,
        le=255,
        description="Grey-level difference from the background that counts a pixel as changed.",
    )
    min_area: float = Field(
        0.002,
        gt=0,
        le=1,
        description="Fraction of the (unmasked) frame that must change to count as motion.",
    )
    background_s: float = Field(
        0.5,
        gt=0,
        description="Time constant of the running background (s): how fast a change that "
        "stays (a parked car, a scene that stopped moving) stops being motion.",
    )
    hold_s: float = Field(
        1.0, ge=0, description="Keep classifying every frame this long after the last motion."
    )
    heartbeat_s: float = Field(
        5.0,
        gt=0,
        description="Without motion, still classify one frame this often (results and alert "
        "rules keep going).",
    )
    mask: list[MaskRegion] = Field(
        default_factory=list,
        description="Regions where changes are ignored (a road, a tree): rectangles "
        "[x, y, w, h] or polygons [[x, y], ...], as fractions of the frame.",
    )


class GreyCopy:
    """A small grey copy of each frame, into one reused buffer (capture thread).

    Two cheap steps: a bilinear resize to twice the target size, the grey conversion there, then
    an area resize (an average of 2x2 pixels, which also damps sensor noise).
    """

    def __init__(self, width: int = GREY_WIDTH):
        self.width = width
        self._shape: tuple[int, int] | None = None
        self._half: np.ndarray | None = None
        self._half_grey: np.ndarray | None = None
        self.grey: np.ndarray | None = None

    def _buffers(self, height: int, width: int) -> None:
        w = min(self.width, width)
        h = max(1, round(height * w / width))
        self._half = np.empty((h * 2, w * 2, 3), np.uint8)
        self._half_grey = np.empty((h * 2, w * 2), np.uint8)
        self.grey = np.empty((h, w), np.uint8)
        self._shape = (height, width)

    def update(self, pixels: np.ndarray, order: str = "RGB") -> np.ndarray:
        """The grey copy of ``pixels`` (HxWx3, channels in ``order``: RGB or BGR); the same
        array is overwritten next time."""
        if pixels.shape[:2] != self._shape:
            self._buffers(*pixels.shape[:2])
        half, half_grey, grey = self._half, self._half_grey, self.grey
        assert half is not None and half_grey is not None and grey is not None
        cv2.resize(pixels, half.shape[1::-1], dst=half, interpolation=cv2.INTER_LINEAR)
        code = cv2.COLOR_BGR2GRAY if order == "BGR" else cv2.COLOR_RGB2GRAY
        cv2.cvtColor(half, code, dst=half_grey)
        cv2.resize(half_grey, grey.shape[::-1], dst=grey, interpolation=cv2.INTER_AREA)
        return grey


class MotionDetector:
    """Frame differencing against a running background, on the small grey copy."""

    def __init__(self, cfg: MotionConfig):
        self.cfg = cfg
        self._background: np.ndarray | None = None
        self._diff: np.ndarray | None = None
        self._background8: np.ndarray | None = None
        self._mask: np.ndarray | None = None  # 255 where changes count
        self._counted = 0
        self._last_t: float | None = None
        self.changed = 0.0  # fraction of the counted pixels that changed, last frame

    def _reset(self, grey: np.ndarray) -> None:
        h, w = grey.shape
        self._background = grey.astype(np.float32)
        self._diff = np.empty((h, w), np.uint8)
        self._background8 = np.empty((h, w), np.uint8)
        mask = np.full((h, w), 255, np.uint8)
        for region in self.cfg.mask:
            points = np.array([(x * w, y * h) for x, y in region_points(region)], np.float32)
            cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 0)
        self._mask = mask if self.cfg.mask else None
        self._counted = int(cv2.countNonZero(mask))

    def update(self, grey: np.ndarray, t: float) -> bool:
        """Feed the next grey frame (taken at ``t`` seconds); True when it shows motion."""
        bg = self._background
        if bg is None or bg.shape != grey.shape:
            self._reset(grey)
            self._last_t = t
            self.changed = 1.0
            return True  # nothing to compare with yet: classify
        diff, bg8 = self._diff, self._background8
        assert diff is not None and bg8 is not None
        cv2.convertScaleAbs(bg, dst=bg8)
        cv2.absdiff(grey, bg8, dst=diff)
        cv2.threshold(diff, self.cfg.threshold, 255, cv2.THRESH_BINARY, dst=diff)
        if self._mask is not None:
            cv2.bitwise_and(diff, self._mask, dst=diff)
        self.changed = cv2.countNonZero(diff) / max(1, self._counted)
        if self.changed > LIGHTING_AREA:
            bg[...] = grey  # the whole scene changed: start again from this frame
        else:
            dt = max(0.0, t - (self._last_t if self._last_t is not None else t))
            alpha = min(1.0, dt / self.cfg.background_s) if dt else 0.05
            cv2.accumulateWeighted(grey, bg, alpha)
        self._last_t = t
        return self.changed >= self.cfg.min_area


class MotionGate:
    """Whether a frame is classified, and why (module docstring). Decided on the capture
    thread; the counts are read by the metrics."""

    def __init__(self, cfg: MotionConfig, event_active: Callable[[], bool] | None = None):
        self.cfg = cfg
        self.detector = MotionDetector(cfg)
        self.event_active = event_active or (lambda: False)
        self._last_motion = -float("inf")
        self._last_classified = -float("inf")
        self._lock = threading.Lock()
        self.skipped = 0
        self.classified = dict.fromkeys(REASONS, 0)

    def decide(self, grey: np.ndarray, t: float) -> str | None:
        """The reason to classify this frame, or None to skip it."""
        cfg = self.cfg
        if self.detector.update(grey, t):
            self._last_motion = t
            reason: str | None = "motion"
        elif t - self._last_motion <= cfg.hold_s:
            reason = "hold"
        elif self.event_active():
            reason = "event"
        elif t - self._last_classified >= cfg.heartbeat_s:
            reason = "heartbeat"
        else:
            reason = None
        with self._lock:
            if reason is None:
                self.skipped += 1
            else:
                self.classified[reason] += 1
                self._last_classified = t
        return reason

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            by_reason = dict(self.classified)
            skipped = self.skipped
        return {
            "classified": sum(by_reason.values()),
            "skipped": skipped,
            "heartbeats": by_reason["heartbeat"],
            "by_reason": by_reason,
            "changed": round(self.detector.changed, 4),
        }
