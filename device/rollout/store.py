"""The model store on a device: ``<state_dir>/models/<sha12>/`` bundles, ``current`` and
``previous`` links (docs/fleet.md, "State on the device").

::

    models/
      3f1c0a9e7b21/      model.tflite, labels.txt, model.json (a bundle, sha12 of model.tflite)
      9ab4e2c01d77/
      current -> 9ab4e2c01d77     what the device runs (and starts on after a restart)
      previous -> 3f1c0a9e7b21    what `rollback` goes back to
      .incoming-XXXX/             a download being checked (removed when done)

Links are relative symlinks, replaced atomically (a new link renamed over the old one), so a
reader — the device at start, or an installer over SSH — sees the old target or the new one,
never none. Only the bundles that ``current`` and ``previous`` name are kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from device.classifier import Classifier
from device.errors import ModelError
from device.manifest import (
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    InputSpec,
    Manifest,
    write_atomic,
    write_manifest,
)
from device.model import read_tflite

log = logging.getLogger(__name__)

CURRENT = "current"
PREVIOUS = "previous"
INCOMING_PREFIX = ".incoming-"


def sha12(sha256: str) -> str:
    return sha256[:12]


class ModelStore:
    def __init__(self, state_dir: str | Path):
        self.root = Path(state_dir) / "models"

    # -- reading ---------------------------------------------------------------------------------
    def link(self, name: str) -> Path | None:
        """The bundle folder the link ``name`` points at, when it holds a model."""
        path = self.root / name
        if not path.is_symlink():
            return None
        target = self.root / os.readlink(path)
        return target if (target / MODEL_FILE).is_file() else None

    def current(self) -> Path | None:
        return self.link(CURRENT)

    def previous(self) -> Path | None:
        return self.link(PREVIOUS)

    def bundle_dir(self, sha256: str) -> Path:
        return self.root / sha12(sha256)

    # -- writing ---------------------------------------------------------------------------------
    def incoming(self) -> Path:
        """A fresh folder for a download (on the same file system as the bundles)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=INCOMING_PREFIX, dir=self.root))

    def install(self, staged: Path, sha256: str) -> Path:
        """Move a checked bundle folder to ``models/<sha12>/`` (kept when already there)."""
        target = self.bundle_dir(sha256)
        if (target / MODEL_FILE).is_file():
            shutil.rmtree(staged, ignore_errors=True)
            return target
        if target.exists():  # the remains of an interrupted install
            shutil.rmtree(target)
        for path in staged.iterdir():
            _fsync(path)
        os.replace(staged, target)
        _fsync_dir(self.root)
        return target

    def set_link(self, name: str, folder: Path | None) -> None:
        """Point ``name`` at ``folder`` (a bundle under models/), atomically; None removes it."""
        path = self.root / name
        if folder is None:
            path.unlink(missing_ok=True)
            return
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(folder.name, tmp)
        os.replace(tmp, path)
        _fsync_dir(self.root)

    def promote(self, folder: Path) -> Path | None:
        """``current`` -> folder, ``previous`` -> the old current; returns the old current."""
        old = self.current()
        if old is not None and old.resolve() != folder.resolve():
            self.set_link(PREVIOUS, old)
        self.set_link(CURRENT, folder)
        return old

    def swap(self) -> tuple[Path, Path]:
        """``current`` <-> ``previous`` (the rollback); returns (new current, new previous)."""
        current, previous = self.current(), self.previous()
        if current is None or previous is None:
            raise ModelError("no previous model to roll back to")
        self.set_link(CURRENT, previous)
        self.set_link(PREVIOUS, current)
        return previous, current

    def prune(self) -> list[str]:
        """Remove bundles that neither link names, and leftover downloads; return their names."""
        keep = {p.name for p in (self.current(), self.previous()) if p is not None}
        removed = []
        for path in self.root.iterdir():
            if path.is_symlink() or path.name in keep or not path.is_dir():
                continue
            if path.name.startswith(INCOMING_PREFIX) or len(path.name) == 12:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed

    def import_running(self, classifier: Classifier) -> Path:
        """Put the model the device runs from its config into the store (so that it can be
        the ``previous`` of the first update); the bundle loads exactly as it runs now."""
        target = self.bundle_dir(classifier.bundle.sha256)
        if (target / MODEL_FILE).is_file():
            return target
        staged = self.incoming()
        try:
            export_bundle(classifier, staged)
            return self.install(staged, classifier.bundle.sha256)
        finally:
            shutil.rmtree(staged, ignore_errors=True)


def export_bundle(classifier: Classifier, dest: Path) -> Manifest:
    """Write the model a classifier runs as a bundle folder: model.tflite, its labels file and a
    model.json whose input spec reproduces the classifier's preprocessing exactly (for a bare
    model the mapping from the input tensor is written out)."""
    bundle = classifier.bundle
    data = read_tflite(bundle.path)
    if bundle.sha256 and hashlib.sha256(data).hexdigest() != bundle.sha256:
        raise ModelError(f"{bundle.path} changed on disk since it was loaded")
    dest.mkdir(parents=True, exist_ok=True)
    write_atomic(dest / MODEL_FILE, data)
    if bundle.labels_path is not None:
        shutil.copyfile(bundle.labels_path, dest / LABELS_FILE)
    manifest = dataclasses.replace(
        bundle.manifest,
        name=bundle.name,
        version=bundle.version,
        variant=bundle.variant if bundle.variant != "unknown" else None,
        input=explicit_input(bundle.input, classifier.backend.input),
        sha256=bundle.sha256,
        size_bytes=len(data),
    )
    write_manifest(dest / MANIFEST_FILE, manifest)
    return manifest


def explicit_input(spec: InputSpec, tensor) -> InputSpec:  # type: ignore[no-untyped-def]
    """``spec`` with mean/std spelt out: a manifest always has them, and "none given" (raw
    pixels into the tensor, device.preprocess.build_lut) must read back as the same mapping."""
    if spec.mean is not None or spec.std is not None:
        return spec
    height, width = tensor.shape[1], tensor.shape[2]
    if tensor.quantized and tensor.dtype in (np.uint8, np.int8):
        # q = (p - mean) / (std * scale) + zero_point == p (uint8) or p - 128 (int8)
        std = 1.0 / tensor.scale
        mean = float(tensor.zero_point) + (128.0 if tensor.dtype == np.int8 else 0.0)
    else:
        std, mean = 1.0, 128.0 if tensor.dtype == np.int8 else 0.0
    return dataclasses.replace(
        spec,
        height=spec.height or height,
        width=spec.width or width,
        mean=(mean,) * 3,
        std=(std,) * 3,
    )


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
