"""``edgecam-train evaluate RUN``: score the best model on the test split; write the report.

Writes into the run folder: ``report.json`` (keys: accuracy, top_k_accuracy, macro_f1,
per_class {label: {precision, recall, f1, support}}, confusion_matrix, labels, baselines
{name: accuracy} when computed, worst_mistakes, ...), ``predictions.csv``,
``confusion_matrix.csv`` / ``.png``, ``training_curves.png`` and ``worst_mistakes.png``.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from training import figures, metrics, runfolder
from training.baselines import hog_features, pixel_features, run_baselines
from training.errors import RunError
from training.imageio import decode_rgb, load_batch, resize_rgb
from training.splits import load_split
from training.tfenv import import_tf

log = logging.getLogger(__name__)

CHUNK = 256
WORST = 24


@dataclass
class Features:
    probs: np.ndarray
    pixels: np.ndarray | None = None
    hog: np.ndarray | None = None
    embeddings: np.ndarray | None = None


def _chunks(items: list[tuple[Path, int]]) -> Iterator[list[tuple[Path, int]]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def _features(
    model: Any, items: list[tuple[Path, int]], size: tuple[int, int], extra: bool
) -> Features:
    """Run the model over images in chunks; with ``extra`` keep baseline features too."""
    import keras

    outputs = [model.output]
    if extra:
        outputs.append(model.get_layer("embedding").output)
    runner = keras.Model(model.inputs, outputs)
    probs, emb, pix, hogs = [], [], [], []
    for chunk in _chunks(items):
        images = load_batch([p for p, _ in chunk], *size)
        out = runner.predict_on_batch(images)
        if extra:
            probs.append(np.asarray(out[0]))
            emb.append(np.asarray(out[1], dtype=np.float32))
            pix.append(pixel_features(images))
            hogs.append(hog_features(images))
        else:
            probs.append(np.asarray(out[0] if isinstance(out, list) else out))
    if not extra:
        return Features(np.concatenate(probs))
    return Features(
        np.concatenate(probs), np.concatenate(pix), np.concatenate(hogs), np.concatenate(emb)
    )


def evaluate_run(run_dir: Path, baselines: bool = False, top_k: int = 5) -> dict[str, Any]:
    """Evaluate a finished run on its test split and write the report files."""
    import_tf()
    import keras

    run = runfolder.read_run(run_dir)
    split = load_split(run.split_manifest)
    test = split["test"]
    if not test:
        raise RunError(f"the split manifest {run.split_manifest} has no test images")
    missing = [p for p, _ in test if not p.is_file()]
    if missing:
        raise RunError(
            f"{len(missing)} test image(s) are missing, e.g. {missing[0]} "
            "(the data folder moved or changed since training)"
        )
    labels = run.labels
    start = time.perf_counter()
    model = keras.models.load_model(run_dir / runfolder.MODEL, compile=False)
    test_f = _features(model, test, run.size, extra=baselines)
    y_true = np.array([c for _, c in test], dtype=np.int64)
    y_pred = test_f.probs.argmax(axis=1)
    report = build_report(y_true, test_f.probs, labels, top_k)
    if baselines:
        train_items = split["train"] + split["val"]
        train_f = _features(model, train_items, run.size, extra=True)
        ytr = np.array([c for _, c in train_items], dtype=np.int64)
        feats = ("pixels", "hog", "embeddings")
        report["baselines"] = run_baselines(
            {k: getattr(train_f, k) for k in feats},
            {k: getattr(test_f, k) for k in feats},
            ytr,
            y_true,
        )
        report["baselines_note"] = (
            "fitted on train+val, scored on test; k-NN k=5, linear SVM on standardised features; "
            "pixels and HOG from the image shrunk to at most 32 px"
        )
    report["run"] = run.record.name
    report["model"] = str(run_dir / runfolder.MODEL)
    report["test_images"] = len(test)
    report["evaluated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["eval_seconds"] = round(time.perf_counter() - start, 2)
    report["worst_mistakes"] = _write_outputs(
        run_dir, test, y_true, y_pred, test_f.probs, labels, report
    )
    runfolder.write_json(run_dir / runfolder.REPORT, report)
    log.info(
        "test accuracy %.4f, macro-F1 %.4f on %d images",
        report["accuracy"],
        report["macro_f1"],
        len(test),
    )
    return report


def build_report(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str], top_k: int = 5
) -> dict[str, Any]:
    """The metric part of report.json from true labels and predicted scores."""
    n = len(labels)
    y_pred = probs.argmax(axis=1)
    cm = metrics.confusion_matrix(y_true, y_pred, n)
    classes = metrics.per_class(cm)
    ks = sorted({k for k in (1, 3, top_k) if k < n} | {min(top_k, n)})
    return {
        "accuracy": metrics.accuracy_from_cm(cm),
        "top_k_accuracy": {str(k): metrics.top_k_accuracy(y_true, probs, k) for k in ks},
        "macro_f1": metrics.macro_f1(classes),
        "per_class": {
            label: {"precision": c.precision, "recall": c.recall, "f1": c.f1, "support": c.support}
            for label, c in zip(labels, classes, strict=True)
        },
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
    }


def _write_outputs(
    run_dir: Path,
    test: list[tuple[Path, int]],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    report: dict[str, Any],
) -> list[dict[str, Any]]:
    with (run_dir / "predictions.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "predicted", "score", "true_index", "predicted_index"])
        for (path, _), t, p, row in zip(test, y_true, y_pred, probs, strict=True):
            w.writerow([str(path), labels[t], labels[p], f"{row[p]:.6f}", int(t), int(p)])
    cm = np.array(report["confusion_matrix"])
    with (run_dir / "confusion_matrix.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *labels])
        for label, row in zip(labels, cm, strict=True):
            w.writerow([label, *row.tolist()])
    figures.confusion_matrix_png(cm, labels, run_dir / "confusion_matrix.png")
    history = run_dir / runfolder.HISTORY
    if history.is_file():
        figures.training_curves_png(
            runfolder.read_json(history)["epochs"], run_dir / "training_curves.png"
        )
    wrong = np.nonzero(y_true != y_pred)[0]
    worst = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:WORST]
    mistakes = [
        {
            "path": str(test[i][0]),
            "true": labels[y_true[i]],
            "predicted": labels[y_pred[i]],
            "score": float(probs[i, y_pred[i]]),
            "true_score": float(probs[i, y_true[i]]),
        }
        for i in worst
    ]
    images = [_thumb(test[i][0]) for i in worst]
    titles = [f"true {m['true']}\npred {m['predicted']} {m['score']:.2f}" for m in mistakes]
    figures.mistakes_png(images, titles, run_dir / "worst_mistakes.png")
    return mistakes


def _thumb(path: Path, side: int = 160) -> np.ndarray:
    """The image as the user sees it, scaled to fit a gallery cell."""
    img = decode_rgb(path.read_bytes())
    scale = side / max(img.shape[:2])
    h, w = max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))
    return resize_rgb(img, h, w)
