"""The run's Keras model on the workstation: embeddings for grouping, Grad-CAM for "why".

:class:`RunModel` loads ``runs/<name>/model.keras`` on first use (TensorFlow is imported then,
not when the server starts) and serialises calls with a lock (one model, many request threads).

Grad-CAM (Selvaraju et al., 2017): the gradient of the explained class's score with respect to
the backbone's last feature map, averaged over the map, weights the map's channels; the ReLU of
the weighted sum is where the evidence for the class lies. It is upsampled to the image and
drawn over it as a heat map (red: where the model looked).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training import runfolder
from training.imageio import ImageDecodeError, decode_rgb, resize_rgb

log = logging.getLogger(__name__)

OVERLAY_MIN_SIDE = 320  # small frames are enlarged so the heat map can be seen
HEAT_ALPHA = 0.45


@dataclass(frozen=True)
class Explanation:
    png: bytes
    label: str
    score: float
    labels_top: list[tuple[str, float]]


class RunModel:
    """A finished run's Keras model (``runs/<name>/``), loaded lazily."""

    def __init__(self, run_dir: Path):
        self.run = runfolder.read_run(Path(run_dir))  # RunError now, not at the first request
        self.labels = self.run.labels
        self.size = self.run.size
        digest = hashlib.sha256((self.run.path / runfolder.MODEL).read_bytes()).hexdigest()
        self.ident = f"{self.run.record.name}@{digest[:12]}"
        self._lock = threading.Lock()
        self._model: Any = None
        self._embedder: Any = None

    def _load(self) -> Any:
        if self._model is None:
            from training.tfenv import import_tf

            import_tf()
            import keras

            from training.models import embedding_model

            log.info("loading %s for the review page", self.run.path / runfolder.MODEL)
            self._model = keras.models.load_model(self.run.path / runfolder.MODEL, compile=False)
            self._embedder = embedding_model(self._model)
        return self._model

    def _pixels(self, jpeg: bytes | None) -> np.ndarray:
        if jpeg is None:
            return np.zeros((*self.size, 3), np.uint8)
        try:
            return resize_rgb(decode_rgb(jpeg), *self.size)
        except ImageDecodeError:
            return np.zeros((*self.size, 3), np.uint8)

    def embed(self, images: list[bytes | None]) -> np.ndarray:
        """(N, D) float32 pooled features (the layer before the classifier)."""
        batch = np.stack([self._pixels(b) for b in images])
        with self._lock:
            self._load()
            return np.asarray(self._embedder.predict_on_batch(batch), dtype=np.float32)

    def explain(self, jpeg: bytes, label: str | None = None) -> Explanation:
        """A Grad-CAM overlay (PNG) for ``label`` (a label of the run), else the top class."""
        image = decode_rgb(jpeg)
        pixels = resize_rgb(image, *self.size)[None]
        with self._lock:
            model = self._load()
            probs, cam = _gradcam(model, pixels, self.labels, label)
        order = np.argsort(-probs)[:3]
        explained = label if label in self.labels else self.labels[int(order[0])]
        return Explanation(
            png=overlay_png(image, cam),
            label=explained,
            score=float(probs[self.labels.index(explained)]),
            labels_top=[(self.labels[int(i)], float(probs[int(i)])) for i in order],
        )


def _gradcam(
    model: Any, pixels: np.ndarray, labels: list[str], label: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities, CAM in [0, 1] at the feature map's resolution)."""
    import keras
    import tensorflow as tf

    from training.models import backbone_of

    backbone = backbone_of(model)
    layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    cut = layers.index(backbone)
    x = tf.constant(pixels)
    for layer in layers[:cut]:
        x = layer(x, training=False)
    features = backbone(x, training=False)
    with tf.GradientTape() as tape:
        tape.watch(features)
        y = features
        for layer in layers[cut + 1 :]:
            y = layer(y, training=False)
        probs = y[0]
        index = labels.index(label) if label in labels else int(tf.argmax(probs))
        score = probs[index]
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2))  # (1, C)
    cam = tf.nn.relu(tf.reduce_sum(features * weights[:, None, None, :], axis=-1))[0].numpy()
    top = float(cam.max())
    cam = cam / top if top > 0 else np.zeros_like(cam)
    return np.asarray(probs, dtype=np.float64), cam


def overlay_png(image: np.ndarray, cam: np.ndarray) -> bytes:
    """The RGB ``image`` (enlarged when small) with ``cam`` drawn over it as a JET heat map."""
    h, w = image.shape[:2]
    scale = max(1.0, OVERLAY_MIN_SIDE / min(h, w))
    size = (round(w * scale), round(h * scale))
    base = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR) if scale > 1 else image
    heat = cv2.resize(cam.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
    mixed = cv2.addWeighted(
        cv2.cvtColor(base, cv2.COLOR_RGB2BGR), 1 - HEAT_ALPHA, colored, HEAT_ALPHA, 0
    )
    ok, png = cv2.imencode(".png", mixed)
    if not ok:
        raise ValueError("cannot encode the overlay")
    return png.tobytes()
