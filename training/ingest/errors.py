"""Errors of the ingest server: user-facing ones for the CLI, HTTP refusals for the API."""

from __future__ import annotations

from training.errors import TrainingError


class IngestError(TrainingError):
    """The server or a token command cannot run: a bad option, tokens file or inbox."""


class StoreError(IngestError):
    """The inbox cannot be read or written (disk full, S3 unreachable, no permission)."""


class SampleNotFound(StoreError):
    """No such sample in the inbox."""


class Rejected(Exception):
    """An upload the server refuses: the HTTP status, a short reason (the stats key) and the
    ``{"error", "fix"}`` body. Messages never echo the client's bytes beyond field names."""

    def __init__(self, status: int, reason: str, error: str, fix: str):
        super().__init__(error)
        self.status = status
        self.reason = reason
        self.error = error
        self.fix = fix

    def body(self) -> dict[str, str]:
        return {"error": self.error, "fix": self.fix}
