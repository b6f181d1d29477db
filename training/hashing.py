"""Content hashes (exact identity) and perceptual fingerprints (near-duplicates)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

_CHUNK = 1 << 20
THUMB_SIZE = 16


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def dataset_hash(content_hashes: Iterable[str]) -> str:
    """sha256 over the sorted content hashes: identifies a dataset's images, whatever their names."""
    h = hashlib.sha256()
    for digest in sorted(content_hashes):
        h.update(digest.encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()


def keyed_order(content_hash: str, seed: int) -> str:
    """A per-image pseudo-random but reproducible sort key, independent of the other images."""
    return hashlib.sha256(f"{seed}:{content_hash}".encode("ascii")).hexdigest()


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """A zero-mean, unit-norm 16x16 grayscale thumbnail; dot products are correlations."""
    t = cv2.resize(gray.astype(np.float32), (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA)
    t = t.ravel()
    t -= t.mean()
    norm = float(np.linalg.norm(t))
    return t / norm if norm > 0 else t


def hamming_matrix(block: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Hamming distances between 64-bit hashes: (len(block), len(hashes)) uint8."""
    xor = block[:, None] ^ hashes[None, :]
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(xor).astype(np.uint8)
    # numpy 1.x: count the set bits of the 8 bytes of each 64-bit value
    as_bytes = np.ascontiguousarray(xor).view(np.uint8).reshape(*xor.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1, dtype=np.uint8)
