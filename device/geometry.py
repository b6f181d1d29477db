"""Regions of a frame given as fractions of its size, checked in one place.

A region of interest is ``[x, y, w, h]``: the top-left corner and the size, each a fraction of
the frame's width or height, so one config works at any capture resolution. A polygon (a
privacy mask) is a list of ``[x, y]`` points in the same fractions.
"""

from __future__ import annotations

import math
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


MAX_POLYGON_POINTS = 100


def check_polygon(value: list[list[float]]) -> list[list[float]]:
    """Return ``value`` when it is a polygon inside the frame; ValueError saying why otherwise.

    A polygon is a list of ``[x, y]`` points, each a fraction of the frame's width or height
    (``[0, 0]`` is the top-left corner, ``[1, 1]`` the bottom-right one): at least 3 points,
    finite, inside ``[0, 1]``, enclosing some area.
    """
    if not 3 <= len(value) <= MAX_POLYGON_POINTS:
        raise ValueError(
            f"a polygon is 3 to {MAX_POLYGON_POINTS} [x, y] points (fractions of the frame), "
            f"not {len(value)}"
        )
    for i, point in enumerate(value):
        if len(point) != 2:
            raise ValueError(f"point {i} is {point}: give [x, y]")
        if not all(math.isfinite(v) and 0 <= v <= 1 for v in point):
            raise ValueError(
                f"point {i} {point} is outside the frame: x and y are fractions in [0, 1]"
            )
    xs = [p[0] for p in value]
    ys = [p[1] for p in value]
    area = 0.5 * abs(
        sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(value)))
    )  # the shoelace formula
    if area < 1e-6:
        raise ValueError("the polygon encloses no area (its points lie on one line)")
    return value


Polygon = Annotated[list[list[float]], AfterValidator(check_polygon)]
