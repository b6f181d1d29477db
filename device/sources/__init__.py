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
from device.sources.opencv import OpenCVSource, redact_url

log = logging.getLogger(__name__)

__all__ = [
    "Frame",
    "FrameSource",
    "ImageFolderSource",
    "OpenCVSource",
    "check_source",
    "describe_source",
    "open_source",
]

SAMPLE_CLIP = Path("models/vtest.avi")


STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


def _is_url(spec: str) -> bool:
    return "://" in spec


def describe_source(spec: str) -> str:
    """``spec`` as it may be printed or logged: credentials in stream URLs redacted."""
    spec = str(spec).strip()
    return redact_url(spec) if _is_url(spec) else spec


def check_source(spec: str) -> str:
    """Check that ``spec`` names a source, without opening or probing any device.

    Returns the kind (auto, picamera2, camera, stream, folder, video); SourceError for what
    is wrong in the config itself (a file or folder that does not exist).
    """
    spec = str(spec).strip()
    if spec == "auto":
        return "auto"
    if spec == "picamera2" or spec.startswith("picamera2:"):
        index = spec.split(":", 1)[1] if ":" in spec else "0"
        if not index.isdigit():
            raise SourceError(
                f"bad Pi camera source {spec!r}", "write picamera2 or picamera2:N (N = 0, 1, ...)"
            )
        return "picamera2"
    if spec.isdigit():
        return "camera"
    if _is_url(spec):
        scheme = spec.split("://", 1)[0].lower()
        if scheme not in STREAM_SCHEMES:
            raise SourceError(
                f"unsupported stream URL scheme {scheme!r} in {describe_source(spec)}",
                f"use one of {', '.join(s + '://' for s in STREAM_SCHEMES)}",
            )
        return "stream"
    path = Path(spec)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise SourceError(
            f"source not found: {spec}",
            "give a video file, an image folder, a camera index (0), an rtsp:// URL, "
            "picamera2, or auto",
        )
    return "video"


def open_source(
    spec: str,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    min_size: tuple[int, int] | None = None,
) -> FrameSource:
    """Build the source that ``spec`` names; see CameraConfig.source.

    ``min_size`` (width, height) is what the model needs: a camera without a configured size
    captures at the smallest size at or above it (a USB camera's mode, the Pi camera's
    ISP-scaled stream). The source is not opened, except a USB camera that ``auto`` had to open
    to probe it: that one comes back open (``is_open``), so that the camera is opened once.
    """
    spec = str(spec).strip()
    kind = check_source(spec)
    if kind == "auto":
        return _auto_source(width, height, fps, min_size)
    if kind == "picamera2":
        from device.sources.picamera import Picamera2Source, picamera2_cameras

        picamera2_cameras()  # picamera2 missing is a setup error to fix, not a camera to wait for
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return Picamera2Source(index, width=width, height=height, fps=fps, min_size=min_size)
    if kind == "camera":
        return OpenCVSource(int(spec), width=width, height=height, fps=fps, min_size=min_size)
    if kind == "stream":
        return OpenCVSource(spec, fps=fps)
    if kind == "folder":
        return ImageFolderSource(Path(spec), fps=fps)
    return OpenCVSource(spec, fps=fps)


def _auto_source(
    width: int | None, height: int | None, fps: float | None, min_size: tuple[int, int] | None
) -> FrameSource:
    """The Pi camera, else the first USB camera, else the sample clip."""
    try:
        from device.sources.picamera import Picamera2Source, picamera2_cameras

        if picamera2_cameras():
            log.info("auto source: Pi camera")
            return Picamera2Source(0, width=width, height=height, fps=fps, min_size=min_size)
    except SourceError:
        pass  # picamera2 not installed: not a Pi, or not set up; try USB cameras
    if os.path.exists("/dev/video0"):
        source = OpenCVSource(0, width=width, height=height, fps=fps, min_size=min_size)
        try:
            source.open()
        except SourceError:
            log.info("auto source: /dev/video0 exists but does not deliver frames")
        else:
            log.info("auto source: USB camera 0")
            return source  # already open: the pipeline uses it as it is
    if SAMPLE_CLIP.exists():
        log.info("auto source: no camera found, playing the sample clip %s in a loop", SAMPLE_CLIP)
        clip = OpenCVSource(str(SAMPLE_CLIP), fps=fps)
        clip.stand_in = True
        return clip
    raise SourceError(
        "no camera found (no Pi camera, no /dev/video0) and no sample clip at models/vtest.avi",
        "connect a camera, set cameras[].source, or run `make models` for the sample clip",
    )
