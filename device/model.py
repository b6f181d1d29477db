"""Model bundles: a folder with model.tflite + labels.txt + model.json, or a bare .tflite.

See DESIGN.md, "Model bundle". A bare ``.tflite`` (e.g. one of Coral's models) works too: its
input spec then comes from the model's tensors, with mean/std from the command line or config.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from device.errors import ModelError
from device.labels import read_labels

log = logging.getLogger(__name__)

RESIZE_FILTERS = ("bilinear", "area", "nearest")
CROP_MODES = ("none", "center")
VARIANTS = ("float32", "float16", "dynamic", "int8", "edgetpu")
EDGETPU_CUSTOM_OP = b"edgetpu-custom-op"


@dataclass(frozen=True)
class InputSpec:
    """How frames are turned into the model's input (model.json "input")."""

    height: int | None = None  # None: taken from the model's input tensor
    width: int | None = None
    color: str = "RGB"
    resize: str = "bilinear"
    crop: str = "none"
    # Float normalisation x = (pixel - mean) / std, per channel. None: raw pixels go in
    # (identity), which is right for our trained models and most quantised models.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_FILTERS:
            raise ModelError(
                f"unknown resize filter {self.resize!r}", f"use one of {RESIZE_FILTERS}"
            )
        if self.crop not in CROP_MODES:
            raise ModelError(f"unknown crop mode {self.crop!r}", f"use one of {CROP_MODES}")
        if self.color != "RGB":
            raise ModelError(f"unsupported input color {self.color!r}", "models take RGB input")


def _triple(value: Any, what: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return (float(value),) * 3
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ModelError(f"{what} must be a number or 3 numbers, got {value!r}") from None
    if len(values) == 1:
        return values * 3
    if len(values) != 3:
        raise ModelError(f"{what} must be 1 or 3 numbers (R, G, B), got {len(values)}")
    return values  # type: ignore[return-value]


def make_input_spec(
    base: InputSpec | None = None,
    *,
    mean: Any = None,
    std: Any = None,
    resize: str | None = None,
    crop: str | None = None,
) -> InputSpec:
    """Return ``base`` with any given overrides applied."""
    spec = base or InputSpec()
    changes: dict[str, Any] = {}
    if mean is not None:
        changes["mean"] = _triple(mean, "mean")
    if std is not None:
        std_t = _triple(std, "std")
        if std_t and any(s == 0 for s in std_t):
            raise ModelError("std must not be 0")
        changes["std"] = std_t
    if resize is not None:
        changes["resize"] = resize
    if crop is not None:
        changes["crop"] = crop
    return replace(spec, **changes) if changes else spec


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
    manifest: dict[str, Any] = field(default_factory=dict)
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
    if not path.exists():
        raise ModelError(f"model file not found: {path}", "check the --model path or model.path")
    if path.is_dir():
        raise ModelError(
            f"{path} is a folder without model.tflite",
            "point --model at a .tflite file or at a bundle folder that contains model.tflite",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from None
    # A TFLite flatbuffer carries the file identifier "TFL3" at bytes 4..8.
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(
            f"{path} is not a TFLite model (no TFL3 identifier)",
            "use a .tflite file produced by `make convert` or a TFLite converter",
        )
    return data


def _check_gate(manifest: dict[str, Any], tflite: Path, allow: bool) -> None:
    """Refuse a bundle whose verification gate failed (`make convert` marks it in model.json)."""
    verification = manifest.get("verification") or {}
    status = verification.get("variant_gate", verification.get("gate"))
    if status != "failed":
        return
    metrics = manifest.get("metrics") or {}
    drop = metrics.get("accuracy_drop_points")
    lost = (
        f" lost {drop:.2f} accuracy points" if isinstance(drop, int | float) else " lost accuracy"
    )
    limit = verification.get("max_drop")
    message = (
        f"{tflite.parent} failed its verification gate: the {manifest.get('variant', '?')} variant"
        f"{lost} against {verification.get('reference', 'float32')}"
        + (f" (allowed: {limit})" if limit is not None else "")
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
    manifest: dict[str, Any] = {}
    folder = model if model.is_dir() else model.parent
    tflite = model / "model.tflite" if model.is_dir() else model
    manifest_path = folder / "model.json"
    if manifest_path.exists() and (model.is_dir() or tflite.name == "model.tflite"):
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read manifest {manifest_path}: {exc}") from None
    data = read_tflite(tflite)
    sha = hashlib.sha256(data).hexdigest()
    if manifest.get("sha256") and manifest["sha256"] != sha:
        raise ModelError(
            f"{tflite} does not match its manifest (sha256 {sha[:12]} != {manifest['sha256'][:12]})",
            "the bundle was modified or copied incompletely: copy the whole bundle folder again",
        )

    _check_gate(manifest, tflite, allow_failed_gate)

    spec_in = manifest.get("input", {})
    base = InputSpec(
        height=spec_in.get("height"),
        width=spec_in.get("width"),
        color=spec_in.get("color", "RGB"),
        resize=spec_in.get("resize", "bilinear"),
        crop=spec_in.get("crop", "none"),
        mean=_triple(spec_in.get("mean"), "model.json input.mean"),
        std=_triple(spec_in.get("std"), "model.json input.std"),
    )
    spec = make_input_spec(base, mean=mean, std=std, resize=resize, crop=crop)

    labels_path: Path | None = Path(labels) if labels else None
    if labels_path is None:
        candidates = [folder / "labels.txt"] if manifest else []
        candidates += [tflite.with_suffix(".txt"), folder / "labels.txt"]
        labels_path = next((p for p in candidates if p.exists()), None)
    label_map = read_labels(labels_path) if labels_path else {}

    variant = manifest.get("variant") or ("edgetpu" if EDGETPU_CUSTOM_OP in data else "unknown")
    bundle = ModelBundle(
        path=tflite,
        labels=label_map,
        input=spec,
        name=manifest.get("name")
        or (folder.name if tflite.name == "model.tflite" else tflite.stem),
        version=str(manifest.get("version", "0")),
        variant=variant,
        sha256=sha,
        manifest=manifest,
        is_edgetpu=EDGETPU_CUSTOM_OP in data,
        labels_path=labels_path,
    )
    log.debug("loaded model %s (%s, %d labels)", bundle.ref, bundle.variant, len(label_map))
    return bundle, data
