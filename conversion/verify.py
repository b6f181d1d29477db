"""Running every bundle on the test images through the device's own inference code.

Each bundle is opened with ``device.classifier.Classifier`` — the same model loading,
preprocessing (resize per the manifest, quantization folding) and postprocessing as on the Pi.
Images are decoded once and fed to every variant in turn.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conversion.data import Item
from conversion.errors import ConversionError
from device.classifier import Classifier, InferenceOptions
from device.errors import EdgeTPUError, SourceError
from device.manifest import MODEL_FILE
from device.postprocess import scores_from_output
from device.preprocess import load_image

log = logging.getLogger(__name__)


@dataclass
class VariantEval:
    """Predictions of one variant on the test images (or why it could not run here)."""

    variant: str
    bundle: Path
    size_bytes: int
    predictions: np.ndarray | None = None
    latency_ms: float | None = None
    backend: str | None = None
    skipped: str | None = None


@dataclass
class Evaluation:
    y_true: np.ndarray
    variants: dict[str, VariantEval]
    unreadable: int = 0


def _open(variant: str, bundle: Path, threads: int | None) -> Classifier:
    options = InferenceOptions(threads=threads, edgetpu=variant == "edgetpu")
    return Classifier.open(bundle, options=options)


def evaluate(
    bundles: dict[str, Path], items: Sequence[Item], threads: int | None = None
) -> Evaluation:
    """Top-1 predictions and mean inference time of each bundle on ``items``."""
    if not items:
        raise ConversionError(
            "no test images to verify on",
            "the split has no test images: pass --data DIR with a test split",
        )
    evals: dict[str, VariantEval] = {}
    classifiers: dict[str, Classifier] = {}
    for variant, bundle in bundles.items():
        size = (bundle / MODEL_FILE).stat().st_size
        evals[variant] = VariantEval(variant, bundle, size)
        try:
            clf = _open(variant, bundle, threads)
        except EdgeTPUError as exc:
            evals[variant].skipped = exc.message
            log.info("%s not verified here: %s", variant, exc.message)
            continue
        clf.backend.run(np.zeros_like(clf.preprocessor.new_buffer()))  # warm-up, not timed
        classifiers[variant] = clf
        evals[variant].backend = clf.backend_name

    y_true: list[int] = []
    preds: dict[str, list[int]] = {v: [] for v in classifiers}
    times: dict[str, list[float]] = {v: [] for v in classifiers}
    unreadable = 0
    for path, label in items:
        try:
            image = load_image(path)
        except SourceError as exc:
            log.warning("verification: skipping %s (%s)", path, exc.message)
            unreadable += 1
            continue
        y_true.append(label)
        for variant, clf in classifiers.items():
            raw, ms = clf.backend.run(clf.prepare(image))
            out = clf.backend.output
            scores = scores_from_output(raw, out.scale, out.zero_point)
            preds[variant].append(int(np.argmax(scores)))
            times[variant].append(ms)
    if not y_true:
        raise ConversionError("none of the test images could be read")
    for variant in classifiers:
        evals[variant].predictions = np.asarray(preds[variant], dtype=np.int64)
        evals[variant].latency_ms = float(np.mean(times[variant]))
    log.info("verified %d variant(s) on %d test images", len(classifiers), len(y_true))
    return Evaluation(np.asarray(y_true, dtype=np.int64), evals, unreadable)
