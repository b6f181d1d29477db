"""The verification gate: every variant against the float32 reference, on the same images.

A variant fails when its accuracy is more than ``max_drop`` percentage points below float32's.
The report names the classes whose recall dropped most, which is where a bad calibration or an
op that quantizes badly shows first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conversion.metrics import accuracy, agreement, macro_f1, per_class_recall
from conversion.verify import Evaluation

log = logging.getLogger(__name__)

REFERENCE = "float32"


@dataclass(frozen=True)
class ClassDrop:
    label: str
    reference_recall: float
    recall: float

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.reference_recall - self.recall)

    def describe(self) -> str:
        return (
            f"'{self.label}' {100 * self.reference_recall:.1f}% -> {100 * self.recall:.1f}% "
            f"(-{self.drop_points:.1f})"
        )


@dataclass
class VariantFigures:
    variant: str
    size_bytes: int
    accuracy: float | None = None
    macro_f1: float | None = None
    agreement: float | None = None
    latency_ms: float | None = None
    drop_points: float | None = None
    status: str = "not verified"  # reference | passed | failed | not verified
    note: str | None = None
    worst_classes: list[ClassDrop] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        def rnd(x: float | None, n: int) -> float | None:
            return None if x is None else round(x, n)

        return {
            "accuracy": rnd(self.accuracy, 5),
            "macro_f1": rnd(self.macro_f1, 5),
            "agreement": rnd(self.agreement, 5),
            "size_bytes": self.size_bytes,
            "latency_ms": rnd(self.latency_ms, 4),
            "accuracy_drop_points": rnd(self.drop_points, 3),
            "gate": self.status,
            "note": self.note,
            "classes_that_lost_most": [
                {
                    "label": c.label,
                    "reference_recall": round(c.reference_recall, 5),
                    "recall": round(c.recall, 5),
                }
                for c in self.worst_classes
            ],
        }


@dataclass
class GateResult:
    passed: bool
    max_drop: float
    reference: str
    figures: dict[str, VariantFigures]
    failures: list[str]
    test_images: int

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"


def _worst_classes(
    y_true: np.ndarray, ref: np.ndarray, pred: np.ndarray, labels: Sequence[str], k: int = 3
) -> list[ClassDrop]:
    r_ref = per_class_recall(y_true, ref, len(labels))
    r_var = per_class_recall(y_true, pred, len(labels))
    drops = [
        ClassDrop(labels[c], float(r_ref[c]), float(r_var[c]))
        for c in range(len(labels))
        if not np.isnan(r_ref[c]) and r_ref[c] > r_var[c]
    ]
    drops.sort(key=lambda d: -d.drop_points)
    return drops[:k]


def apply_gate(evaluation: Evaluation, labels: Sequence[str], max_drop: float = 1.0) -> GateResult:
    """Figures per variant and the gate decision (``max_drop`` in accuracy points)."""
    y = evaluation.y_true
    ref_eval = evaluation.variants[REFERENCE]
    if ref_eval.predictions is None:
        raise RuntimeError("the float32 reference did not run")
    ref_pred = ref_eval.predictions
    ref_acc = accuracy(y, ref_pred)
    figures: dict[str, VariantFigures] = {}
    failures: list[str] = []
    for variant, ev in evaluation.variants.items():
        fig = VariantFigures(variant, ev.size_bytes)
        figures[variant] = fig
        if ev.predictions is None:
            fig.note = ev.skipped
            continue
        fig.accuracy = accuracy(y, ev.predictions)
        fig.macro_f1 = macro_f1(y, ev.predictions, len(labels))
        fig.agreement = agreement(ref_pred, ev.predictions)
        fig.latency_ms = ev.latency_ms
        fig.drop_points = 100.0 * (ref_acc - fig.accuracy)
        if variant == REFERENCE:
            fig.status = "reference"
            continue
        fig.worst_classes = _worst_classes(y, ref_pred, ev.predictions, labels)
        if fig.drop_points > max_drop + 1e-9:  # float noise: 100 * (1.0 - 0.99) > 1.0
            fig.status = "failed"
            worst = ", ".join(c.describe() for c in fig.worst_classes) or "none in particular"
            failures.append(
                f"{variant} lost {fig.drop_points:.1f} accuracy points against {REFERENCE} "
                f"({100 * ref_acc:.1f}% -> {100 * fig.accuracy:.1f}%, allowed: {max_drop:.1f}); "
                f"classes that lost most: {worst}"
            )
        else:
            fig.status = "passed"
    for message in failures:
        log.warning("gate: %s", message)
    return GateResult(not failures, max_drop, REFERENCE, figures, failures, len(y))
