"""tf.data input pipelines: parallel decode (the shared OpenCV loader), cache, shuffle,
batch, augmentation (training only, outside the model), prefetch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from training.config import AugmentConfig
from training.imageio import load_rgb
from training.tfenv import import_tf

log = logging.getLogger(__name__)


def augmentation(cfg: AugmentConfig, seed: int) -> Any | None:
    """A Keras Sequential of random layers for float [0, 255] batches, or None when off."""
    import keras
    from keras import layers

    if not cfg.enabled:
        return None
    steps: list[Any] = []
    if cfg.flip != "none":
        steps.append(layers.RandomFlip(cfg.flip, seed=seed))
    if cfg.rotation:
        steps.append(layers.RandomRotation(cfg.rotation, fill_mode=cfg.fill_mode, seed=seed + 1))
    if cfg.zoom:
        steps.append(layers.RandomZoom(cfg.zoom, fill_mode=cfg.fill_mode, seed=seed + 2))
    if cfg.translation:
        steps.append(
            layers.RandomTranslation(
                cfg.translation, cfg.translation, fill_mode=cfg.fill_mode, seed=seed + 3
            )
        )
    if cfg.brightness:
        steps.append(layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed + 4))
    if cfg.contrast:
        steps.append(layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(steps, name="augmentation") if steps else None


def make_dataset(
    items: list[tuple[Path, int]],
    size: tuple[int, int],
    batch_size: int,
    training: bool = False,
    augment: AugmentConfig | None = None,
    seed: int = 1234,
    cache: str = "memory",
) -> Any:
    """(uint8 images (B, H, W, 3), int32 labels (B,)) batches for ``items``."""
    tf = import_tf()
    height, width = size
    paths = [str(p) for p, _ in items]
    labels = np.array([c for _, c in items], dtype=np.int32)

    def _load(path: Any) -> np.ndarray:
        return load_rgb(path.decode("utf-8"), height, width)

    def load(path: Any, label: Any) -> tuple[Any, Any]:
        image = tf.numpy_function(_load, [path], tf.uint8, stateful=False)
        image.set_shape((height, width, 3))
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache == "memory":
        ds = ds.cache()
    elif cache != "none":
        ds = ds.cache(cache)
    if training:
        ds = ds.shuffle(max(len(items), 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    aug = augmentation(augment, seed) if (training and augment is not None) else None
    if aug is not None:

        def apply(images: Any, labels: Any) -> tuple[Any, Any]:
            x = aug(tf.cast(images, tf.float32), training=True)
            x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
            return x, labels

        ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
