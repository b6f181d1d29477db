"""OpenCV sources: USB camera index, video file, RTSP / HTTP stream.

A USB camera whose ``width``/``height`` the config leaves unset is asked for the smallest of the
usual UVC modes at or above ``min_size`` (the model's input, enlarged for a region of interest):
decoding, colour conversion and resizing then work on as few pixels as the model needs. V4L2
grants the nearest mode it has, so each candidate is read back; the mode granted is logged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# FFmpeg's own error lines (one per attempt to reach a stream that is down) repeat what our one
# log line per outage says; set OPENCV_FFMPEG_LOGLEVEL=16 (or 48) to see them when debugging.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # reads OPENCV_FFMPEG_LOGLEVEL when it first opens a stream
import numpy as np

from device.errors import SourceError
from device.sources.base import FrameSource

log = logging.getLogger(__name__)

if "OPENCV_LOG_LEVEL" not in os.environ:
    # OpenCV warns on every failed attempt to open a camera; our one line per outage says it
    # (set OPENCV_LOG_LEVEL=WARNING to see them again)
    # (cv2.utils.logging is OpenCV 5; OpenCV 4.x, pinned on Bookworm, has cv2.setLogLevel)
    if hasattr(cv2.utils, "logging"):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    else:
        cv2.setLogLevel(2)  # LOG_LEVEL_ERROR


# Frame sizes UVC cameras commonly offer (width, height), smallest first.
CAMERA_MODES = sorted(
    [
        (160, 120),
        (176, 144),
        (320, 180),
        (320, 240),
        (352, 288),
        (424, 240),
        (640, 360),
        (640, 480),
        (800, 448),
        (800, 600),
        (848, 480),
        (960, 540),
        (1024, 576),
        (1280, 720),
        (1280, 960),
        (1600, 1200),
        (1920, 1080),
    ],
    key=lambda m: (m[0] * m[1], m[0]),
)


class OpenCVSource(FrameSource):
    native_order = "BGR"  # what OpenCV decodes to; read() converts, read_native() does not

    def __init__(
        self,
        spec: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        min_size: tuple[int, int] | None = None,
    ):
        self.spec = spec
        self.width = width
        self.height = height
        self.min_size = min_size  # (width, height) the model needs; for cameras without a size
        self.granted: tuple[int, int] | None = None  # the camera's mode, once open
        self.requested_fps = fps
        self.is_file = isinstance(spec, str) and "://" not in spec
        self.live = not self.is_file
        self._cap: cv2.VideoCapture | None = None
        self._first: np.ndarray | None = None
        self._fps: float | None = None
        self.frame_count: int | None = None

    def describe(self) -> str:
        if isinstance(self.spec, int):
            return f"camera {self.spec}"
        if self.is_file:
            return f"video {self.spec}"
        # never log credentials embedded in stream URLs
        return "stream " + redact_url(self.spec)

    @property
    def fps(self) -> float | None:
        return self.requested_fps or self._fps

    @property
    def is_open(self) -> bool:
        return self._cap is not None

    def open(self) -> None:
        if self.is_file and not Path(str(self.spec)).is_file():
            raise SourceError(f"video file not found: {self.spec}")
        cap = cv2.VideoCapture(self.spec)
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._open_failure())
        if isinstance(self.spec, int):
            if self.width and self.height:
                self.granted = _set_mode(cap, self.width, self.height)
                log.info(
                    "%s: asked for %dx%d (cameras[].width/height), got %dx%d",
                    self.describe(),
                    self.width,
                    self.height,
                    *self.granted,
                )
            elif self.min_size:
                self.granted = self._smallest_mode(cap, *self.min_size)
            if self.requested_fps:
                cap.set(cv2.CAP_PROP_FPS, self.requested_fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(self._open_failure(read=True))
        self._cap = cap
        self._first = first
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._fps = float(fps) if fps and 0 < fps < 1000 else None
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        log.debug("opened %s (%s fps)", self.describe(), self._fps)

    def _smallest_mode(self, cap: cv2.VideoCapture, need_w: int, need_h: int) -> tuple[int, int]:
        """Ask for each usual mode at or above (need_w, need_h), smallest first, until the camera
        grants one that is; the camera's default when none is (logged either way)."""
        default = _current_mode(cap)
        for w, h in CAMERA_MODES:
            if w < need_w or h < need_h:
                continue
            if default[0] * default[1] <= w * h and default[0] >= need_w and default[1] >= need_h:
                granted = default  # the camera's own mode is already as small
                break
            granted = _set_mode(cap, w, h)
            if granted[0] >= need_w and granted[1] >= need_h:
                break
        else:
            granted = _set_mode(cap, *default)
            log.warning(
                "%s: offers no mode of at least %dx%d (the model's input); using %dx%d",
                self.describe(),
                need_w,
                need_h,
                *granted,
            )
            return granted
        log.info(
            "%s: capturing at %dx%d, the smallest mode at or above %dx%d (the model's input; "
            "set cameras[].width/height for larger snapshots)",
            self.describe(),
            *granted,
            need_w,
            need_h,
        )
        return granted

    def _open_failure(self, read: bool = False) -> str:
        what = self.describe()
        if isinstance(self.spec, int):
            return (
                f"cannot open {what}: no such camera or it is busy "
                "(check `ls /dev/video*`, and that no other program uses it)"
            )
        if self.is_file:
            why = "it has no decodable frames" if read else "not a video OpenCV can decode"
            return f"cannot read {what}: {why} (use an MP4/AVI/MKV file with a common codec)"
        return f"cannot open {what}: check the URL, credentials and that the camera is reachable"

    def read(self) -> np.ndarray | None:
        bgr = self.read_native()
        return None if bgr is None else self.to_rgb(bgr)

    def read_native(self) -> np.ndarray | None:
        """The next frame as OpenCV decodes it (BGR)."""
        if self._cap is None:
            return None
        if self._first is not None:
            bgr, self._first = self._first, None
            return bgr
        ok, bgr = self._cap.read()
        return bgr if ok else None

    def to_rgb(self, pixels: np.ndarray) -> np.ndarray:
        # swapped in place: one array per frame, not two
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels)

    def rewind(self) -> bool:
        if self._cap is not None and self.is_file and self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            return True
        return super().rewind()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _current_mode(cap: cv2.VideoCapture) -> tuple[int, int]:
    return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))


def _set_mode(cap: cv2.VideoCapture, width: int, height: int) -> tuple[int, int]:
    """Ask the camera for a frame size; the size it granted (V4L2 picks its nearest mode)."""
    cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    return _current_mode(cap)


def redact_url(url: str) -> str:
    """``scheme://user:pass@host/...`` -> ``scheme://***@host/...``: for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
