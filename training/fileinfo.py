"""Inspecting one image file: can it be read, what is it, and its fingerprints.

Pure per-file work (no dataset-level logic), safe to run in a thread pool.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from device.errors import SourceError
from device.preprocess import ImageTooLargeError, check_image
from training.hashing import sha256_bytes, thumbnail

log = logging.getLogger(__name__)

# File extension -> the format names Pillow reports for files that really are that type.
EXPECTED_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


@dataclass
class FileInfo:
    """What one file turned out to be. ``problem`` is None when it decodes cleanly."""

    sha256: str
    problem: str | None = None  # "not_an_image" | "truncated" | "unreadable" | "too_large"
    detail: str = ""
    format: str | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    phash: int | None = None
    thumb: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _jpeg_truncated(data: bytes) -> bool:
    """A JPEG must end with the EOI marker (FF D9); trailing zero padding is tolerated."""
    return not data.rstrip(b"\x00").endswith(b"\xff\xd9")


def inspect_file(path: Path, fingerprints: bool = True) -> FileInfo:
    """Decode ``path`` fully (Pillow, strict about truncation, then OpenCV as training does)."""
    data = path.read_bytes()
    info = FileInfo(sha256=sha256_bytes(data))
    try:  # from the header, before Pillow or OpenCV decode a possible decompression bomb
        header = check_image(data, "image")
    except ImageTooLargeError as exc:
        info.problem, info.detail = "too_large", exc.message.split("too large: ", 1)[-1]
        return info
    except SourceError:
        header = None  # Pillow says what it is below
    if header is not None:
        info.format, info.width, info.height = header.format, header.width, header.height
    try:
        img = Image.open(io.BytesIO(data))
        info.format = img.format
        info.width, info.height = img.size
        info.mode = img.mode
    except UnidentifiedImageError:
        info.problem, info.detail = "not_an_image", "not a recognised image file"
        return info
    except Image.DecompressionBombError as exc:  # over Pillow's own limit
        info.problem, info.detail = "too_large", str(exc)
        return info
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        info.problem, info.detail = "truncated", f"cannot decode: {exc}"
        return info
    if info.format == "JPEG" and _jpeg_truncated(data):
        info.problem, info.detail = "truncated", "JPEG data ends before its end-of-image marker"
        return info
    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_2) is None:
        info.problem, info.detail = "unreadable", f"OpenCV cannot decode this {info.format} file"
        return info
    if fingerprints:
        gray = img.convert("L")
        info.phash = int(str(imagehash.phash(gray)), 16)
        info.thumb = thumbnail(np.asarray(gray))
    return info


def format_mismatch(path: Path, info: FileInfo) -> bool:
    """True when the file's real format differs from what its extension says."""
    expected = EXPECTED_FORMATS.get(path.suffix.lower())
    return expected is not None and info.format is not None and info.format != expected


def color_oddity(info: FileInfo) -> str | None:
    """Describe a colour mode that is converted on loading (grayscale, alpha, 16-bit...)."""
    mode = info.mode
    if mode in ("RGB", ""):
        return None
    if mode in ("L", "1"):
        return "grayscale (expanded to 3 equal channels)"
    if mode.startswith("I;16") or mode in ("I", "F"):
        return f"high bit depth ({mode}; reduced to 8-bit)"
    if mode in ("RGBA", "LA", "PA"):
        return f"has an alpha channel ({mode}; alpha is dropped, not composited)"
    if mode == "P":
        return "palette image (converted to RGB)"
    if mode == "CMYK":
        return "CMYK colour (converted to RGB, colours may shift)"
    return f"colour mode {mode} (converted to RGB)"
