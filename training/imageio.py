"""Decoding images the one way training, evaluation and prediction all use.

Contract (shared with conversion and the device): decode to RGB uint8 (grayscale becomes three
equal channels, alpha is dropped), then resize to (height, width) with bilinear filtering
(``cv2.INTER_LINEAR``, half-pixel centres, no antialias) and no crop.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from device.errors import SourceError
from device.preprocess import check_image, decode_image, load_image, resize

log = logging.getLogger(__name__)


class ImageDecodeError(ValueError):
    """The file is not an image OpenCV can decode, or declares more pixels than the limit."""


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, ...) to an HxWx3 uint8 RGB array
    (the device's own decoder: grayscale expanded to 3 channels, alpha dropped). The size in
    the header is checked against the device's pixel limit before decoding."""
    try:
        check_image(data, "image data")
    except SourceError as exc:
        raise ImageDecodeError(exc.message) from None
    img = decode_image(data)
    if img is None:
        raise ImageDecodeError("cannot decode image data")
    return img


def resize_rgb(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (no antialias, no crop) to exactly (height, width), through the
    device's preprocessing so that training and the Pi see the same pixels."""
    return resize(img, height, width, "bilinear")


def load_rgb(path: str | Path, height: int, width: int) -> np.ndarray:
    """Read a file and return it as (height, width, 3) uint8 RGB (checked like the device's
    ``load_image``: size from the header before decoding)."""
    try:
        img = load_image(path)
    except SourceError as exc:
        raise ImageDecodeError(exc.message) from None
    return resize_rgb(img, height, width)


def load_batch(paths: list[Path], height: int, width: int) -> np.ndarray:
    """Load several images into one (N, height, width, 3) uint8 array."""
    out = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = load_rgb(path, height, width)
    return out
