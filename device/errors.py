"""Errors the device runtime reports to users: what is wrong and how to fix it."""

from __future__ import annotations


class EdgecamError(Exception):
    """An error with a user-facing message and an optional hint on how to fix it.

    CLIs print ``str(error)`` (message and hint) on one or two lines and exit non-zero;
    they never show a traceback for these.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message


class ModelError(EdgecamError):
    """The model file, its labels or its manifest cannot be used."""


class EdgeTPUError(ModelError):
    """An Edge TPU model or delegate cannot be used on this machine."""


class RuntimeMissingError(EdgecamError):
    """No TFLite interpreter package is installed."""


class SourceError(EdgecamError):
    """A camera, video or image source cannot be opened or read."""


class ConfigError(EdgecamError):
    """The device configuration file is invalid."""
