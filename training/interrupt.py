"""Stop training cleanly on Ctrl-C / SIGTERM, so the run can be resumed.

TensorFlow's long C++ calls inside ``model.fit`` delay (or swallow) Python's KeyboardInterrupt.
This callback installs its own SIGINT/SIGTERM handlers for the duration of ``fit``, asks Keras
to stop after the current batch, and the trainer then raises ``TrainingInterrupted`` with the
command that resumes the run (BackupAndRestore keeps the last finished epoch).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import keras

from training.errors import TrainingInterrupted

__all__ = ["KeepBackupWhenStopped", "StopOnSignal", "TrainingInterrupted"]

log = logging.getLogger(__name__)


class StopOnSignal(keras.callbacks.Callback):
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        if self.received is not None:  # a second Ctrl-C: stop now, the hard way
            raise KeyboardInterrupt
        self.received = signum
        log.warning(
            "%s received: stopping after the current batch (press Ctrl-C again to abort now)",
            signal.Signals(signum).name,
        )

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.received is not None:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


class KeepBackupWhenStopped(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that keeps its backup when training was stopped by a signal.

    Keras deletes the backup in ``on_train_end`` because a stopped ``fit`` looks finished;
    keeping it is what lets ``--resume`` continue from the last finished epoch.
    """

    def __init__(self, backup_dir: str, stopper: StopOnSignal, **kwargs: Any) -> None:
        super().__init__(backup_dir, **kwargs)
        self.stopper = stopper

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.stopper.received is None:
            super().on_train_end(logs)
