"""``edgecam-train retrain RUN DATA`` (``make retrain``): fine-tune, convert, verify, compare.

1. a new run starts from RUN's weights (:mod:`training.warmstart`) with RUN's training config
   (as many epochs, at half the learning rate: on the digits, half the epochs cost the
   original test split 0.4-0.6 accuracy points, the same number kept it), on DATA as merged by
   ``edgecam-train merge`` (the field samples in train/val, DATA's test split unchanged);
2. the new run is converted and verified by edgecam-convert's own pipeline (every variant
   against float32 on the test split, through the device's inference code: the gate);
3. the old and the new Keras model are scored on the **original test split** (RUN's split
   manifest) and on the **field test set** (``DATA.field-test``): accuracy and per-class recall,
   written to ``<new run>/retrain-report.md`` with PNG figures and ``retrain-report.json``.

Exit status: 0 when the gate passed, 1 when it failed (see the report).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from training import runfolder
from training.config import build_config, read_config_file
from training.imageio import load_batch
from training.merge import default_field_test_dir, field_test_items
from training.splits import load_split, read_manifest

log = logging.getLogger(__name__)

CHUNK = 256


@dataclass
class RetrainOptions:
    name: str | None = None
    out: Path | None = None
    runs_dir: Path | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    field_test: Path | None = None
    bundles: Path | None = None
    variants: list[str] | None = None
    max_drop: float = 1.0
    convert: bool = True
    max_test_images: int | None = None


@dataclass
class Scores:
    """One model on one test set."""

    images: int
    accuracy: float | None
    recall: dict[str, float]  # per true label present in the set
    support: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "accuracy": self.accuracy,
            "recall": self.recall,
            "support": self.support,
        }


@dataclass
class RetrainResult:
    old_run: Path
    new_run: Path
    scores: dict[str, dict[str, Scores]]  # test set -> "old"/"new" -> Scores
    gate: Any = None  # conversion.gate.GateResult
    bundles: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None
    warm_start: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.gate is not None and not self.gate.passed else 0

    def summary_lines(self) -> list[str]:
        out = [f"new run: {self.new_run}"]
        for name, pair in self.scores.items():
            old, new = pair["old"], pair["new"]
            if old.accuracy is None:
                continue
            out.append(
                f"{name}: {old.images} images, accuracy {100 * old.accuracy:.2f}% -> "
                f"{100 * new.accuracy:.2f}% ({100 * (new.accuracy - old.accuracy):+.2f} pt)"
            )
        if self.gate is not None:
            out.append(f"gate of the new bundles ({self.bundles}): {self.gate.status}")
        out.append(f"report: {self.report}")
        out.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return out


def _config(old_run: Path, data_dir: Path, options: RetrainOptions):
    values = read_config_file(old_run / runfolder.CONFIG)
    epochs = options.epochs or int(values.get("epochs", 20))
    lr = options.learning_rate or float(values.get("learning_rate", 1e-3)) / 2
    overrides = {
        "epochs": epochs,
        "fine_tune_epochs": min(int(values.get("fine_tune_epochs", 0)), epochs),
        "learning_rate": lr,
        "manifest": None,  # DATA's own manifest: the merge put the field samples there
        "baselines": False,
    }
    values = {k: v for k, v in values.items() if k != "manifest"}
    return build_config(values, overrides, str(old_run / runfolder.CONFIG))


def _predict(model_path: Path, items: list[Path], size: tuple[int, int]) -> np.ndarray:
    import keras

    model = keras.models.load_model(model_path, compile=False)
    out = []
    for i in range(0, len(items), CHUNK):
        out.append(np.asarray(model.predict_on_batch(load_batch(items[i : i + CHUNK], *size))))
    return np.concatenate(out) if out else np.zeros((0, 0))


def score(
    model_path: Path, labels: list[str], size: tuple[int, int], items: list[tuple[Path, str]]
) -> Scores:
    """Accuracy and per-class recall of a Keras model on (path, true label) items; a true label
    the model does not know counts as wrong."""
    if not items:
        return Scores(0, None, {}, {})
    probs = _predict(model_path, [p for p, _ in items], size)
    predicted = [labels[i] for i in probs.argmax(axis=1)]
    truth = [lab for _, lab in items]
    right = np.array([p == t for p, t in zip(predicted, truth, strict=True)])
    support: dict[str, int] = {}
    hits: dict[str, int] = {}
    for t, ok in zip(truth, right, strict=True):
        support[t] = support.get(t, 0) + 1
        hits[t] = hits.get(t, 0) + int(ok)
    recall = {t: hits[t] / support[t] for t in sorted(support)}
    return Scores(len(items), float(right.mean()), recall, dict(sorted(support.items())))


def original_test_items(run: runfolder.RunInfo) -> list[tuple[Path, str]]:
    manifest = read_manifest(run.split_manifest)
    return [(p, manifest.labels[c]) for p, c in load_split(run.split_manifest)["test"]]


def retrain(old_run: Path, data_dir: Path, options: RetrainOptions | None = None) -> RetrainResult:
    from training.tfenv import import_tf
    from training.train import train

    options = options or RetrainOptions()
    start = time.perf_counter()
    old = runfolder.read_run(Path(old_run))
    data_dir = Path(data_dir).resolve()
    ft_dir = (options.field_test or default_field_test_dir(data_dir)).resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    runs_dir = options.runs_dir or old.path.resolve().parent
    new_dir = (
        options.out or runs_dir / (options.name or f"{old.path.name}-retrain-{stamp}")
    ).resolve()
    config = _config(old.path, data_dir, options)
    log.info(
        "retraining %s on %s: %d epoch(s) at learning rate %g", old.path, data_dir,
        config.epochs, config.learning_rate,
    )  # fmt: skip
    trained = train(data_dir, config, new_dir, init_from=old.path)
    seconds = {"train": time.perf_counter() - start}
    import_tf()
    new = runfolder.read_run(new_dir)

    t = time.perf_counter()
    sets = {"original test split": original_test_items(old)}
    field_items = field_test_items(ft_dir) if ft_dir.is_dir() else []
    if not field_items:
        log.warning("no field test set at %s: compare on the original test split only", ft_dir)
    sets["field test"] = field_items
    scores = {
        name: {
            "old": score(old.path / runfolder.MODEL, old.labels, old.size, items),
            "new": score(new.path / runfolder.MODEL, new.labels, new.size, items),
        }
        for name, items in sets.items()
    }
    seconds["compare"] = time.perf_counter() - t
    result = RetrainResult(
        old.path, new.path, scores, seconds=seconds, warm_start={"epochs": trained.epochs_run}
    )
    if options.convert:
        t = time.perf_counter()
        from conversion.pipeline import ConvertOptions, run_conversion
        from conversion.source import from_run

        conversion = run_conversion(
            from_run(new.path),
            ConvertOptions(
                variants=options.variants,
                out_dir=options.bundles,
                max_drop=options.max_drop,
                max_test_images=options.max_test_images,
            ),
        )
        result.gate, result.bundles = conversion.gate, conversion.out_dir
        seconds["convert and verify"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start
    from training.retrain_report import write_report

    result.report = write_report(result, data_dir, ft_dir)
    return result
