"""The model bundle contract, in one place: file names, variants, the input spec and model.json.

A bundle is a folder (docs/conversion.md, "Model bundle")::

    model.tflite   the network
    labels.txt     one label per line (index = line), or "<id> <label>" lines
    model.json     the manifest: name, version, variant, input {height, width, color, resize,
                   crop, mean, std}, sha256 of model.tflite, num_classes, labels, created_at,
                   source, metrics, verification, ...

``read_manifest`` parses and checks model.json into a typed ``Manifest`` (a clear ModelError
naming the key when a value has the wrong type); ``write_manifest`` writes one atomically.
Conversion writes bundles and the device reads them through these two functions only; keys
this module does not model (quantization, calibration, edgetpu, ...) are kept in ``extra``
and written back unchanged.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from device.errors import ModelError
from device.files import decode_text, read_bytes

MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
MANIFEST_FILE = "model.json"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20  # labels of a large model are a few hundred KB

VARIANTS = ("float32", "float16", "dynamic", "int8", "edgetpu")
RESIZE_FILTERS = ("bilinear", "area", "nearest")
CROP_MODES = ("none", "center")
COLORS = ("RGB",)
GATE_STATES = ("passed", "failed", "reference", "not verified")

RAW_MEAN = (0.0, 0.0, 0.0)  # x = (pixel - 0) / 1: raw pixels, what every model we train takes
RAW_STD = (1.0, 1.0, 1.0)


# -- the input spec ------------------------------------------------------------------------------
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
                f"unknown resize filter {self.resize!r}", f"use one of {', '.join(RESIZE_FILTERS)}"
            )
        if self.crop not in CROP_MODES:
            raise ModelError(
                f"unknown crop mode {self.crop!r}", f"use one of {', '.join(CROP_MODES)}"
            )
        if self.color not in COLORS:
            raise ModelError(f"unsupported input color {self.color!r}", "models take RGB input")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ModelError(
                "std must not be 0", "std divides the pixel values: use e.g. 1 or 127.5"
            )

    def to_json(self, height: int | None = None, width: int | None = None) -> dict[str, Any]:
        """The ``input`` object of model.json / run.json (raw pixels written as mean 0, std 1)."""
        return {
            "height": height if height is not None else self.height,
            "width": width if width is not None else self.width,
            "color": self.color,
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean if self.mean is not None else RAW_MEAN),
            "std": list(self.std if self.std is not None else RAW_STD),
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> InputSpec:
        """Parse an ``input`` object; ModelError naming ``where`` and the key otherwise.
        (An absent ``input`` is ``{}``: everything from the model's tensors.)"""
        if not isinstance(data, dict):
            raise ModelError(
                f"{where}: input must be an object {{height, width, resize, ...}}, "
                f"got {_kind(data)}",
                "leave `input` out to take the size from the model, or " + _FIX,
            )
        try:
            return cls(
                height=_size(data.get("height"), f"{where}: input.height"),
                width=_size(data.get("width"), f"{where}: input.width"),
                color=_choice(data.get("color", "RGB"), COLORS, f"{where}: input.color"),
                resize=_choice(
                    data.get("resize", "bilinear"), RESIZE_FILTERS, f"{where}: input.resize"
                ),
                crop=_choice(data.get("crop", "none"), CROP_MODES, f"{where}: input.crop"),
                mean=triple(data.get("mean"), f"{where}: input.mean"),
                std=triple(data.get("std"), f"{where}: input.std"),
            )
        except ModelError as exc:
            message = exc.message if exc.message.startswith(where) else f"{where}: {exc.message}"
            raise ModelError(message, exc.hint or _FIX) from None


def triple(value: Any, what: str) -> tuple[float, float, float] | None:
    """1 or 3 finite numbers as an (R, G, B) triple; None stays None."""
    if value is None:
        return None
    items = [value] if _is_number(value) else value
    if not isinstance(items, list | tuple) or not all(_is_number(v) for v in items):
        raise ModelError(f"{what} must be a number or 3 numbers (R, G, B), got {value!r}")
    values = tuple(float(v) for v in items)
    if not all(math.isfinite(v) for v in values):
        raise ModelError(f"{what} must be finite numbers, got {value!r}")
    if len(values) == 1:
        values = values * 3
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
    """Return ``base`` with any given overrides applied (command line or config)."""
    changes: dict[str, Any] = {}
    if mean is not None:
        changes["mean"] = triple(mean, "mean")
    if std is not None:
        changes["std"] = triple(std, "std")
    if resize is not None:
        changes["resize"] = resize
    if crop is not None:
        changes["crop"] = crop
    spec = base or InputSpec()
    return replace(spec, **changes) if changes else spec


# -- the manifest --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verification:
    """model.json "verification": the gate of `make convert` (see conversion.gate)."""

    gate: str | None = None  # the conversion as a whole: passed | failed
    variant_gate: str | None = None  # this variant
    max_drop: float | None = None  # accuracy points a variant may lose
    reference: str | None = None  # the variant compared against (float32)

    @property
    def failed(self) -> bool:
        return (self.variant_gate or self.gate) == "failed"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Manifest:
    """model.json, typed. Unknown keys are kept in ``extra`` (written back as they were)."""

    name: str | None = None
    version: str = "1"
    variant: str | None = None  # one of VARIANTS; None: not said (bare models)
    input: InputSpec = field(default_factory=InputSpec)
    sha256: str | None = None  # of model.tflite
    size_bytes: int | None = None
    num_classes: int | None = None
    labels: tuple[str, ...] | None = None
    created_at: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    verification: Verification | None = None
    manifest_version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to model.json (None and empty optional keys left out)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(
            input=self.input.to_json(),
            labels=list(self.labels) if self.labels is not None else None,
            verification=self.verification.to_json() if self.verification else None,
        )
        extra = out.pop("extra")
        out = {k: v for k, v in out.items() if v not in (None, {})}
        return {**out, **{k: v for k, v in extra.items() if k not in out}}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        """Check and type a parsed model.json; ModelError naming the key otherwise."""
        if not isinstance(data, dict):
            raise ModelError(f"{where} must be a JSON object, got {_kind(data)}", _FIX)
        known = {
            "name",
            "version",
            "variant",
            "input",
            "sha256",
            "size_bytes",
            "num_classes",
            "labels",
            "created_at",
            "source",
            "metrics",
            "verification",
            "manifest_version",
        }
        version = data.get("version", "1")
        if not isinstance(version, str | int) or isinstance(version, bool):
            raise ModelError(f"{where}: version must be a string or a number, got {version!r}")
        manifest = cls(
            name=_optional(data, "name", str, where),
            version=str(version),
            variant=_variant(data.get("variant"), where),
            input=InputSpec.from_json(data.get("input", {}), where),
            sha256=_sha256(data.get("sha256"), where),
            size_bytes=_count(data.get("size_bytes"), f"{where}: size_bytes"),
            num_classes=_count(data.get("num_classes"), f"{where}: num_classes"),
            labels=_labels(data.get("labels"), where),
            created_at=_optional(data, "created_at", str, where),
            source=_optional(data, "source", dict, where) or {},
            metrics=_optional(data, "metrics", dict, where) or {},
            verification=_verification(data.get("verification"), where),
            manifest_version=_count(data.get("manifest_version"), f"{where}: manifest_version")
            or MANIFEST_VERSION,
            extra={k: v for k, v in data.items() if k not in known},
        )
        if (
            manifest.labels is not None
            and manifest.num_classes is not None
            and len(manifest.labels) != manifest.num_classes
        ):
            raise ModelError(
                f"{where}: num_classes is {manifest.num_classes} but labels lists "
                f"{len(manifest.labels)}",
                _FIX,
            )
        return manifest

    @property
    def accuracy_drop(self) -> float | None:
        """Accuracy points lost against the reference variant, when verified."""
        drop = self.metrics.get("accuracy_drop_points")
        return float(drop) if _is_number(drop) else None


def read_manifest(path: str | Path) -> Manifest:
    """Read a bundle's model.json (``path`` is the file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    text = decode_text(
        read_bytes(path, "manifest", ModelError, max_bytes=MAX_MANIFEST_BYTES),
        f"manifest {path}",
        ModelError,
    )
    try:
        data = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"manifest {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            _FIX,
        ) from None
    except ValueError as exc:  # NaN / Infinity
        raise ModelError(f"manifest {path}: {exc}", _FIX) from None
    except RecursionError:
        raise ModelError(f"manifest {path} is nested too deeply to be a manifest", _FIX) from None
    return Manifest.from_json(data, f"manifest {path}")


def write_manifest(path: str | Path, manifest: Manifest) -> Path:
    """Write model.json atomically (``path`` is the file or its folder); return the file."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    text = json.dumps(manifest.to_json(), indent=2, allow_nan=False) + "\n"
    write_atomic(path, text.encode("utf-8"))
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that a reader sees the old or the new content, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- checks --------------------------------------------------------------------------------------
_FIX = (
    "write the bundle again with `make convert` (or fix model.json by hand, see docs/conversion.md)"
)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key {repeated[0]!r} is given twice in one object")
    return dict(pairs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "a list", str: "a string", bool: "a boolean", dict: "an object"}.get(
        type(value), "a number" if _is_number(value) else type(value).__name__
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _optional(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise ModelError(
            f"{where}: {key} must be {_kind(kind())}, got {_kind(value)} {value!r:.60}", _FIX
        )
    return value


def _size(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65536:
        raise ModelError(f"{what} must be a whole number of pixels (1..65536), got {value!r}", _FIX)
    return value


def _count(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ModelError(f"{what} must be a whole number >= 0, got {value!r}", _FIX)
    return value


def _choice(value: Any, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ModelError(f"{what} must be one of {', '.join(choices)}, got {value!r}", _FIX)
    return value


def _variant(value: Any, where: str) -> str | None:
    return None if value is None else _choice(value, VARIANTS, f"{where}: variant")


def _sha256(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or len(value) != 64
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise ModelError(
            f"{where}: sha256 must be 64 lowercase hex digits, got {value!r:.80}", _FIX
        )
    return value


def _labels(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelError(f"{where}: labels must be a list of strings", _FIX)
    return tuple(value)


def _verification(value: Any, where: str) -> Verification | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ModelError(f"{where}: verification must be an object, got {_kind(value)}", _FIX)
    max_drop = value.get("max_drop")
    if max_drop is not None and not _is_number(max_drop):
        raise ModelError(f"{where}: verification.max_drop must be a number, got {max_drop!r}")
    reference = value.get("reference")
    return Verification(
        gate=_gate(value.get("gate"), f"{where}: verification.gate"),
        variant_gate=_gate(value.get("variant_gate"), f"{where}: verification.variant_gate"),
        max_drop=float(max_drop) if max_drop is not None else None,
        reference=str(reference) if reference is not None else None,
    )


def _gate(value: Any, what: str) -> str | None:
    return None if value is None else _choice(value, GATE_STATES, what)
