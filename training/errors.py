"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class TrainingError(Exception):
    """Base class for errors caused by the user's data, files or options (not bugs)."""


class DatasetError(TrainingError):
    """The data folder is missing, empty, or laid out in a way we cannot use."""


class ConfigError(TrainingError):
    """A training option or config file value is invalid."""


class WeightsError(TrainingError):
    """Pretrained weights cannot be found, downloaded or loaded."""


class RunError(TrainingError):
    """A run folder is missing, incomplete or would be overwritten."""


class TrainingInterrupted(TrainingError):
    """The user stopped training (Ctrl-C / SIGTERM); the run folder can be resumed."""
