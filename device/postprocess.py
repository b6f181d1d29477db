"""Raw model output -> scored classes. Pure numpy: testable without a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Class:
    """One scored class (as in pycoral.adapters.classify.Class, plus its label)."""

    index: int
    label: str
    score: float

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "index": self.index, "score": round(self.score, 5)}


def dequantize(raw: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Real values of a (possibly quantised) output tensor as float32."""
    if scale == 0.0:
        return raw.astype(np.float32, copy=False)
    return (raw.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def is_probabilities(values: np.ndarray, tolerance: float = 0.05) -> bool:
    """True when ``values`` already look like a probability distribution."""
    if values.size == 0:
        return True
    return bool(
        values.min() >= -1e-6
        and values.max() <= 1.0 + 1e-6
        and abs(values.sum() - 1.0) <= tolerance
    )


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = values - values.max()
    exp = np.exp(shifted)
    return exp / exp.sum()


def quantized_range_is_unit(dtype: np.dtype, scale: float, zero_point: int) -> bool:
    """True when a quantised tensor can only hold values in [0, 1] (a softmax output).

    Quantised softmax outputs (scale 1/256, zero point 0) lose the small probabilities to
    rounding, so their sum can be well below 1: decide from the tensor type, not the values.
    """
    if scale == 0.0 or not np.issubdtype(dtype, np.integer):
        return False
    info = np.iinfo(dtype)
    low, high = (info.min - zero_point) * scale, (info.max - zero_point) * scale
    return low >= -1e-6 and high <= 1.0 + 1e-6


def scores_from_output(raw: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Scores in [0, 1]: dequantize, then softmax when the output is logits."""
    values = dequantize(raw, scale, zero_point)
    if quantized_range_is_unit(raw.dtype, scale, zero_point) or is_probabilities(values):
        return np.clip(values, 0.0, 1.0)
    return softmax(values.astype(np.float64)).astype(np.float32)


def top_k(scores: np.ndarray, k: int, min_score: float = 0.0) -> list[tuple[int, float]]:
    """Indices and scores of the k best classes, best first, at least ``min_score``."""
    k = max(1, min(k, scores.size))
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return [(int(i), float(scores[i])) for i in idx if scores[i] >= min_score]


def classify(
    raw: np.ndarray,
    scale: float,
    zero_point: int,
    labels: dict[int, str],
    k: int = 3,
    min_score: float = 0.0,
) -> list[Class]:
    scores = scores_from_output(raw, scale, zero_point)
    return [Class(i, labels.get(i, str(i)), s) for i, s in top_k(scores, k, min_score)]
