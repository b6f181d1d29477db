"""Raspberry Pi camera through picamera2 (apt: python3-picamera2; not on PyPI for us).

This is the only module that imports picamera2, lazily, so the rest runs anywhere.

Two streams from one capture: the ISP scales the low-resolution ("lores") stream to just above
the model's input (``min_size``, with the main stream's aspect ratio), which is what the
classifier, motion gating and camera health get as ``Frame.pixels``; the main stream
(``width`` x ``height``, default 640 x 480) is kept only for snapshots and samples
(``Frame.full``). The lores stream is RGB straight from the ISP where libcamera offers it (Pi 5),
so no colour conversion runs; the Pi 4's ISP gives lores only as YUV420, converted to RGB at
that small size. Without ``min_size``, or when the main stream is no larger, main alone is used.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import cv2
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


def lores_size(main: tuple[int, int], need: tuple[int, int] | None) -> tuple[int, int] | None:
    """The low-resolution stream's (width, height): at least ``need``, with ``main``'s aspect
    ratio, even sides (YUV420); None when it would not be smaller than ``main``."""
    if need is None:
        return None
    mw, mh = main
    scale = max(need[0] / mw, need[1] / mh)
    w = min(mw, 2 * math.ceil(mw * scale / 2))
    h = min(mh, 2 * math.ceil(mh * scale / 2))
    return None if (w, h) == (mw, mh) or w * h >= mw * mh else (w, h)


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
        min_size: tuple[int, int] | None = None,
    ):
        self.index = index
        self.size = (width or 640, height or 480)
        self.lores = lores_size(self.size, min_size)
        self.lores_format: str | None = None  # BGR888 (RGB in memory) or YUV420, once open
        self.requested_fps = fps
        self._cam: Any = None
        self._full: np.ndarray | None = None

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
            self._configure(cam)
            cam.start()
        except (RuntimeError, IndexError, OSError, ValueError) as exc:
            raise SourceError(f"cannot start Pi camera {self.index}: {exc}") from None
        self._cam = cam
        if self.lores is not None:
            log.info(
                "Pi camera %d: classifying the ISP-scaled %dx%d %s stream; main %dx%d for "
                "snapshots and samples",
                self.index,
                *self.lores,
                "RGB" if self.lores_format == "BGR888" else "YUV420 (converted)",
                *self.size,
            )

    def _configure(self, cam: Any) -> None:
        # libcamera's "BGR888" is R, G, B in memory order: RGB arrays straight from the ISP,
        # scaled by the ISP to the requested size.
        controls = {"FrameRate": self.requested_fps} if self.requested_fps else {}
        main = {"size": self.size, "format": "BGR888"}
        if self.lores is None:
            config = cam.create_video_configuration(main=main, controls=controls, buffer_count=4)
            cam.configure(config)
            return
        for fmt in ("BGR888", "YUV420"):
            config = cam.create_video_configuration(
                main=main,
                lores={"size": self.lores, "format": fmt},
                controls=controls,
                buffer_count=4,
            )
            try:
                cam.configure(config)
            except RuntimeError as exc:  # the Pi 4: "lores stream must be YUV"
                if fmt == "YUV420":
                    raise
                log.debug("Pi camera %d: no RGB lores stream (%s); using YUV420", self.index, exc)
                continue
            self.lores_format = fmt
            return

    def read(self) -> np.ndarray | None:
        if self._cam is None:
            return None
        try:
            if self.lores is None:
                return self._cam.capture_array("main")
            (lores, self._full), _metadata = self._cam.capture_arrays(["lores", "main"])
        except (RuntimeError, OSError) as exc:
            log.warning("Pi camera %d read failed: %s", self.index, exc)
            return None
        if self.lores_format == "YUV420":  # I420 planes, rows possibly padded to a stride
            lores = cv2.cvtColor(lores, cv2.COLOR_YUV2RGB_I420)[:, : self.lores[0]]
        return lores

    def full_res(self) -> np.ndarray | None:
        return self._full

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            except (RuntimeError, OSError) as exc:
                log.debug("closing Pi camera: %s", exc)
            self._cam = None
