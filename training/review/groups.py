"""Grouping similar samples and marking near-duplicates of reviewed ones (pure numpy).

Groups: with embeddings of the run's model (the pooled features before the classifier),
samples whose cosine similarity to a group's first member is at least ``min_similarity`` join
that group (leader clustering, oldest first: stable as samples arrive). Without a model, the
16x16 grayscale thumbnails are compared the same way (their dot product is a correlation), which
groups bursts of the same scene. A reviewer accepts or relabels a group in one action.

Near-duplicates: a sample whose pHash is within ``max_distance`` bits of an accepted sample's
AND whose thumbnail correlates at least ``min_correlation`` with it (the same test as
``edgecam-train check``, a little looser for JPEG re-encoding) is marked with that sample's key
and reviewed label.
"""

from __future__ import annotations

import logging

import numpy as np

from training.hashing import hamming_matrix
from training.review.db import SampleRow

log = logging.getLogger(__name__)

MIN_SIMILARITY = 0.92  # cosine of embeddings
MIN_THUMB_CORRELATION = 0.9  # grouping without a model
NEAR_DISTANCE = 6  # pHash bits
NEAR_CORRELATION = 0.98
MAX_GROUP = 60


def _features(rows: list[SampleRow]) -> tuple[np.ndarray | None, str]:
    models = {r.embedding_model for r in rows}
    if (
        rows
        and len(models) == 1
        and None not in models
        and all(r.embedding is not None for r in rows)
    ):
        x = np.stack([r.embedding for r in rows]).astype(np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(norms, 1e-12), "embedding"
    if rows and all(r.thumb is not None for r in rows):
        return np.stack([r.thumb for r in rows]).astype(np.float32), "thumbnail"
    return None, "none"


def assign_groups(
    rows: list[SampleRow], min_similarity: float | None = None, max_group: int = MAX_GROUP
) -> str:
    """Set ``row.group`` (the key of the group's first member; None for a sample alone) and
    return what was compared: ``embedding``, ``thumbnail`` or ``none``."""
    x, kind = _features(rows)
    for r in rows:
        r.group = None
    if x is None:
        return kind
    threshold = min_similarity or (MIN_SIMILARITY if kind == "embedding" else MIN_THUMB_CORRELATION)
    leaders: list[int] = []
    members: dict[int, list[int]] = {}
    for i in range(len(rows)):
        if leaders:
            sims = x[leaders] @ x[i]
            order = np.argsort(-sims)
            home = next(
                (leaders[j] for j in order if sims[j] >= threshold
                 and len(members[leaders[j]]) < max_group),
                None,
            )  # fmt: skip
            if home is not None:
                members[home].append(i)
                continue
        leaders.append(i)
        members[i] = [i]
    for leader, group in members.items():
        if len(group) > 1:
            for i in group:
                rows[i].group = rows[leader].key
    return kind


def near_candidates(
    rows: list[SampleRow], keys: list[str], phashes: np.ndarray, max_distance: int = NEAR_DISTANCE
) -> list[str]:
    """The keys (of ``keys``/``phashes``, the accepted samples) within ``max_distance`` bits of
    a row's pHash: the only reviewed samples whose thumbnails need to be read."""
    todo = np.array([r.phash for r in rows if r.phash is not None], dtype=np.uint64)
    if not len(todo) or not len(phashes):
        return []
    close = (hamming_matrix(todo, phashes) <= max_distance).any(axis=0)
    return [k for k, c in zip(keys, close, strict=True) if c]


def mark_near_duplicates(
    rows: list[SampleRow],
    reviewed: list[SampleRow],
    max_distance: int = NEAR_DISTANCE,
    min_correlation: float = NEAR_CORRELATION,
) -> None:
    """Set ``row.near`` = {key, label, distance} for rows that nearly duplicate a reviewed one."""
    ref = [r for r in reviewed if r.phash is not None and r.thumb is not None]
    todo = [r for r in rows if r.phash is not None and r.thumb is not None]
    if not ref or not todo:
        return
    ref_hash = np.array([r.phash for r in ref], dtype=np.uint64)
    ref_thumb = np.stack([r.thumb for r in ref])
    dist = hamming_matrix(np.array([r.phash for r in todo], dtype=np.uint64), ref_hash)
    corr = np.stack([r.thumb for r in todo]) @ ref_thumb.T
    for i, row in enumerate(todo):
        ok = (dist[i] <= max_distance) & (corr[i] >= min_correlation)
        ok &= np.array([r.key != row.key for r in ref])
        if not ok.any():
            continue
        j = int(np.argmax(np.where(ok, corr[i], -2.0)))
        row.near = {"key": ref[j].key, "label": ref[j].final_label, "distance": int(dist[i, j])}
