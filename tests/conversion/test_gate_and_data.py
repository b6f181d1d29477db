"""Pure parts of the conversion: metrics, the gate decision and message, calibration sampling."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conversion.data import stratified_sample
from conversion.errors import ConversionError
from conversion.gate import apply_gate
from conversion.metrics import accuracy, macro_f1, per_class_recall
from conversion.pipeline import resolve_variants
from conversion.verify import Evaluation, VariantEval


def test_macro_f1_matches_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 5, 300))
    assert macro_f1(y, p, 5) == pytest.approx(sklearn_metrics.f1_score(y, p, average="macro"))
    assert accuracy(y, p) == pytest.approx(sklearn_metrics.accuracy_score(y, p))
    recall = per_class_recall(y, p, 6)
    assert np.isnan(recall[5])
    assert recall[:5] == pytest.approx(sklearn_metrics.recall_score(y, p, average=None))


def _evaluation(y: np.ndarray, **preds: np.ndarray) -> Evaluation:
    variants = {
        name: VariantEval(name, Path(name), 1000, predictions=p, latency_ms=1.0)
        for name, p in preds.items()
    }
    return Evaluation(y, variants)


def test_gate_fails_when_a_variant_drops_more_than_allowed_and_names_the_classes() -> None:
    y = np.repeat(np.arange(4), 25)
    ref = y.copy()
    good = y.copy()
    good[0] = 1  # one error: -1.0 point, allowed
    bad = y.copy()
    bad[y == 2] = 3  # class 'c' collapses
    gate = apply_gate(
        _evaluation(y, float32=ref, float16=good, int8=bad), ["a", "b", "c", "d"], max_drop=1.0
    )
    assert not gate.passed
    assert gate.figures["float32"].status == "reference"
    assert gate.figures["float16"].status == "passed"
    assert gate.figures["int8"].status == "failed"
    assert gate.figures["int8"].drop_points == pytest.approx(25.0)
    assert gate.figures["int8"].worst_classes[0].label == "c"
    (message,) = gate.failures
    assert "int8 lost 25.0 accuracy points against float32" in message
    assert "100.0% -> 75.0%" in message
    assert "'c' 100.0% -> 0.0%" in message


def test_gate_passes_within_the_allowed_drop_and_skips_unverifiable_variants() -> None:
    y = np.repeat(np.arange(2), 50)
    ev = _evaluation(y, float32=y.copy(), int8=y.copy())
    ev.variants["edgetpu"] = VariantEval("edgetpu", Path("e"), 10, skipped="no Edge TPU here")
    gate = apply_gate(ev, ["a", "b"], max_drop=1.0)
    assert gate.passed
    assert gate.figures["edgetpu"].status == "not verified"
    assert gate.figures["edgetpu"].note == "no Edge TPU here"
    assert gate.figures["int8"].agreement == 1.0


def test_stratified_sample_takes_classes_in_turn_and_is_deterministic() -> None:
    items = [(Path(f"c{c}/{i}.png"), c) for c in range(3) for i in range(c * 10 + 2)]
    sample = stratified_sample(items, 9, seed=3)
    assert Counter(label for _, label in sample) == {0: 2, 1: 4, 2: 3}  # class 0 has only 2
    assert sample == stratified_sample(items, 9, seed=3)
    assert len(stratified_sample(items, 10_000)) == len(items)


def test_variants_selection() -> None:
    assert resolve_variants(None) == (["float32", "float16", "dynamic", "int8", "edgetpu"], False)
    assert resolve_variants(["edgetpu"]) == (["int8", "edgetpu"], True)
    with pytest.raises(ConversionError, match="unknown variant"):
        resolve_variants(["int4"])
