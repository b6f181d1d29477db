"""Errors caused by the user's data, files or options (not bugs).

They share the base of every edgecam error (:class:`device.errors.EdgecamError`: a message and
an optional hint), so the CLI scaffold (:mod:`device.cliapp`) prints them as ``error: ...`` /
``  fix: ...`` and exits with status 2, without a traceback.
"""

from __future__ import annotations

from device.cliapp import EXIT_INTERRUPTED
from device.errors import EdgecamError


class TrainingError(EdgecamError):
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
    """The user stopped training (Ctrl-C / SIGTERM); the run folder can be resumed.

    The CLI prints the message (which holds the resume command) and exits with status 130.
    """

    exit_code = EXIT_INTERRUPTED
