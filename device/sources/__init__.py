"""Frame sources: Pi camera, OpenCV (USB camera, video file, RTSP/HTTP), image folder.

Every source yields RGB ``HxWx3 uint8`` arrays from ``read()``; the capture thread
(device.capture) owns the source, stamps frames, reconnects live sources and loops files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from device.errors import SourceError
from device.sources.base import Frame, FrameSource
from device.sources.folder import ImageFolderSource
from device.sources.opencv import OpenCVSource

log = logging.getLogger(__name__)

__all__ = ["Frame", "FrameSource", "ImageFolderSource", "OpenCVSource", "open_source"]

SAMPLE_CLIP = Path("models/vtest.avi")


def _is_url(spec: str) -> bool:
    return "://" in spec


def open_source(
    spec: str,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
) -> FrameSource:
    """Build (not yet open) the source that ``spec`` names; see CameraConfig.source."""
    spec = str(spec).strip()
    if spec == "auto":
        return _auto_source(width, height, fps)
    if spec == "picamera2" or spec.startswith("picamera2:"):
        from device.sources.picamera import Picamera2Source

        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return Picamera2Source(index, width=width, height=height, fps=fps)
    if spec.isdigit():
        return OpenCVSource(int(spec), width=width, height=height, fps=fps)
    if _is_url(spec):
        return OpenCVSource(spec, fps=fps)
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(path, fps=fps)
    if not path.exists():
        raise SourceError(
            f"source not found: {spec}",
            "give a video file, an image folder, a camera index (0), an rtsp:// URL, "
            "picamera2, or auto",
        )
    return OpenCVSource(str(path), fps=fps)


def _auto_source(width: int | None, height: int | None, fps: float | None) -> FrameSource:
    """The Pi camera, else the first USB camera, else the sample clip."""
    try:
        from device.sources.picamera import Picamera2Source, picamera2_cameras

        if picamera2_cameras():
            log.info("auto source: Pi camera")
            return Picamera2Source(0, width=width, height=height, fps=fps)
    except SourceError:
        pass  # picamera2 not installed: not a Pi, or not set up; try USB cameras
    if os.path.exists("/dev/video0"):
        source = OpenCVSource(0, width=width, height=height, fps=fps)
        try:
            source.open()
        except SourceError:
            log.info("auto source: /dev/video0 exists but does not deliver frames")
        else:
            log.info("auto source: USB camera 0")
            return source
    if SAMPLE_CLIP.exists():
        log.info("auto source: no camera found, playing the sample clip %s in a loop", SAMPLE_CLIP)
        clip = OpenCVSource(str(SAMPLE_CLIP), fps=fps)
        clip.stand_in = True
        return clip
    raise SourceError(
        "no camera found (no Pi camera, no /dev/video0) and no sample clip at models/vtest.avi",
        "connect a camera, set cameras[].source, or run `make models` for the sample clip",
    )
