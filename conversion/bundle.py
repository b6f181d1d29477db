"""Writing model bundles: ``model.tflite`` + ``labels.txt`` + ``model.json``.

The contract (file names, the typed ``Manifest``) is ``device.manifest``: the device reads what
this module writes through the same code. Conversion adds what a user needs to trust the file
(quantization parameters, labels, source run and dataset hash, verification figures).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from device.manifest import (
    LABELS_FILE,
    MANIFEST_FILE,
    MANIFEST_VERSION,
    MODEL_FILE,
    Manifest,
    read_manifest,
    write_atomic,
    write_manifest,
)

log = logging.getLogger(__name__)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_bundle(folder: Path) -> bool:
    """True when ``folder`` holds a bundle (or the remains of one)."""
    return (folder / MANIFEST_FILE).exists() or (folder / MODEL_FILE).exists()


def write_bundle(folder: Path, model: bytes, labels: Sequence[str], manifest: Manifest) -> Manifest:
    """Write a bundle folder; return the manifest as written (with ``sha256`` and labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = replace(
        manifest,
        sha256=hashlib.sha256(model).hexdigest(),
        size_bytes=len(model),
        num_classes=len(labels),
        labels=tuple(labels),
        manifest_version=MANIFEST_VERSION,
    )
    write_atomic(folder / MODEL_FILE, model)
    write_atomic(folder / LABELS_FILE, ("\n".join(labels) + "\n").encode("utf-8"))
    write_manifest(folder, manifest)
    log.debug("wrote bundle %s (%d bytes)", folder, len(model))
    return manifest


def update_manifest(folder: Path, **changes: Any) -> Manifest:
    """Read a bundle's manifest, change the given fields, write it back."""
    manifest = replace(read_manifest(folder), **changes)
    write_manifest(folder, manifest)
    return manifest
