"""Privacy masks: polygons (fractions of the frame) blacked out in place.

The polygons are turned into pixel coordinates once per frame size; filling them is a few
tens of microseconds per frame (OpenCV's polygon fill), cheap enough for the capture thread
(``mask_inference``). Pixels on a polygon's edge are filled too: a mask errs on the side of
hiding more.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence

import cv2
import numpy as np


def mask_version(polygons: Sequence[Sequence[Sequence[float]]]) -> str | None:
    """The first 12 hex digits of the sha256 of the polygons (canonical JSON); None: no masks.

    Recorded with every redacted image, so that one can tell which masks it was made with.
    """
    if not polygons:
        return None
    canonical = json.dumps([[[float(v) for v in p] for p in poly] for poly in polygons])
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class MaskSet:
    """One camera's polygons; ``apply`` blacks them out in an RGB frame, in place."""

    def __init__(self, polygons: Sequence[Sequence[Sequence[float]]]):
        self.polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
        self.version = mask_version(polygons)
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, int], list[np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.polygons)

    def pixel_polygons(self, width: int, height: int) -> list[np.ndarray]:
        """The polygons in pixel coordinates of a ``width`` x ``height`` frame (cached)."""
        key = (width, height)
        with self._lock:
            found = self._cache.get(key)
            if found is None:
                scale = np.array([width, height], dtype=np.float64)
                found = [np.round(p * scale).astype(np.int32) for p in self.polygons]
                if len(self._cache) > 8:  # frame sizes rarely change; keep the cache small
                    self._cache.clear()
                self._cache[key] = found
        return found

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Black out every polygon in ``pixels`` (HxWxC), in place where it can be (a
        contiguous, writable array), else in a copy; returns the masked array."""
        if not self.polygons:
            return pixels
        if not (pixels.flags.c_contiguous and pixels.flags.writeable):
            pixels = np.ascontiguousarray(pixels).copy()
        height, width = pixels.shape[:2]
        cv2.fillPoly(pixels, self.pixel_polygons(width, height), (0,) * pixels.shape[2])
        return pixels
