"""OpenCV sources: USB camera index, video file, RTSP / HTTP stream."""

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
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class OpenCVSource(FrameSource):
    def __init__(
        self,
        spec: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ):
        self.spec = spec
        self.width = width
        self.height = height
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
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
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
        if self._cap is None:
            return None
        if self._first is not None:
            bgr, self._first = self._first, None
        else:
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def rewind(self) -> bool:
        if self._cap is not None and self.is_file and self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            return True
        return super().rewind()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def redact_url(url: str) -> str:
    """``scheme://user:pass@host/...`` -> ``scheme://***@host/...``: for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
