"""Errors the conversion reports to users: what is wrong and how to fix it.

They derive from :class:`device.errors.EdgecamError` (a message and an optional hint), like
the device's and training's errors, so the CLI scaffold (:mod:`device.cliapp`) prints them as
``error: ...`` / ``  fix: ...`` and exits with status 2, without a traceback.
"""

from __future__ import annotations

from device.errors import EdgecamError


class ConversionError(EdgecamError):
    """The model, its labels or its data cannot be converted or verified."""


class EdgeTPUCompileError(ConversionError):
    """``edgetpu_compiler`` ran but failed."""
