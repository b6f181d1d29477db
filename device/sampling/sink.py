"""Field sampling on the device loop: the sink the runner adds, and the alert stepper's observer.

On the inference threads it only decides (device.sampling.policies.Sampler) and copies the
pixels of a chosen frame into a job; the "sampling-writer" thread encodes and stores it
(device.sampling.writer). The alert stepper calls ``rule_scores`` (near-threshold frames) and
``event_frame`` (the start and best frames of events) before this sink sees the same frame, so
a frame an alert took is not sampled twice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from device.alerts.rules import roi_key
from device.model import ModelBundle
from device.samples import SampleModel
from device.sampling.config import SamplingConfig
from device.sampling.policies import RuleScoreLike, Sampler
from device.sampling.writer import SampleJob, SampleWriter, utc_day
from device.sinks import Result, Sink
from device.sources.base import Frame
from device.upload.outbox import SampleOutbox

if TYPE_CHECKING:
    from device.privacy.guard import PrivacyGuard

log = logging.getLogger(__name__)

Tops = Mapping[Any, Sequence[Any]]


def sample_model(bundle: ModelBundle) -> SampleModel:
    return SampleModel(
        name=bundle.name, version=bundle.version, sha256=bundle.sha256, variant=bundle.variant
    )


class SamplingSink(Sink):
    name = "sampling"

    def __init__(
        self,
        cfg: SamplingConfig,
        device_id: str,
        outbox: SampleOutbox,
        bundle: ModelBundle,
        camera_rois: Mapping[str, Sequence[float] | None] | None = None,
        rng: random.Random | None = None,
        privacy: PrivacyGuard | None = None,
        bundles: Callable[[], Iterable[ModelBundle]] | None = None,
    ):
        """``bundles``: the models the cameras run now, looked up when results name a model
        not seen before (after a model update, device.rollout)."""
        self.cfg = cfg
        self.sampler = Sampler(cfg, rng)
        self.writer = SampleWriter(cfg, self.sampler, outbox, device_id, privacy)
        self.camera_rois = dict(camera_rois or {})
        self._models: dict[str, SampleModel] = {}
        self._bundles = bundles or (lambda: ())
        self._default = self.register_model(bundle)
        self._camera_model: dict[str, SampleModel] = {}
        self._unknown_models: set[str] = set()

    def register_model(self, bundle: ModelBundle) -> SampleModel:
        """Results that name this model (``<name>@<sha12>``) can be sampled."""
        model = self._models[bundle.ref] = sample_model(bundle)
        return model

    def _find_model(self, ref: str) -> SampleModel | None:
        for bundle in self._bundles():
            if bundle.ref == ref:
                return self.register_model(bundle)
        return None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.writer.start()

    def close(self) -> None:
        self.writer.stop()

    # -- the inference threads -------------------------------------------------------------------
    def handle(self, result: Result) -> None:
        model = self._models.get(result.model_ref) or self._find_model(result.model_ref)
        if model is None:
            if result.model_ref not in self._unknown_models:
                self._unknown_models.add(result.model_ref)
                log.warning("sampling: results of model %s are not sampled", result.model_ref)
            return
        self._camera_model[result.camera] = model
        frame = result.frame
        policy = self.sampler.on_frame(
            result.camera, frame.index, result.top, frame.ts_mono, utc_day(frame.ts_wall)
        )
        if policy is None:
            return
        self._offer(result.camera, policy, frame, frame.full_pixels.copy(), {None: result.top})

    def rule_scores(
        self, camera: str, frame: Frame, tops: Tops, scores: Sequence[RuleScoreLike]
    ) -> None:
        """The alert stepper's rule scores on a frame: near-threshold samples."""
        if not scores:
            return
        pick = self.sampler.on_rules(
            camera, frame.index, scores, frame.ts_mono, utc_day(frame.ts_wall)
        )
        if pick is None:
            return
        pixels = frame.full_pixels.copy()
        self._offer(camera, "near_threshold", frame, pixels, tops, getattr(pick, "roi", None))

    def event_frame(
        self,
        policy: str,
        camera: str,
        event_id: str,
        frame: Frame,
        tops: Tops,
        roi: Sequence[float] | None,
        label: str | None,
    ) -> None:
        """The start or best frame of an alert event (its ``pixels`` are already a copy of
        the full picture)."""
        if not self.sampler.on_event(
            policy, camera, frame.index, label, frame.ts_mono, utc_day(frame.ts_wall)
        ):
            return
        self._offer(camera, policy, frame, frame.pixels, tops, roi, event_id)

    def _offer(
        self,
        camera: str,
        policy: str,
        frame: Frame,
        pixels: np.ndarray,
        tops: Tops,
        rule_roi: Sequence[float] | None = None,
        event_id: str | None = None,
    ) -> None:
        """Queue a job: the frame with the camera's top-k (``tops[None]``), and with crop_roi
        also the alert rule's region (with its own top-k), else the camera's region."""
        roi, roi_top = None, None
        if self.cfg.crop_roi:
            roi = rule_roi if rule_roi is not None else self.camera_rois.get(camera)
            roi_top = tops.get(roi_key(rule_roi)) if rule_roi is not None else None
        model = self._camera_model.get(camera, self._default)
        top = list(tops.get(None, ()))
        job = SampleJob(camera, policy, pixels, frame.ts_wall, top, model, event_id, roi, roi_top)
        self.writer.offer(job)

    def metrics(self) -> dict[str, Any]:
        return {**self.sampler.metrics(), **self.writer.metrics()}
