"""The run folder contract: the file names and the typed ``run.json`` (``RunRecord``), written
by ``train`` and read by ``evaluate`` and by ``conversion.source`` through this module only.
The ``input`` object is the model bundle's (``device.manifest.InputSpec``).

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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from device.errors import ModelError
from device.files import read_text
from device.labels import read_labels as read_label_map
from device.manifest import LABELS_FILE, RAW_MEAN, RAW_STD, InputSpec
from training.errors import RunError

log = logging.getLogger(__name__)

MODEL = "model.keras"
SAVED_MODEL = "saved_model"
SAVED_MODEL_PB = "saved_model.pb"
LABELS = LABELS_FILE
RUN_JSON = "run.json"
CONFIG = "config.yaml"
SPLIT = "split.json"
HISTORY = "history.json"
REPORT = "report.json"
STATE = "state.json"
BACKUP = ".backup"
LOG = "train.log"
MAX_JSON_BYTES = 64 << 20  # report.json of a large test split is a few MB


def input_spec(height: int, width: int) -> InputSpec:
    """The preprocessing contract of every model we train: RGB, bilinear, no crop, raw pixels
    (rescaling is inside the network)."""
    return InputSpec(height=height, width=width, mean=RAW_MEAN, std=RAW_STD)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """A JSON file of the run folder; RunError naming the file when it cannot be read."""
    text = read_text(path, "run file", RunError, max_bytes=MAX_JSON_BYTES)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON: {exc}") from None


def write_labels(path: Path, labels: list[str]) -> None:
    path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


def read_labels(path: Path) -> list[str]:
    """The labels of a run (index = class); RunError when ids leave gaps."""
    try:
        mapping = read_label_map(path)
    except ModelError as exc:
        raise RunError(exc.message, exc.hint) from None
    if sorted(mapping) != list(range(len(mapping))):
        raise RunError(
            f"labels file {path} does not number its classes 0..{len(mapping) - 1}",
            "one label per line (line = class index), or '<id> <label>' lines without gaps",
        )
    return [mapping[i] for i in range(len(mapping))]


@dataclass(frozen=True)
class RunRecord:
    """``run.json``, typed: what conversion and evaluation rely on, and the rest as ``extra``."""

    name: str
    labels: tuple[str, ...]
    input: InputSpec
    created_at: str | None = None
    data_dir: str | None = None
    dataset_hash: str | None = None
    split_manifest: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        if self.input.height is None or self.input.width is None:
            raise RunError("run.json input gives no height and width")
        return self.input.height, self.input.width

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(
            split_manifest=str(self.split_manifest) if self.split_manifest else None,
            labels=list(self.labels),
            input=self.input.to_json(),
        )
        extra = out.pop("extra")
        return {**out, **extra}

    @classmethod
    def from_json(cls, data: Any, where: str, default_name: str) -> RunRecord:
        if not isinstance(data, dict):
            raise RunError(f"{where} must be a JSON object")
        labels = data.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str | int) for x in labels):
            raise RunError(f"{where}: labels must be a list of strings")
        strings = {k: data.get(k) for k in ("created_at", "data_dir", "dataset_hash")}
        for key in ("name", "split_manifest", *strings):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise RunError(f"{where}: {key} must be a string, got {data[key]!r:.60}")
        try:
            spec = InputSpec.from_json(data.get("input", {}), where)
        except ModelError as exc:
            raise RunError(exc.message, exc.hint) from None
        known = {"name", "labels", "input", "split_manifest", *strings}
        return cls(
            name=data.get("name") or default_name,
            labels=tuple(str(x) for x in labels),
            input=spec,
            split_manifest=Path(data["split_manifest"]) if data.get("split_manifest") else None,
            extra={k: v for k, v in data.items() if k not in known},
            **strings,
        )


def read_run_record(run_dir: Path) -> RunRecord:
    """Read and check ``run_dir/run.json``."""
    path = Path(run_dir) / RUN_JSON
    return RunRecord.from_json(read_json(path), str(path), Path(run_dir).name)


@dataclass
class RunInfo:
    """A finished run folder and its ``run.json``."""

    path: Path
    record: RunRecord

    @property
    def labels(self) -> list[str]:
        return list(self.record.labels)

    @property
    def size(self) -> tuple[int, int]:
        return self.record.size

    @property
    def split_manifest(self) -> Path:
        if self.record.split_manifest is None:
            raise RunError(f"{self.path / RUN_JSON} names no split_manifest")
        return self.record.split_manifest


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
    return RunInfo(run_dir, read_run_record(run_dir))
