"""Errors the conversion reports to users: what is wrong and how to fix it."""

from __future__ import annotations

from device.errors import EdgecamError


class ConversionError(EdgecamError):
    """The model, its labels or its data cannot be converted or verified."""


class EdgeTPUCompileError(ConversionError):
    """``edgetpu_compiler`` ran but failed."""
