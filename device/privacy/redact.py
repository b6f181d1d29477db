"""Redacting a box of an image: a coarse blur, large pixels, or a solid black box.

Blur and pixelate first shrink the region to about ``CELLS`` samples across its longer side,
so that what is left cannot be sharpened back into a face, whatever the image size.
"""

from __future__ import annotations

import cv2
import numpy as np

CELLS = 8  # samples across a redacted region's longer side (blur, pixelate)


def redact_box(pixels: np.ndarray, box: tuple[int, int, int, int], method: str) -> None:
    """Redact ``box`` = ``(x0, y0, x1, y1)`` (pixels, x1/y1 exclusive) of ``pixels`` in place."""
    x0, y0, x1, y1 = box
    region = pixels[y0:y1, x0:x1]
    height, width = region.shape[:2]
    if height == 0 or width == 0:
        return
    if method == "box":
        region[:] = 0
        return
    cell = max(1.0, max(width, height) / CELLS)
    small = cv2.resize(
        region,
        (max(1, round(width / cell)), max(1, round(height / cell))),
        interpolation=cv2.INTER_AREA,
    )
    if method == "pixelate":
        region[:] = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
        return
    if method != "blur":
        raise ValueError(f"unknown redaction method {method!r}")
    smooth = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    region[:] = cv2.GaussianBlur(smooth, (0, 0), sigmaX=cell / 2)
