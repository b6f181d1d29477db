"""Per-epoch history kept on disk (history.json), so resumed runs keep their earlier epochs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras

from training.errors import RunError
from training.runfolder import read_json, write_json

log = logging.getLogger(__name__)


def load_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        return list(read_json(path)["epochs"])
    except (RunError, KeyError, TypeError):
        log.warning("ignoring unreadable %s", path)
        return []


class HistoryFile(keras.callbacks.Callback):
    """Writes {"epochs": [{"epoch", "phase", "loss", "accuracy", "val_loss", ...}]} each epoch."""

    def __init__(self, path: Path, phase: int) -> None:
        super().__init__()
        self.path = path
        self.phase = phase
        self.records = load_history(path)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        record: dict[str, Any] = {"epoch": epoch + 1, "phase": self.phase}
        for key, value in (logs or {}).items():
            record[key] = float(value)
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            record["lr"] = float(keras.ops.convert_to_numpy(lr))
        # Replace a record of the same epoch (an epoch redone after a resume).
        self.records = [r for r in self.records if r["epoch"] != record["epoch"]] + [record]
        self.records.sort(key=lambda r: r["epoch"])
        write_json(self.path, {"epochs": self.records})

    def best_val_loss(self) -> float | None:
        values = [r["val_loss"] for r in self.records if "val_loss" in r]
        return min(values) if values else None
