"""What to convert: a training run folder, or any Keras model / SavedModel plus a labels file.

Accepted sources:

* a run folder ``runs/<name>/`` made by ``make train``: ``saved_model/`` (or ``model.keras``),
  ``labels.txt``, ``run.json`` (input spec, dataset hash, split manifest);
* ``--model PATH --labels FILE``: a SavedModel folder (``saved_model.pb`` inside) or a Keras file
  (``.keras``, ``.h5``), with the input spec from the command line (defaults: the model's own
  size, bilinear resize, no crop, raw pixels).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from conversion.errors import ConversionError
from device.errors import EdgecamError
from device.manifest import RAW_MEAN, RAW_STD, InputSpec
from training import runfolder

log = logging.getLogger(__name__)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass(frozen=True)
class ConversionSource:
    """A model to convert and everything known about it."""

    name: str
    model_path: Path  # a SavedModel folder or a Keras file
    labels: list[str]
    input: InputSpec
    run_dir: Path | None = None
    fallback_model: Path | None = None  # the run's SavedModel when its Keras file cannot load
    dataset_hash: str | None = None
    split_manifest: Path | None = None
    run_info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_saved_model(self) -> bool:
        return self.model_path.is_dir()

    def with_input(self, spec: InputSpec) -> ConversionSource:
        return replace(self, input=spec)

    def describe(self) -> dict[str, Any]:
        """The ``source`` block of model.json."""
        return {
            "run": self.run_info.get("name") if self.run_dir else None,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "run_created_at": self.run_info.get("created_at"),
            "dataset_hash": self.dataset_hash,
            "model": str(self.model_path),
        }


def read_label_list(path: Path) -> list[str]:
    """Labels as a list (index = class); a ConversionError when the ids have gaps."""
    try:
        return runfolder.read_labels(path)
    except EdgecamError as exc:
        raise ConversionError(exc.message, exc.hint) from None


def _find_model_in_run(run_dir: Path) -> tuple[Path, Path | None]:
    """The run's Keras file (preferred: its uint8 input can be re-wired) and its SavedModel."""
    saved = run_dir / runfolder.SAVED_MODEL
    saved_ok = (saved / runfolder.SAVED_MODEL_PB).exists()
    keras_file = run_dir / runfolder.MODEL
    if keras_file.exists():
        return keras_file, saved if saved_ok else None
    if saved_ok:
        return saved, None
    raise ConversionError(
        f"run folder {run_dir} has no trained model ({runfolder.SAVED_MODEL}/ or "
        f"{runfolder.MODEL})",
        "the training did not finish: run `make train` again, or pass --model PATH",
    )


def from_run(run_dir: Path) -> ConversionSource:
    """Read a training run folder (see the run folder contract in docs/conversion.md)."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.exists():
        raise ConversionError(
            f"run folder not found: {run_dir}",
            "pass the folder `make train` wrote (runs/<name>), or --model PATH --labels FILE",
        )
    if not run_dir.is_dir():
        raise ConversionError(
            f"{run_dir} is not a run folder",
            "pass a runs/<name> folder; for a single model file use --model PATH --labels FILE",
        )
    run_dir = run_dir.resolve()
    if not (run_dir / runfolder.RUN_JSON).exists():
        raise ConversionError(
            f"{run_dir} is not a training run folder (no {runfolder.RUN_JSON})",
            "pass the folder `make train` wrote (runs/<name>), or --model PATH --labels FILE",
        )
    try:
        record = runfolder.read_run_record(run_dir)
    except EdgecamError as exc:
        raise ConversionError(exc.message, exc.hint) from None
    model_path, fallback = _find_model_in_run(run_dir)
    labels_file = run_dir / runfolder.LABELS
    if labels_file.exists():
        labels = read_label_list(labels_file)
    elif record.labels:
        labels = list(record.labels)
    else:
        raise ConversionError(f"run folder {run_dir} has no {runfolder.LABELS}")
    if record.labels and list(record.labels) != labels:
        raise ConversionError(
            f"{labels_file} and {runfolder.RUN_JSON} list different labels",
            f"the run folder was edited: restore {runfolder.LABELS} from the training run",
        )
    spec = record.input
    return ConversionSource(
        name=record.name,
        model_path=model_path,
        fallback_model=fallback,
        labels=labels,
        input=replace(
            spec,
            mean=spec.mean if spec.mean is not None else RAW_MEAN,
            std=spec.std if spec.std is not None else RAW_STD,
        ),
        run_dir=run_dir,
        dataset_hash=record.dataset_hash,
        split_manifest=record.split_manifest,
        run_info=record.to_json(),
    )


def from_model(model: Path, labels_file: Path | None, name: str | None = None) -> ConversionSource:
    """A Keras model file or SavedModel folder with its labels file."""
    model = Path(model).expanduser()
    if not model.exists():
        raise ConversionError(
            f"model not found: {model}",
            "--model takes a SavedModel folder or a .keras / .h5 file",
        )
    if model.is_dir() and not (model / runfolder.SAVED_MODEL_PB).exists():
        raise ConversionError(
            f"{model} is not a SavedModel folder (no {runfolder.SAVED_MODEL_PB})",
            "for a training run folder pass it as the first argument, without --model",
        )
    if model.is_file() and model.suffix.lower() not in KERAS_SUFFIXES:
        raise ConversionError(
            f"{model} is not a Keras model file ({', '.join(KERAS_SUFFIXES)})",
            "a .tflite is already converted: run it with `edgecam-device classify --model`",
        )
    if labels_file is None:
        raise ConversionError(
            "--model needs --labels FILE", "one label per line, line index = class index"
        )
    model = model.resolve()
    default_name = model.name if model.is_dir() else model.stem
    return ConversionSource(
        name=name or default_name,
        model_path=model,
        labels=read_label_list(Path(labels_file)),
        input=InputSpec(mean=RAW_MEAN, std=RAW_STD),
    )
