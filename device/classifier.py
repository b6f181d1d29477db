"""Model + backend + preprocessing + postprocessing: a frame in, scored classes out.

Training and conversion evaluate ``.tflite`` files through this class too, so the figures seen
on the workstation are the figures the Pi produces.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device.errors import EdgeTPUError
from device.inference import InferenceBackend
from device.model import ModelBundle, load_bundle
from device.postprocess import Class, classify, scores_from_output
from device.preprocess import Preprocessor

if TYPE_CHECKING:
    from device.config import InferenceConfig, ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceOptions:
    """The interpreter options (InferenceBackend's keyword arguments)."""

    threads: int | None = None
    xnnpack: bool = True
    edgetpu: bool = False
    edgetpu_device: str = "usb"
    runtime: str | None = None

    @classmethod
    def from_config(cls, inference: InferenceConfig) -> InferenceOptions:
        return cls(
            threads=inference.threads,
            xnnpack=inference.xnnpack,
            edgetpu=inference.edgetpu,
            edgetpu_device=inference.edgetpu_device,
            runtime=inference.runtime,
        )

    def on_cpu(self) -> InferenceOptions:
        """The same options without the Edge TPU (for a fallback CPU model)."""
        return InferenceOptions(threads=self.threads, xnnpack=self.xnnpack, runtime=self.runtime)


class Classifier:
    """Classifies RGB frames with one model. Not thread-safe: one per camera thread."""

    def __init__(
        self,
        bundle: ModelBundle,
        model_bytes: bytes,
        options: InferenceOptions | None = None,
        roi: Sequence[float] | None = None,
    ):
        options = options or InferenceOptions()
        self.bundle = bundle
        self.options = options
        self.backend = InferenceBackend(bundle, model_bytes, **dataclasses.asdict(options))
        self.preprocessor = Preprocessor(bundle.input, self.backend.input, roi=roi)
        self._input = self.preprocessor.new_buffer()

    @classmethod
    def from_config(
        cls,
        model: ModelConfig,
        inference: InferenceConfig,
        roi: Sequence[float] | None = None,
    ) -> Classifier:
        """The one way the runner and the CLIs (classify, bench) build a classifier: from the
        ``model:`` and ``inference:`` config sections (the CLIs build them from their flags)."""
        return cls.open(
            model.path,
            model.labels,
            options=InferenceOptions.from_config(inference),
            fallback=model.fallback,
            fallback_labels=model.fallback_labels,
            roi=list(roi) if roi is not None else None,
            mean=model.mean,
            std=model.std,
            resize=model.resize,
            crop=model.crop,
            allow_failed_gate=model.allow_failed_gate,
        )

    @classmethod
    def open(
        cls,
        model: str | Path,
        labels: str | Path | None = None,
        *,
        options: InferenceOptions | None = None,
        fallback: str | Path | None = None,
        fallback_labels: str | Path | None = None,
        roi: Sequence[float] | None = None,
        **input_overrides: Any,
    ) -> Classifier:
        """Load a model; when it needs an Edge TPU that is absent, use ``fallback`` if given."""
        options = options or InferenceOptions()
        bundle, data = load_bundle(model, labels, **input_overrides)
        try:
            return cls(bundle, data, options, roi=roi)
        except EdgeTPUError as exc:
            if fallback is None:
                raise
            log.warning("%s; using the fallback CPU model %s", exc.message, fallback)
        bundle, data = load_bundle(fallback, fallback_labels or labels, **input_overrides)
        return cls(bundle, data, options.on_cpu(), roi=roi)

    @property
    def backend_name(self) -> str:
        return self.backend.backend_name

    def prepare(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self.preprocessor.process(frame, out if out is not None else self._input)

    def classify_tensor(
        self, tensor: np.ndarray, k: int = 3, min_score: float = 0.0
    ) -> tuple[list[Class], float]:
        raw, ms = self.backend.run(tensor)
        out = self.backend.output
        return classify(raw, out.scale, out.zero_point, self.bundle.labels, k, min_score), ms

    def scores(self, frame: np.ndarray) -> np.ndarray:
        """All class scores in [0, 1] for one frame (for evaluation)."""

        raw, _ = self.backend.run(self.prepare(frame))
        return scores_from_output(raw, self.backend.output.scale, self.backend.output.zero_point)

    def classify(
        self, frame: np.ndarray, k: int = 3, min_score: float = 0.0
    ) -> tuple[list[Class], float]:
        """Top-k classes for an RGB frame and the inference time in ms."""
        return self.classify_tensor(self.prepare(frame), k, min_score)
