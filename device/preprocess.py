"""Frames (HxWx3 uint8 RGB) -> the model's input tensor.

Honours the model: input size, resize filter, optional region of interest and centre crop, and
the float normalisation ``x = (pixel - mean) / std`` folded into the input tensor's quantisation
``q = x / scale + zero_point``. The whole mapping pixel -> input value is one lookup table per
channel; when it is the identity (most quantised models, and every model we train) raw uint8
pixels are copied in with no math. Buffers are preallocated: ``process`` allocates nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

# OpenCV's own pixel limit, the second line of defence behind the header check below; it is
# read once, when the library loads, so it is set before the first ``import cv2`` we run.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 28))

import cv2
import numpy as np

from device.errors import SourceError
from device.files import read_bytes
from device.imageheader import FORMATS, ImageHeader, read_header
from device.inference import TensorInfo
from device.manifest import InputSpec

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGE_PIXELS_ENV = "EDGECAM_MAX_IMAGE_PIXELS"
_FORMAT_LIST = ", ".join(FORMATS[:-1]) + " or " + FORMATS[-1]

_FILTERS = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}
_IMREAD_COLOR_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def limit_opencv_threads(threads: int = 1) -> None:
    """Keep OpenCV's own thread pool small: the cores belong to the interpreter.

    Resizing a frame is a fraction of a millisecond on one core; OpenCV's parallel workers only
    fight the interpreter's threads for the CPU.
    """
    cv2.setNumThreads(threads)


class ImageTooLargeError(SourceError):
    """An image declares more pixels than the limit (a decompression bomb, or a scan)."""


def max_image_pixels() -> int:
    """The pixel limit: ``EDGECAM_MAX_IMAGE_PIXELS`` or 50 million (50 MP decodes to 150 MB)."""
    value = os.environ.get(MAX_IMAGE_PIXELS_ENV, "")
    try:
        limit = int(value.replace("_", "")) if value.strip() else DEFAULT_MAX_IMAGE_PIXELS
    except ValueError:
        raise SourceError(
            f"{MAX_IMAGE_PIXELS_ENV}={value!r} is not a whole number",
            f"set it to a pixel count such as {DEFAULT_MAX_IMAGE_PIXELS}, or unset it",
        ) from None
    if limit < 1:
        raise SourceError(f"{MAX_IMAGE_PIXELS_ENV} must be at least 1, got {limit}")
    return limit


def check_image(data: bytes, where: str, max_pixels: int | None = None) -> ImageHeader:
    """Read the header of encoded image bytes and refuse an image over the pixel limit
    *before* anything decodes it. SourceError when the format is not one of ``FORMATS``."""
    limit = max_image_pixels() if max_pixels is None else max_pixels
    header = read_header(data)
    if header is None:
        raise SourceError(
            f"cannot decode {where}: it is not a {_FORMAT_LIST} file, or its header is cut short",
            f"use a {_FORMAT_LIST} file",
        )
    if header.pixels > limit:
        raise ImageTooLargeError(
            f"{where} is too large: {header.width} x {header.height} pixels "
            f"({header.pixels / 1e6:.1f} MP; the limit is {limit / 1e6:g} MP)",
            f"downscale it, or raise the limit with {MAX_IMAGE_PIXELS_ENV}=<pixels>",
        )
    if header.pixels == 0:
        raise SourceError(
            f"{where} declares an empty image ({header.width} x {header.height})",
            "re-save it as a JPEG or PNG",
        )
    return header


def load_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB; a clear SourceError when it cannot be read,
    is not an image, or declares more than ``max_pixels`` (default ``max_image_pixels()``)."""
    limit = max_image_pixels() if max_pixels is None else max_pixels
    # A compressed image is smaller than its pixels (+ 1 MB of metadata): a bigger file is
    # not an image we would decode anyway.
    data = read_bytes(path, "image", SourceError, max_bytes=limit * 4 + (1 << 20))
    header = check_image(data, f"image {path}", limit)
    image = decode_image(data)
    if image is None:
        raise SourceError(
            f"cannot decode image {path} ({header.format}, {header.width} x {header.height}): "
            "the file is damaged or cut short",
            "copy it again, or re-save it as a JPEG or PNG",
        )
    return image


def decode_image(data: bytes) -> np.ndarray | None:
    """Decode encoded image bytes (JPEG, PNG, BMP, ...) to HxWx3 uint8 RGB; None if it cannot.

    OpenCV's colour mode: EXIF orientation applied, grayscale expanded to three channels, alpha
    dropped, 16-bit reduced to 8-bit. Untrusted bytes go through ``check_image`` first.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if not buf.size:
        return None
    try:
        if _IMREAD_COLOR_RGB is not None:
            return cv2.imdecode(buf, _IMREAD_COLOR_RGB)
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # OpenCV < 4.11 (the Pi OS Bookworm pin)
    except cv2.error:  # OpenCV's own size limit (OPENCV_IO_MAX_IMAGE_PIXELS)
        return None
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize(
    image: np.ndarray,
    height: int,
    width: int,
    interpolation: str = "bilinear",
    dst: np.ndarray | None = None,
) -> np.ndarray:
    """Resize to exactly (height, width): the one resize that training, conversion and the
    device all use (OpenCV, half-pixel centres, no antialias)."""
    if image.shape[:2] == (height, width):
        if dst is None:
            return image
        np.copyto(dst, image)
        return dst
    return cv2.resize(image, (width, height), dst=dst, interpolation=_FILTERS[interpolation])


def build_lut(spec: InputSpec, tensor: TensorInfo) -> np.ndarray | None:
    """Per-channel lookup table pixel -> input value (3x256), or None for the identity."""
    dtype = tensor.dtype
    pixels = np.arange(256, dtype=np.float64)
    if spec.mean is None and spec.std is None:
        if dtype == np.uint8:
            return None
        if dtype == np.int8:  # raw pixels shifted into int8, the usual int8 image convention
            return np.tile((pixels - 128).astype(np.int8), (3, 1))
        return np.tile(pixels.astype(dtype), (3, 1))
    mean = np.asarray(spec.mean if spec.mean is not None else (0.0, 0.0, 0.0), dtype=np.float64)
    std = np.asarray(spec.std if spec.std is not None else (1.0, 1.0, 1.0), dtype=np.float64)
    if not tensor.quantized or not np.issubdtype(dtype, np.integer):
        real = (pixels[None, :] - mean[:, None]) / std[:, None]
        return real.astype(dtype)
    scale, zero_point = tensor.scale, tensor.zero_point
    if (
        dtype == np.uint8
        and np.all(np.abs(std * scale - 1.0) < 1e-5)
        and np.all(np.abs(mean - zero_point) < 1e-5)
    ):
        return None
    info = np.iinfo(dtype)
    q = (pixels[None, :] - mean[:, None]) / (std[:, None] * scale) + zero_point
    return np.clip(np.round(q), info.min, info.max).astype(dtype)


def crop_box(
    height: int,
    width: int,
    target_hw: tuple[int, int],
    crop: str,
    roi: Sequence[float] | None = None,
) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the frame region to resize: region of interest, then centre crop.

    ``roi`` is (x, y, w, h) as fractions of the frame.
    """
    y0, y1, x0, x1 = 0, height, 0, width
    if roi is not None:
        rx, ry, rw, rh = roi
        x0, x1 = round(rx * width), round((rx + rw) * width)
        y0, y1 = round(ry * height), round((ry + rh) * height)
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(width, max(x1, x0 + 1)), min(height, max(y1, y0 + 1))
    if crop == "center":
        h, w = y1 - y0, x1 - x0
        th, tw = target_hw
        if w * th > h * tw:  # too wide
            new_w = max(1, round(h * tw / th))
            x0 += (w - new_w) // 2
            x1 = x0 + new_w
        else:
            new_h = max(1, round(w * th / tw))
            y0 += (h - new_h) // 2
            y1 = y0 + new_h
    return y0, y1, x0, x1


class Preprocessor:
    """Turns RGB frames into input tensors for one model input."""

    def __init__(self, spec: InputSpec, tensor: TensorInfo, roi: Sequence[float] | None = None):
        self.spec = spec
        self.tensor = tensor
        self.roi = tuple(roi) if roi is not None else None
        _, self.height, self.width, _ = tensor.shape
        self.lut = build_lut(spec, tensor)
        self._resized = np.empty((self.height, self.width, 3), dtype=np.uint8)

    @property
    def identity(self) -> bool:
        return self.lut is None

    def new_buffer(self) -> np.ndarray:
        """A tensor-shaped buffer to pass as ``out`` (for ring buffers across threads)."""
        return np.empty((1, self.height, self.width, 3), dtype=self.tensor.dtype)

    def process(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Write the model input for ``frame`` (HxWx3 uint8 RGB) into ``out`` and return it."""
        if out is None:
            out = self.new_buffer()
        h, w = frame.shape[:2]
        y0, y1, x0, x1 = crop_box(h, w, (self.height, self.width), self.spec.crop, self.roi)
        region = frame[y0:y1, x0:x1]
        if self.lut is None:
            resize(region, self.height, self.width, self.spec.resize, dst=out[0])
            return out
        resize(region, self.height, self.width, self.spec.resize, dst=self._resized)
        for c in range(3):
            out[0, :, :, c] = self.lut[c][self._resized[:, :, c]]
        return out
