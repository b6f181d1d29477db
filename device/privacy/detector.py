"""The face detector: MediaPipe's BlazeFace on the device's own inference backend.

``FaceDetector`` letterboxes an RGB image into the model's square input (aspect ratio kept,
zero padding, values scaled to [-1, 1]), runs it through ``device.inference.InferenceBackend``
and decodes the outputs with ``device.privacy.blazeface``. Both models that MediaPipe 0.10.14
ships are known: short range (128x128, 896 anchors) and full range (192x192, 2304 anchors);
which one a file is comes from its tensors, not its name.

Not thread-safe (one interpreter): ``device.privacy.guard`` serialises its callers.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.errors import ModelError
from device.files import read_bytes
from device.inference import InferenceBackend
from device.manifest import InputSpec
from device.model import ModelBundle
from device.privacy import blazeface
from device.privacy.config import DEFAULT_MIN_SCORE

log = logging.getLogger(__name__)

MAX_DETECTOR_BYTES = 16 << 20  # BlazeFace models are 0.2 to 1 MB
FETCH_HINT = (
    "run `make models` (it puts both BlazeFace detectors into models/), or point "
    "privacy.faces.model (redact: --model) at face_detection_full_range_sparse.tflite or "
    "face_detection_short_range.tflite"
)


@dataclass(frozen=True)
class Face:
    """One detected face: a box and six keypoints as fractions of the image, and a score."""

    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax
    score: float
    keypoints: tuple[tuple[float, float], ...] = ()

    def pixel_box(self, width: int, height: int, margin: float = 0.0) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive), grown by ``margin`` times the
        box size on every side, clipped to the image."""
        x0, y0, x1, y1 = self.box
        dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
        return (
            max(0, int(np.floor((x0 - dx) * width))),
            max(0, int(np.floor((y0 - dy) * height))),
            min(width, int(np.ceil((x1 + dx) * width))),
            min(height, int(np.ceil((y1 + dy) * height))),
        )

    def as_dict(self, width: int, height: int) -> dict[str, object]:
        return {
            "box": list(self.pixel_box(width, height)),
            "score": round(self.score, 4),
        }


def _letterbox(pixels: np.ndarray, out: np.ndarray) -> tuple[float, float, float, float]:
    """Scale ``pixels`` into the square float buffer ``out`` (1xSxSx3), aspect kept, centred,
    zero (mid-grey) padding, values in [-1, 1]; returns the padding (left, top, right, bottom)
    as fractions of the square."""
    size = out.shape[1]
    height, width = pixels.shape[:2]
    scale = min(size / width, size / height)
    new_w = max(1, min(size, round(width * scale)))
    new_h = max(1, min(size, round(height * scale)))
    shrink = new_w < width or new_h < height
    resized = cv2.resize(
        pixels, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    left, top = (size - new_w) // 2, (size - new_h) // 2
    out.fill(0.0)
    region = out[0, top : top + new_h, left : left + new_w]
    np.multiply(resized, 1.0 / 127.5, out=region, casting="unsafe")
    region -= 1.0
    return (left / size, top / size, (size - new_w - left) / size, (size - new_h - top) / size)


class FaceDetector:
    """Finds faces in RGB images with a BlazeFace model (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        min_score: float = DEFAULT_MIN_SCORE,
        threads: int = 1,
        runtime: str | None = None,
        tile_px: int | None = None,
    ):
        """``tile_px``: also look for faces in overlapping squares of this many pixels (each
        scaled to the model's input), so that faces too small for the whole image scaled to
        128 or 192 pixels are found; None: the whole image only."""
        path = Path(path)
        data = read_bytes(
            path, "face detector", ModelError, max_bytes=MAX_DETECTOR_BYTES, missing_hint=FETCH_HINT
        )
        if len(data) < 8 or data[4:8] != b"TFL3":  # the TFLite flatbuffer identifier
            raise ModelError(f"face detector {path} is not a TFLite model", FETCH_HINT)
        self.path = path
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.name = path.stem
        self.min_score = min_score
        self.tile_px = tile_px
        bundle = ModelBundle(
            path, {}, InputSpec(), self.name, variant="float32", sha256=self.sha256
        )
        try:
            self.backend = InferenceBackend(bundle, data, threads=threads, runtime=runtime)
        except ModelError as exc:
            raise ModelError(f"face detector: {exc.message}", FETCH_HINT) from None
        self.spec, self._boxes, self._scores = self._check_tensors()
        self.anchors = blazeface.ssd_anchors(self.spec)
        self._input = np.zeros(self.backend.input.shape, dtype=np.float32)
        self.last_ms = 0.0

    @property
    def ref(self) -> str:
        """``<file stem>@<sha12>``: how redaction records name the detector."""
        return f"{self.name}@{self.sha256[:12]}"

    def _check_tensors(self) -> tuple[blazeface.AnchorSpec, int, int]:
        """The anchor spec and the positions of the boxes and scores outputs; ModelError when
        this is not one of the known BlazeFace models."""
        backend = self.backend
        shape = backend.input.shape
        outputs = backend.outputs
        by_width = {t.shape[-1]: i for i, t in enumerate(outputs) if len(t.shape) == 3}
        boxes, scores = by_width.get(blazeface.NUM_COORDS), by_width.get(1)
        spec = None
        if (
            backend.input.dtype == np.float32
            and shape[1] == shape[2]
            and len(outputs) == 2
            and boxes is not None
            and scores is not None
            and outputs[boxes].shape[1] == outputs[scores].shape[1]
        ):
            spec = blazeface.spec_for(shape[1], outputs[boxes].shape[1])
        if spec is None or boxes is None or scores is None:
            found = ", ".join(str(list(t.shape)) for t in outputs)
            raise ModelError(
                f"face detector {self.path} is not a BlazeFace face detector (input "
                f"{list(shape)} {backend.input.dtype.name}, outputs {found}; expected "
                "[1, 128, 128, 3] or [1, 192, 192, 3] float32 and boxes [1, N, 16] + scores "
                "[1, N, 1])",
                FETCH_HINT,
            )
        return spec, boxes, scores

    def _candidates(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decoded detections above the threshold in ``pixels`` (fractions of it), before NMS."""
        pad = _letterbox(pixels, self._input)
        self.backend.set_input(self._input)
        self.backend.invoke()
        outputs = self.backend.get_outputs()
        rows, scores = blazeface.candidates(
            outputs[self._boxes],
            outputs[self._scores],
            self.anchors,
            self.spec.input_size,
            self.min_score,
        )
        return blazeface.unletterbox(rows, pad), scores

    def detect(self, pixels: np.ndarray) -> list[Face]:
        """Faces in an RGB image (HxWx3 uint8), best first; coordinates are fractions of it."""
        if pixels.ndim != 3 or pixels.shape[2] != 3 or not pixels.shape[0] or not pixels.shape[1]:
            raise ValueError(f"not an RGB image: shape {pixels.shape}")
        start = time.perf_counter()
        height, width = pixels.shape[:2]
        found = [self._candidates(pixels)]  # the whole image, then each tile
        for x, y, side in blazeface.tiles(width, height, self.tile_px or max(width, height)):
            rows, scores = self._candidates(pixels[y : y + side, x : x + side])
            rows[:, 0::2] = (rows[:, 0::2] * side + x) / width  # tile -> image fractions
            rows[:, 1::2] = (rows[:, 1::2] * side + y) / height
            found.append((rows, scores))
        rows, scores = blazeface.weighted_nms(
            np.concatenate([r for r, _ in found]), np.concatenate([s for _, s in found])
        )
        rows = np.clip(rows, 0.0, 1.0)
        self.last_ms = (time.perf_counter() - start) * 1000.0
        return [
            Face(
                box=(float(r[0]), float(r[1]), float(r[2]), float(r[3])),
                score=float(s),
                keypoints=tuple((float(x), float(y)) for x, y in r[4:].reshape(-1, 2)),
            )
            for r, s in zip(rows, scores, strict=True)
        ]
