"""Loading models: a bundle folder (model.tflite + labels.txt + model.json) or a bare .tflite.

The bundle contract (file names, variants, the typed manifest) lives in ``device.manifest``.
A bare ``.tflite`` (e.g. one of Coral's models) works too: its input spec then comes from the
model's tensors, with mean/std from the command line or config.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.errors import ModelError
from device.files import is_readable_file, read_bytes
from device.labels import read_labels
from device.manifest import (
    CROP_MODES,
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    RESIZE_FILTERS,
    VARIANTS,
    InputSpec,
    Manifest,
    make_input_spec,
    read_manifest,
)

__all__ = [
    "CROP_MODES",
    "RESIZE_FILTERS",
    "VARIANTS",
    "InputSpec",
    "ModelBundle",
    "load_bundle",
    "make_input_spec",
    "read_tflite",
]

log = logging.getLogger(__name__)

EDGETPU_CUSTOM_OP = b"edgetpu-custom-op"
MAX_MODEL_BYTES = 1 << 30  # the largest Edge TPU / CPU classifiers are tens of MB


@dataclass
class ModelBundle:
    """A loaded model description (the network bytes are read by the inference backend)."""

    path: Path  # the .tflite file
    labels: dict[int, str]
    input: InputSpec
    name: str
    version: str = "0"
    variant: str = "unknown"
    sha256: str = ""
    manifest: Manifest = field(default_factory=Manifest)
    is_edgetpu: bool = False
    labels_path: Path | None = None

    @property
    def ref(self) -> str:
        """``<name>@<sha12>``: how results name the model."""
        return f"{self.name}@{self.sha256[:12]}"

    def label(self, index: int) -> str:
        return self.labels.get(index, str(index))


def read_tflite(path: Path) -> bytes:
    """Read a .tflite file, checking it is one; a clear ModelError otherwise."""
    data = read_bytes(
        path,
        "model file",
        ModelError,
        max_bytes=MAX_MODEL_BYTES,
        missing_hint="check the --model path or model.path",
    )
    # A TFLite flatbuffer carries the file identifier "TFL3" at bytes 4..8.
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(
            f"{path} is not a TFLite model (no TFL3 identifier)",
            "use a .tflite file produced by `make convert` or a TFLite converter",
        )
    return data


def _check_gate(manifest: Manifest, tflite: Path, allow: bool) -> None:
    """Refuse a bundle whose verification gate failed (`make convert` marks it in model.json)."""
    verification = manifest.verification
    if verification is None or not verification.failed:
        return
    drop = manifest.accuracy_drop
    lost = f" lost {drop:.2f} accuracy points" if drop is not None else " lost accuracy"
    limit = verification.max_drop
    message = (
        f"{tflite.parent} failed its verification gate: the {manifest.variant or '?'} variant"
        f"{lost} against {verification.reference or 'float32'}"
        + (f" (allowed: {limit:g})" if limit is not None else "")
    )
    if allow:
        log.warning("%s; running it anyway (allow_failed_gate)", message)
        return
    raise ModelError(
        message,
        "deploy a variant that passed (see verification.md beside the bundles), or recalibrate "
        "and convert again; to run it anyway set model.allow_failed_gate: true "
        "(--allow-failed-gate)",
    )


def load_bundle(
    model: str | Path,
    labels: str | Path | None = None,
    *,
    mean: Any = None,
    std: Any = None,
    resize: str | None = None,
    crop: str | None = None,
    allow_failed_gate: bool = False,
) -> tuple[ModelBundle, bytes]:
    """Load a bundle folder or a bare .tflite; return the bundle and the model bytes.

    Labels: explicit ``labels`` > bundle's labels.txt > ``<model stem>.txt``/``labels.txt``
    beside a bare model > none (indices are shown).
    """
    model = Path(model)
    if model.is_dir() and not (model / MODEL_FILE).exists():
        raise ModelError(
            f"{model} is a folder without {MODEL_FILE}",
            f"point --model at a .tflite file or at a bundle folder that contains {MODEL_FILE}",
        )
    folder = model if model.is_dir() else model.parent
    tflite = model / MODEL_FILE if model.is_dir() else model
    manifest_path = folder / MANIFEST_FILE
    in_bundle = model.is_dir() or tflite.name == MODEL_FILE
    has_manifest = in_bundle and manifest_path.exists()
    manifest = read_manifest(manifest_path) if has_manifest else Manifest()
    data = read_tflite(tflite)
    sha = hashlib.sha256(data).hexdigest()
    if manifest.sha256 and manifest.sha256 != sha:
        raise ModelError(
            f"{tflite} does not match its manifest (sha256 {sha[:12]} != {manifest.sha256[:12]})",
            "the bundle was modified or copied incompletely: copy the whole bundle folder again",
        )

    _check_gate(manifest, tflite, allow_failed_gate)
    spec = make_input_spec(manifest.input, mean=mean, std=std, resize=resize, crop=crop)

    labels_path: Path | None = Path(labels) if labels else None
    if labels_path is None:
        candidates = [folder / LABELS_FILE] if has_manifest else []
        candidates += [tflite.with_suffix(".txt"), folder / LABELS_FILE]
        labels_path = next((p for p in candidates if is_readable_file(p)), None)
    label_map = read_labels(labels_path) if labels_path else {}

    is_edgetpu = EDGETPU_CUSTOM_OP in data
    bundle = ModelBundle(
        path=tflite,
        labels=label_map,
        input=spec,
        name=manifest.name or (folder.name if tflite.name == MODEL_FILE else tflite.stem),
        version=manifest.version,
        variant=manifest.variant or ("edgetpu" if is_edgetpu else "unknown"),
        sha256=sha,
        manifest=manifest,
        is_edgetpu=is_edgetpu,
        labels_path=labels_path,
    )
    log.debug("loaded model %s (%s, %d labels)", bundle.ref, bundle.variant, len(label_map))
    return bundle, data
