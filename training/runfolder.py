"""The run folder contract (read by ``evaluate`` and by the conversion component).

``runs/<name>/``::

    model.keras        best checkpoint (lowest val_loss)
    saved_model/       model.export(): uint8 RGB (None, H, W, 3) in, softmax out
    labels.txt         one label per line, index = line
    run.json           name, created_at, data_dir, dataset_hash, split_manifest, labels, input,
                       backbone, weights, epochs_run, train_seconds
    config.yaml        the resolved training config
    split.json         the split manifest used (run.json's split_manifest points here)
    history.json       per-epoch metrics of both phases
    report.json        the evaluation (see training.evaluate), + figures and CSVs
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.errors import RunError

log = logging.getLogger(__name__)

MODEL = "model.keras"
SAVED_MODEL = "saved_model"
LABELS = "labels.txt"
RUN_JSON = "run.json"
CONFIG = "config.yaml"
SPLIT = "split.json"
HISTORY = "history.json"
REPORT = "report.json"
STATE = "state.json"
BACKUP = ".backup"
LOG = "train.log"


def input_spec(height: int, width: int) -> dict[str, Any]:
    """The preprocessing contract of every model we train (rescaling is inside the network)."""
    return {
        "height": height,
        "width": width,
        "color": "RGB",
        "resize": "bilinear",
        "crop": "none",
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
    }


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_labels(path: Path, labels: list[str]) -> None:
    path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


def read_labels(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]


@dataclass
class RunInfo:
    """``run.json`` of a finished run."""

    path: Path
    data: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        return list(self.data["labels"])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.data["input"]["height"]), int(self.data["input"]["width"])

    @property
    def split_manifest(self) -> Path:
        return Path(self.data["split_manifest"])


def read_run(run_dir: Path) -> RunInfo:
    """Open a finished run folder, or raise RunError saying what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    for name in (RUN_JSON, MODEL):
        if not (run_dir / name).exists():
            raise RunError(
                f"{run_dir} is not a finished run: {name} is missing "
                "(train it, or resume with `edgecam-train train DATA --out RUN --resume`)"
            )
    try:
        data = read_json(run_dir / RUN_JSON)
    except json.JSONDecodeError as exc:
        raise RunError(f"{run_dir / RUN_JSON} is not valid JSON: {exc}") from None
    return RunInfo(run_dir, data)
