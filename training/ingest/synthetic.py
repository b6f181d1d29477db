"""Synthetic field samples for the benchmark and the tests: a JPEG and its sidecar.

:func:`make_jpeg` encodes a textured frame of about the size asked for; :func:`variant` makes
distinct samples out of one JPEG at no cost (a COM segment after SOI carries a counter, so every
variant is a different, valid JPEG with its own content hash).
"""

from __future__ import annotations

import struct
from datetime import datetime, timezone

import cv2
import numpy as np

from device.samples import SCHEMA, sample_id


def make_jpeg(
    width: int = 640, height: int = 480, target_bytes: int = 50_000, seed: int = 0
) -> bytes:
    """A JPEG of ``width`` x ``height`` of about ``target_bytes`` (the closest quality)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) % 256)], axis=-1)
    noise = rng.integers(0, 48, size=(height, width, 3))
    frame = np.clip(base + noise, 0, 255).astype(np.uint8)
    best = b""
    for quality in range(5, 101):
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        if not best or abs(len(buf) - target_bytes) < abs(len(best) - target_bytes):
            best = buf.tobytes()
        if len(buf) > target_bytes:
            break
    return best


def variant(jpeg: bytes, n: int) -> bytes:
    """``jpeg`` with a comment segment holding ``n``: a distinct valid JPEG per ``n``."""
    comment = f"edgecam-synthetic {n}".encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


def make_meta(jpeg: bytes, device: str = "pi-test", camera: str = "front", **fields) -> dict:
    """A valid edgecam.sample/1 sidecar for ``jpeg``; ``fields`` override any key."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    meta = {
        "schema": SCHEMA,
        "sample_id": sample_id(jpeg),
        "device": device,
        "camera": camera,
        "ts": now,
        "model": {"name": "mobilenet_v2", "version": "1", "sha256": "0" * 64, "variant": "int8"},
        "top": [
            {"label": "cat", "index": 1, "score": 0.41},
            {"label": "dog", "index": 2, "score": 0.38},
        ],
        "policy": "small_margin",
    }
    meta.update(fields)
    return meta
