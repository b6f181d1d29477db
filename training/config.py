"""The training configuration: typed, validated, loadable from YAML and overridable by flags."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from device.files import read_text
from device.yamlfile import load_yaml
from training.errors import ConfigError

log = logging.getLogger(__name__)

Backbone = Literal[
    "small_cnn", "mobilenetv2", "mobilenetv3small", "mobilenetv3large", "efficientnetb0"
]
DEFAULT_SIZES = {
    "small_cnn": 32,
    "mobilenetv2": 224,
    "mobilenetv3small": 224,
    "mobilenetv3large": 224,
    "efficientnetb0": 224,
}


class AugmentConfig(BaseModel):
    """Random changes applied to training batches only (never val/test, never the export)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(True, description="Master switch for all augmentation.")
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = Field(
        "horizontal", description="Random flips; 'none' for text, digits or oriented scenes."
    )
    rotation: float = Field(
        0.05, ge=0, le=0.5, description="Max rotation as a fraction of a full turn."
    )
    zoom: float = Field(0.1, ge=0, lt=1, description="Max zoom in/out as a fraction of size.")
    translation: float = Field(0.1, ge=0, lt=1, description="Max shift as a fraction of size.")
    fill_mode: Literal["reflect", "constant", "nearest"] = Field(
        "reflect", description="How rotation/zoom/shift fill the border ('constant' = black)."
    )
    brightness: float = Field(0.1, ge=0, le=1, description="Max brightness change (fraction).")
    contrast: float = Field(0.1, ge=0, le=1, description="Max contrast change (fraction).")


class TrainConfig(BaseModel):
    """Everything that decides a training run; written resolved to ``config.yaml``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backbone: Backbone = Field(
        "mobilenetv2", description="Network: a keras.applications backbone or a small plain CNN."
    )
    weights: str | None = Field(
        None,
        description="'imagenet', 'none' or a path to a backbone weights file "
        "(.h5 / .weights.h5). Default: imagenet, or none for small_cnn.",
    )
    alpha: float = Field(1.0, gt=0, le=2, description="Width multiplier of the backbone.")
    input_size: tuple[int, int] | None = Field(
        None, description="Model input [height, width] in pixels. Default: 224, 32 for small_cnn."
    )
    batch_size: int = Field(32, ge=1, description="Images per training step (all GPUs together).")
    epochs: int = Field(
        20, ge=1, description="Epochs of the head phase (or of the whole run from scratch)."
    )
    fine_tune_epochs: int = Field(
        10, ge=0, description="Epochs of phase 2 (top of a pretrained backbone unfrozen)."
    )
    fine_tune_fraction: float = Field(
        0.3, ge=0, le=1, description="Fraction of the backbone's layers unfrozen in phase 2."
    )
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate of phase 1.")
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="Learning rate over phase 1: cosine decay to 1% or constant."
    )
    fine_tune_lr_factor: float = Field(
        0.1, gt=0, le=1, description="Phase 2 learning rate = learning_rate * this."
    )
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout before the classifier.")
    class_weights: Literal["balanced", "none"] = Field(
        "balanced", description="Weight the loss by inverse class frequency ('balanced')."
    )
    patience: int = Field(
        5, ge=1, description="Early stopping: epochs without val_loss improvement."
    )
    seed: int = Field(1234, description="Seed for splits, shuffling, augmentation and init.")
    deterministic: bool = Field(
        False, description="Force deterministic TF ops (reproducible, slower)."
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of images for validation when splitting."
    )
    test_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of images for the test set when splitting."
    )
    manifest: Path | None = Field(
        None, description="Split manifest to use/update. Default: DATA/edgecam-split.json."
    )
    cache: str = Field(
        "memory",
        description="Cache decoded images: 'memory', 'none', or a file path prefix on disk.",
    )
    mixed_precision: Literal["auto", "on", "off"] = Field(
        "auto", description="float16 compute on GPUs ('auto': when a GPU is found)."
    )
    baselines: bool = Field(
        False, description="Also fit k-NN and linear SVM baselines in the evaluation."
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Training-time augmentation."
    )

    @field_validator("input_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, int):
            return (v, v)
        if isinstance(v, str):
            parts = v.lower().replace("x", ",").split(",")
            return tuple(int(p) for p in parts) if len(parts) == 2 else (int(parts[0]),) * 2
        return v

    @property
    def size(self) -> tuple[int, int]:
        return self.input_size or (DEFAULT_SIZES[self.backbone],) * 2

    @property
    def weights_resolved(self) -> str:
        if self.weights is None:
            return "none" if self.backbone == "small_cnn" else "imagenet"
        return self.weights

    def resolved(self) -> TrainConfig:
        """A copy with the defaults that depend on other fields filled in."""
        return self.model_copy(update={"input_size": self.size, "weights": self.weights_resolved})

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False)


def _error_line(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {where}: {first['msg']}{more}"


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML mapping through the device's safe loader (YAML 1.2 booleans, so
    ``mixed_precision: off`` is the string "off"; duplicate keys, non-finite numbers and alias
    bombs refused); errors name the file and line."""
    text = read_text(path, "config file", ConfigError, max_bytes=1 << 20)
    data, _ = load_yaml(text, str(path), ConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    return data


def build_config(
    file_values: dict[str, Any], overrides: dict[str, Any], source: str
) -> TrainConfig:
    """Config file values, then command-line overrides (None = not given), validated."""
    merged = dict(file_values)
    augment = dict(merged.get("augment") or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("augment."):
            augment[key.split(".", 1)[1]] = value
        else:
            merged[key] = value
    if augment:
        merged["augment"] = augment
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_error_line(exc, source)) from None
