"""Writing model bundles: ``model.tflite`` + ``labels.txt`` + ``model.json`` (DESIGN.md).

The manifest is what ``device.model.load_bundle`` reads (name, version, variant, input,
sha256) plus what a user needs to trust the file: quantization parameters, labels, source run
and dataset hash, and the verification figures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from device.model import InputSpec

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def input_json(spec: InputSpec, height: int, width: int) -> dict[str, Any]:
    return {
        "height": height,
        "width": width,
        "color": spec.color,
        "resize": spec.resize,
        "crop": spec.crop,
        "mean": list(spec.mean) if spec.mean is not None else [0.0, 0.0, 0.0],
        "std": list(spec.std) if spec.std is not None else [1.0, 1.0, 1.0],
    }


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_bundle(
    folder: Path, model: bytes, labels: Sequence[str], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write a bundle folder; return the manifest as written (with ``sha256``)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        **manifest,
        "sha256": hashlib.sha256(model).hexdigest(),
        "size_bytes": len(model),
        "num_classes": len(labels),
        "labels": list(labels),
        "manifest_version": MANIFEST_VERSION,
    }
    _write_atomic(folder / "model.tflite", model)
    _write_atomic(folder / "labels.txt", ("\n".join(labels) + "\n").encode("utf-8"))
    write_manifest(folder, manifest)
    log.debug("wrote bundle %s (%d bytes)", folder, len(model))
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    _write_atomic(folder / "model.json", (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))


def update_manifest(folder: Path, **fields: Any) -> dict[str, Any]:
    manifest = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    manifest.update(fields)
    write_manifest(folder, manifest)
    return manifest
