"""Raspberry Pi camera through picamera2 (apt: python3-picamera2; not on PyPI for us).

This is the only module that imports picamera2, lazily, so the rest runs anywhere.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from device.errors import SourceError
from device.sources.base import FrameSource

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "on Raspberry Pi OS: sudo apt install python3-picamera2, and create the venv with "
    "--system-site-packages so it can import it (see README, Raspberry Pi)"
)


def _picamera2() -> Any:
    try:
        from picamera2 import Picamera2  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SourceError(f"picamera2 is not available ({exc})", INSTALL_HINT) from None
    return Picamera2


def picamera2_cameras() -> list[dict[str, Any]]:
    """The Pi cameras libcamera sees; SourceError when picamera2 is missing."""
    return list(_picamera2().global_camera_info())


class Picamera2Source(FrameSource):
    live = True

    def __init__(
        self,
        index: int = 0,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ):
        self.index = index
        self.size = (width or 640, height or 480)
        self.requested_fps = fps
        self._cam: Any = None

    def describe(self) -> str:
        return f"Pi camera {self.index}"

    @property
    def fps(self) -> float | None:
        return self.requested_fps

    @property
    def is_open(self) -> bool:
        return self._cam is not None

    def open(self) -> None:
        cls = _picamera2()
        try:
            cam = cls(self.index)
            # libcamera's "BGR888" is R, G, B in memory order: RGB arrays straight from the ISP,
            # scaled by the ISP to the requested size.
            controls = {"FrameRate": self.requested_fps} if self.requested_fps else {}
            config = cam.create_video_configuration(
                main={"size": self.size, "format": "BGR888"}, controls=controls, buffer_count=4
            )
            cam.configure(config)
            cam.start()
        except (RuntimeError, IndexError, OSError) as exc:
            raise SourceError(f"cannot start Pi camera {self.index}: {exc}") from None
        self._cam = cam

    def read(self) -> np.ndarray | None:
        if self._cam is None:
            return None
        try:
            return self._cam.capture_array("main")
        except (RuntimeError, OSError) as exc:
            log.warning("Pi camera %d read failed: %s", self.index, exc)
            return None

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            except (RuntimeError, OSError) as exc:
                log.debug("closing Pi camera: %s", exc)
            self._cam = None
