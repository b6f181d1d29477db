"""Grouping exact duplicates (content hash) and near-duplicates (perceptual hash + thumbnails).

Near-duplicate = perceptual hash (pHash, 64 bits) within ``max_distance`` bits AND correlation
of the 16x16 grayscale thumbnails at least ``min_correlation``. The pHash alone is too coarse
for tiny or very uniform images (two different handwritten "1"s share a pHash); the thumbnail
correlation confirms that the pixels really match (a resized, re-encoded copy scores > 0.99).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from training.hashing import hamming_matrix

log = logging.getLogger(__name__)

_BLOCK = 1024


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def exact_groups(hashes: list[str]) -> list[list[int]]:
    """Indices sharing a content hash, groups of two or more."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        by_hash[h].append(i)
    return [g for g in by_hash.values() if len(g) > 1]


def near_groups(
    phashes: np.ndarray,
    thumbs: np.ndarray,
    content: list[str],
    max_distance: int = 6,
    min_correlation: float = 0.993,
) -> list[list[int]]:
    """Groups (two or more indices) of near-identical images that are not byte-identical.

    ``phashes``: (N,) uint64; ``thumbs``: (N, 256) float32 unit-norm thumbnails; ``content``:
    the content hashes (pairs of identical files are left to :func:`exact_groups`).
    """
    n = len(phashes)
    uf = _UnionFind(n)
    linked = False
    for start in range(0, n, _BLOCK):
        block = phashes[start : start + _BLOCK]
        dist = hamming_matrix(block, phashes)
        rows, cols = np.nonzero(dist <= max_distance)
        keep = cols > rows + start  # each unordered pair once, no self-pairs
        rows, cols = rows[keep] + start, cols[keep]
        if rows.size == 0:
            continue
        corr = np.einsum("ij,ij->i", thumbs[rows], thumbs[cols])
        for i, j in zip(rows[corr >= min_correlation], cols[corr >= min_correlation], strict=True):
            if content[i] != content[j]:
                uf.union(int(i), int(j))
                linked = True
    if not linked:
        return []
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[uf.find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]
