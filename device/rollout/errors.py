"""Why a model update did not go through, and at which step."""

from __future__ import annotations

from device.errors import EdgecamError

STAGES = ("download", "verify", "load", "shadow", "run", "promote")


class RolloutError(EdgecamError):
    """A model update failed at ``stage`` (one of ``STAGES``); the running model stays."""

    def __init__(self, stage: str, message: str, hint: str | None = None):
        super().__init__(message, hint)
        self.stage = stage
