"""Building the classifier: uint8 pixels in, rescaling, a backbone, pooling, softmax out.

The exported network takes raw RGB uint8 pixels of shape (None, H, W, 3): the float cast and
the backbone's own scaling are layers of the model, so the Pi feeds camera pixels unchanged.
No random (augmentation) layers are ever part of this network.
"""

from __future__ import annotations

import logging
import re
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60
IMAGENET_ALPHAS = {
    "mobilenetv2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
    "mobilenetv3small": (0.75, 1.0),
    "mobilenetv3large": (0.75, 1.0),
    "efficientnetb0": (1.0,),
}
MIN_SIZE = {"small_cnn": 8}
_URL_FAILURE = re.compile(r"URL fetch failure on (\S+?):? (?:\S+ -- )?(.*)", re.S)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone and which input scaling it expects (x * scale + offset)."""

    name: str
    scale: float
    offset: float


SPECS = {
    "small_cnn": BackboneSpec("small_cnn", 1 / 255.0, 0.0),
    "mobilenetv2": BackboneSpec("mobilenetv2", 1 / 127.5, -1.0),
    # MobileNetV3 and EfficientNet scale 0..255 inputs themselves (include_preprocessing).
    "mobilenetv3small": BackboneSpec("mobilenetv3small", 1.0, 0.0),
    "mobilenetv3large": BackboneSpec("mobilenetv3large", 1.0, 0.0),
    "efficientnetb0": BackboneSpec("efficientnetb0", 1.0, 0.0),
}


def validate_backbone_options(config: TrainConfig) -> None:
    """Fail before any work on option combinations a backbone cannot take."""
    h, w = config.size
    minimum = MIN_SIZE.get(config.backbone, 32)
    if min(h, w) < minimum:
        raise ConfigError(
            f"input size {h}x{w} is below the minimum {minimum} px of {config.backbone}"
            + (
                "; use --backbone small_cnn for tiny images"
                if config.backbone != "small_cnn"
                else ""
            )
        )
    if config.backbone == "efficientnetb0" and config.alpha != 1.0:
        raise ConfigError("efficientnetb0 has no width multiplier: use --alpha 1.0")
    if config.weights_resolved == "imagenet":
        if config.backbone == "small_cnn":
            raise ConfigError(
                "small_cnn has no ImageNet weights: use --weights none, or a keras backbone"
            )
        alphas = IMAGENET_ALPHAS[config.backbone]
        if config.alpha not in alphas:
            raise ConfigError(
                f"ImageNet weights of {config.backbone} exist for alpha {list(alphas)}, "
                f"not {config.alpha}: pick one of those or use --weights none"
            )


@contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _application(name: str, size: tuple[int, int], alpha: float, weights: str | None) -> Any:
    import keras

    shape = (size[0], size[1], 3)
    apps = keras.applications
    if name == "mobilenetv2":
        return apps.MobileNetV2(input_shape=shape, alpha=alpha, include_top=False, weights=weights)
    if name == "mobilenetv3small":
        return apps.MobileNetV3Small(
            input_shape=shape, alpha=alpha, include_top=False, weights=weights
        )
    if name == "mobilenetv3large":
        return apps.MobileNetV3Large(
            input_shape=shape, alpha=alpha, include_top=False, weights=weights
        )
    if name == "efficientnetb0":
        return apps.EfficientNetB0(input_shape=shape, include_top=False, weights=weights)
    raise ConfigError(f"unknown backbone {name!r}")


def small_cnn(size: tuple[int, int], alpha: float = 1.0) -> Any:
    """A plain conv net for tiny inputs (digits, icons): 3 conv stages, ~100k params at alpha 1."""
    import keras
    from keras import layers

    def conv(x: Any, filters: int, name: str) -> Any:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    f1, f2, f3 = (max(8, round(n * alpha)) for n in (32, 64, 128))
    inputs = keras.Input((size[0], size[1], 3), name="pixels")
    x = conv(inputs, f1, "b1a")
    x = conv(x, f1, "b1b")
    x = layers.MaxPooling2D(name="b1_pool")(x)
    x = conv(x, f2, "b2a")
    x = conv(x, f2, "b2b")
    x = layers.MaxPooling2D(name="b2_pool")(x)
    x = conv(x, f3, "b3a")
    return keras.Model(inputs, x, name="small_cnn")


def build_backbone(config: TrainConfig) -> Any:
    """The feature extractor with its weights loaded; raises WeightsError early on failure."""
    validate_backbone_options(config)
    weights = config.weights_resolved
    if config.backbone == "small_cnn":
        backbone = small_cnn(config.size, config.alpha)
    elif weights == "imagenet":
        backbone = _imagenet_backbone(config)
    else:
        backbone = _application(config.backbone, config.size, config.alpha, None)
    if weights not in ("imagenet", "none"):
        load_backbone_weights(backbone, Path(weights), config)
    return backbone


def _imagenet_backbone(config: TrainConfig) -> Any:
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return _application(config.backbone, config.size, config.alpha, "imagenet")
    except Exception as exc:  # Keras raises a bare Exception for download failures
        match = _URL_FAILURE.search(str(exc))
        if match is None:
            raise
        url, reason = match.group(1), match.group(2).strip()
        name = url.rsplit("/", 1)[-1]
        raise WeightsError(
            f"cannot download the ImageNet weights of {config.backbone} (alpha {config.alpha}): "
            f"{url} failed ({reason}). Without internet use --weights none (train from scratch) "
            f"or --weights PATH with a copy of {name} (or put it in ~/.keras/models/)"
        ) from None


def load_backbone_weights(backbone: Any, path: Path, config: TrainConfig) -> None:
    """Load a local weights file (.h5 / .weights.h5 / .keras) into the backbone."""
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path} (--weights takes imagenet, none or a file path)"
        )
    if not path.name.endswith((".h5", ".hdf5", ".keras")):
        raise WeightsError(f"weights file {path} must end in .weights.h5, .h5 or .keras")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # per-layer noise on a mismatch
            backbone.load_weights(str(path))
    except (ValueError, OSError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"weights file {path} does not fit {config.backbone} "
            f"(alpha {config.alpha}, input {config.size[0]}x{config.size[1]}): {first}"
        ) from None
    log.info("loaded backbone weights from %s", path)


def build_classifier(backbone: Any, config: TrainConfig, num_classes: int) -> Any:
    """uint8 image -> rescaling -> backbone -> global pooling ("embedding") -> softmax."""
    import keras
    from keras import layers

    spec = SPECS[config.backbone]
    h, w = config.size
    inputs = keras.Input((h, w, 3), dtype="uint8", name="image")
    x = layers.Rescaling(spec.scale, spec.offset, name="rescale")(inputs)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="embedding")(x)
    if config.dropout:
        x = layers.Dropout(config.dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(
        x
    )
    return keras.Model(inputs, outputs, name=f"edgecam_{config.backbone}")


def is_pretrained(config: TrainConfig) -> bool:
    return config.weights_resolved != "none"


def freeze_backbone(model: Any) -> None:
    """Phase 1 of transfer learning: only the new head trains."""
    backbone = backbone_of(model)
    backbone.trainable = False


def unfreeze_top(model: Any, fraction: float) -> int:
    """Phase 2: unfreeze the top ``fraction`` of the backbone's layers (BatchNorm stays frozen)."""
    from keras import layers

    backbone = backbone_of(model)
    backbone.trainable = True
    n = len(backbone.layers)
    cut = n - round(n * fraction)
    unfrozen = 0
    for i, layer in enumerate(backbone.layers):
        trainable = i >= cut and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = trainable
        unfrozen += int(trainable)
    return unfrozen


def backbone_of(model: Any) -> Any:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError("model has no nested backbone")


def embedding_model(model: Any) -> Any:
    """The same network up to the pooled features (for baselines on embeddings)."""
    import keras

    return keras.Model(model.inputs, model.get_layer("embedding").output)
