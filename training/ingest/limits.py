"""The server's defaults and the bounds on one upload (light to import: the CLI reads them)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 8470
DEFAULT_MAX_BODY = 8 << 20
DEFAULT_MAX_PIXELS = 20_000_000
DEFAULT_MAX_META = 64 << 10


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one upload. 8 MiB holds a 12 MP camera frame at JPEG quality 95; 20 MP covers
    every Raspberry Pi camera module (the HQ camera is 12.3 MP) with room to spare."""

    max_body: int = DEFAULT_MAX_BODY
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_meta: int = DEFAULT_MAX_META
