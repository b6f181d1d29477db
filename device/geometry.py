"""Regions of a frame given as fractions of its size, checked in one place.

A region of interest is ``[x, y, w, h]``: the top-left corner and the size, each a fraction of
the frame's width or height, so one config works at any capture resolution.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def check_roi(value: list[float] | None) -> list[float] | None:
    """Return ``value`` when it is a region inside the frame; ValueError saying why otherwise."""
    if value is None:
        return value
    if len(value) != 4:
        raise ValueError("roi is [x, y, w, h] (4 fractions of the frame)")
    x, y, w, h = value
    if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 and 0 < h <= 1):
        raise ValueError("roi must lie inside the frame: 0 <= x, y < 1 and 0 < w, h <= 1")
    if x + w > 1.0001 or y + h > 1.0001:
        raise ValueError("roi must lie inside the frame: x + w <= 1 and y + h <= 1")
    return value


Roi = Annotated[list[float] | None, AfterValidator(check_roi)]
