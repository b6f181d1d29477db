"""BlazeFace output decoding in numpy: SSD anchors, boxes and scores, weighted NMS.

Pure functions, no model here (``device.privacy.detector`` runs the network). They follow
MediaPipe's face detection graphs (``mediapipe/modules/face_detection/``): the anchors of its
``SsdAnchorsCalculator``, the decoding of its ``TensorsToDetectionsCalculator`` and the
``WEIGHTED`` algorithm of its ``NonMaxSuppressionCalculator``.

Coordinates are fractions of the detector's input square: ``x`` left to right, ``y`` top to
bottom. A box is ``[xmin, ymin, xmax, ymax]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NUM_COORDS = 16  # box centre x, y, width, height, then 6 keypoints (x, y)
NUM_KEYPOINTS = 6
SCORE_CLIP = 100.0  # MediaPipe's score_clipping_thresh
NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold for faces


@dataclass(frozen=True)
class AnchorSpec:
    """The ``SsdAnchorsCalculatorOptions`` of one BlazeFace model."""

    name: str
    input_size: int  # square input, pixels
    strides: tuple[int, ...]
    min_scale: float = 0.1484375
    max_scale: float = 0.75
    anchor_offset: float = 0.5
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = True

    @property
    def num_anchors(self) -> int:
        return len(ssd_anchors(self))


SHORT_RANGE = AnchorSpec("short_range", 128, (8, 16, 16, 16))
"""face_detection_short_range.tflite: 128x128, 896 anchors, faces within about 2 m."""
FULL_RANGE = AnchorSpec("full_range", 192, (4,), interpolated_scale_aspect_ratio=0.0)
"""face_detection_full_range(_sparse).tflite: 192x192, 2304 anchors, faces within about 5 m."""
SPECS = (SHORT_RANGE, FULL_RANGE)


def _scale(spec: AnchorSpec, index: int) -> float:
    n = len(spec.strides)
    if n == 1:
        return (spec.min_scale + spec.max_scale) * 0.5
    return spec.min_scale + (spec.max_scale - spec.min_scale) * index / (n - 1.0)


def ssd_anchors(spec: AnchorSpec) -> np.ndarray:
    """The anchors, ``(N, 4)`` float32 rows ``[x_center, y_center, width, height]``.

    Consecutive layers with the same stride share one feature map; each cell of it has one
    anchor per aspect ratio (plus an interpolated one) of each of those layers, in MediaPipe's
    order: row by row, cell by cell, anchor by anchor.
    """
    strides = spec.strides
    out: list[np.ndarray] = []
    layer = 0
    while layer < len(strides):
        sizes: list[tuple[float, float]] = []  # (width, height) of each anchor of a cell
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            scale = _scale(spec, last)
            for ratio in spec.aspect_ratios:
                sizes.append((scale * math.sqrt(ratio), scale / math.sqrt(ratio)))
            if spec.interpolated_scale_aspect_ratio > 0:
                following = 1.0 if last == len(strides) - 1 else _scale(spec, last + 1)
                interpolated = math.sqrt(scale * following)
                root = math.sqrt(spec.interpolated_scale_aspect_ratio)
                sizes.append((interpolated * root, interpolated / root))
            last += 1
        cells = math.ceil(spec.input_size / strides[layer])
        centres = (np.arange(cells, dtype=np.float64) + spec.anchor_offset) / cells
        ys, xs = np.meshgrid(centres, centres, indexing="ij")
        per_cell = len(sizes)
        layer_anchors = np.empty((cells, cells, per_cell, 4), dtype=np.float64)
        layer_anchors[..., 0] = xs[..., None]
        layer_anchors[..., 1] = ys[..., None]
        if spec.fixed_anchor_size:
            layer_anchors[..., 2:] = 1.0
        else:
            layer_anchors[..., 2:] = np.asarray(sizes)
        out.append(layer_anchors.reshape(-1, 4))
        layer = last
    return np.concatenate(out).astype(np.float32)


def spec_for(input_size: int, num_anchors: int) -> AnchorSpec | None:
    """The BlazeFace variant with this input size and anchor count, or None."""
    for spec in SPECS:
        if spec.input_size == input_size and spec.num_anchors == num_anchors:
            return spec
    return None


def sigmoid_scores(logits: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] from the raw logits (clipped to +-100 first, like MediaPipe)."""
    clipped = np.clip(logits.astype(np.float64).reshape(-1), -SCORE_CLIP, SCORE_CLIP)
    return 1.0 / (1.0 + np.exp(-clipped))  # float64: exp(100) overflows float32


def decode_boxes(raw: np.ndarray, anchors: np.ndarray, input_size: int) -> np.ndarray:
    """``(N, 16)`` regressions -> ``(N, 16)`` rows ``[xmin, ymin, xmax, ymax, kx0, ky0, ...]``.

    The box centre and size and the keypoints are offsets in input pixels relative to the
    anchor (x_scale = y_scale = w_scale = h_scale = the input size).
    """
    raw = raw.reshape(-1, NUM_COORDS).astype(np.float32)
    scale = float(input_size)
    ax, ay, aw, ah = (anchors[:, i : i + 1] for i in range(4))
    xc = raw[:, 0:1] / scale * aw + ax
    yc = raw[:, 1:2] / scale * ah + ay
    w = raw[:, 2:3] / scale * aw
    h = raw[:, 3:4] / scale * ah
    kx = raw[:, 4::2] / scale * aw + ax
    ky = raw[:, 5::2] / scale * ah + ay
    keypoints = np.stack([kx, ky], axis=-1).reshape(-1, 2 * NUM_KEYPOINTS)
    return np.concatenate([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2, keypoints], axis=1)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one ``[xmin, ymin, xmax, ymax]`` box with each of ``boxes``."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def weighted_nms(
    detections: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU
) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression.

    Take the best remaining detection and every remaining one that overlaps it by more than
    ``iou_threshold`` (itself included); the result is their score-weighted mean (box and
    keypoints) with the best one's score. Repeat on the rest. Returns ``(detections, scores)``,
    best first.
    """
    order = np.argsort(-scores, kind="stable")
    remaining = order
    kept_rows: list[np.ndarray] = []
    kept_scores: list[float] = []
    while remaining.size:
        best = remaining[0]
        overlap = iou(detections[best, :4], detections[remaining, :4])
        group = remaining[overlap > iou_threshold]
        if group.size == 0:  # a degenerate (zero-area) box overlaps nothing, not even itself
            group = remaining[:1]
        weights = scores[group][:, None]
        kept_rows.append((detections[group] * weights).sum(axis=0) / weights.sum())
        kept_scores.append(float(scores[best]))
        remaining = np.setdiff1d(remaining, group, assume_unique=True)
        remaining = remaining[np.argsort(-scores[remaining], kind="stable")]
    if not kept_rows:
        return np.zeros((0, detections.shape[1]), np.float32), np.zeros(0, np.float32)
    return np.stack(kept_rows).astype(np.float32), np.asarray(kept_scores, np.float32)


def candidates(
    raw_boxes: np.ndarray,
    raw_scores: np.ndarray,
    anchors: np.ndarray,
    input_size: int,
    min_score: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw model outputs -> the decoded anchors scoring at least ``min_score`` (MediaPipe's
    min_score_thresh), before non-maximum suppression: ``(rows (K, 16), scores (K,))``."""
    scores = sigmoid_scores(raw_scores)
    if scores.shape[0] != anchors.shape[0]:
        raise ValueError(f"{scores.shape[0]} scores for {anchors.shape[0]} anchors")
    keep = np.flatnonzero(scores >= min_score)
    boxes = decode_boxes(raw_boxes.reshape(-1, NUM_COORDS)[keep], anchors[keep], input_size)
    return boxes, scores[keep]


def detect(
    raw_boxes: np.ndarray,
    raw_scores: np.ndarray,
    anchors: np.ndarray,
    input_size: int,
    min_score: float,
    iou_threshold: float = NMS_IOU,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw model outputs -> faces: ``(rows (K, 16), scores (K,))`` after weighted NMS."""
    boxes, scores = candidates(raw_boxes, raw_scores, anchors, input_size, min_score)
    return weighted_nms(boxes, scores, iou_threshold)


def unletterbox(detections: np.ndarray, pad: Sequence[float]) -> np.ndarray:
    """Map coordinates from the padded input square back to the image (MediaPipe's
    DetectionLetterboxRemovalCalculator); ``pad`` = (left, top, right, bottom) fractions."""
    left, top, right, bottom = pad
    out = detections.copy()
    out[:, 0::2] = (out[:, 0::2] - left) / (1.0 - left - right)
    out[:, 1::2] = (out[:, 1::2] - top) / (1.0 - top - bottom)
    return out


def tiles(width: int, height: int, size: int, overlap: float = 1 / 3) -> list[tuple[int, int, int]]:
    """Square tiles ``(x, y, side)`` covering a ``width`` x ``height`` image, neighbours
    overlapping by ``overlap`` of a side (so a face up to that fraction of a side lies wholly
    inside one tile); the last row and column end at the image's edge. Empty when ``size``
    is not smaller than the image's longer side (the whole image is one tile then); a side
    is at most the image's shorter side."""
    if size >= max(width, height):
        return []
    side = min(size, width, height)
    step = max(1, round(side * (1 - overlap)))

    def starts(extent: int) -> list[int]:
        last = extent - side
        out = list(range(0, last, step))
        return [*out, last]

    return [(x, y, side) for y in starts(height) for x in starts(width)]
