"""The "sampling-writer" thread: JPEG encoding, the sidecar, and the write into the outbox.

The inference threads only decide and copy pixels; the jobs wait in a bounded queue (a full
queue drops the new sample and counts it: the camera loop never waits). Here each job passes
the privacy guard (device.privacy: masks, faces; a frame it cannot make safe is withheld, never
stored) and becomes ``<sample_id>.jpg`` + ``<sample_id>.json`` (device.samples.SampleMeta,
validated before it is written, with the redaction record), charged to the day's byte budget, which is kept in a small file beside the samples so
that a restart does not grant a fresh budget.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from device.alerts.snapshots import SnapshotError, crop, encode_jpeg
from device.jobthread import JobThread
from device.mqtt import utc_iso
from device.privacy.guard import Withheld
from device.samples import Redaction, SampleMeta, SampleModel, sample_id
from device.sampling.config import SamplingConfig
from device.sampling.policies import Sampler
from device.supervision import describe_exception
from device.upload.outbox import SampleOutbox, write_atomic

if TYPE_CHECKING:
    from device.privacy.guard import PrivacyGuard

log = logging.getLogger(__name__)

BUDGET_FILE = "sampling-budget.json"


def utc_day(ts_wall: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts_wall))


@dataclass(frozen=True)
class SampleJob:
    """One frame to keep (full frame, plus its roi as a second sample when ``roi`` is set)."""

    camera: str
    policy: str
    pixels: np.ndarray  # a private copy
    ts_wall: float
    top: Sequence[Any]  # device.postprocess.Class, best first
    model: SampleModel
    event_id: str | None = None
    roi: Sequence[float] | None = None
    roi_top: Sequence[Any] | None = None  # the roi's own top-k list


class SampleWriter(JobThread[SampleJob]):
    def __init__(
        self,
        cfg: SamplingConfig,
        sampler: Sampler,
        outbox: SampleOutbox,
        device_id: str,
        privacy: PrivacyGuard | None = None,
    ):
        self.cfg = cfg
        self.privacy = privacy
        self.sampler = sampler
        self.outbox = outbox
        self.device_id = device_id
        super().__init__("sampling-writer", maxsize=cfg.queue)
        self.written = 0
        self.duplicates = 0  # the same JPEG was already waiting
        self.failed = 0
        self.withheld = 0  # privacy could not make the frame safe: not stored
        self.last_error: str | None = None
        self._failing = False
        self._budget_path = outbox.root / BUDGET_FILE
        self._load_budget()

    # -- the inference threads -------------------------------------------------------------------
    def offer(self, job: SampleJob) -> bool:
        """Queue a job; False (counted as queue_dropped) when the queue is full."""
        if super().offer(job):
            return True
        self.sampler.count_dropped(job.policy)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the thread."""
        super().stop(timeout)

    def do(self, job: SampleJob) -> None:
        self.write(job)

    # -- the work --------------------------------------------------------------------------------
    def write(self, job: SampleJob) -> list[str]:
        """Encode and store the job's sample(s); their sample ids."""
        cfg = self.cfg
        pixels, redaction = job.pixels, None
        if self.privacy is not None:
            try:
                safe = self.privacy.protect(job.camera, pixels, "sample")
            except Withheld:  # counted and logged by the guard
                self.withheld += 1
                return []
            pixels, redaction = safe.pixels, safe.redaction
        images = [(pixels, job.top, None)]
        if job.roi is not None:
            images.append((crop(pixels, job.roi), job.roi_top or job.top, list(job.roi)))
        day = utc_day(job.ts_wall)
        ids = []
        for image, top, roi in images:
            try:
                jpeg = encode_jpeg(image, cfg.quality, cfg.max_width)
            except SnapshotError as exc:
                self.on_error(exc, job)
                continue
            meta = self.meta(job, jpeg, top, roi, redaction)
            body = json.dumps(meta.to_json(), separators=(",", ":")).encode()
            if not self.sampler.spend(job.policy, day, len(jpeg), primary=roi is None):
                break  # the day's budget is spent (counted)
            try:
                stored = self.outbox.put(meta.sample_id, jpeg, body)
            except OSError as exc:
                self.on_error(exc, job)
                break
            self._save_budget()
            if stored:
                self.written += 1
            else:
                self.duplicates += 1
            ids.append(meta.sample_id)
            if self._failing:
                self._failing = False
                log.info("sampling: samples are written again to %s", self.outbox.root)
        return ids

    def meta(
        self,
        job: SampleJob,
        jpeg: bytes,
        top: Sequence[Any],
        roi: list[float] | None,
        redaction: Redaction | None = None,
    ) -> SampleMeta:
        return SampleMeta.model_validate(
            {
                "schema": "edgecam.sample/1",
                "sample_id": sample_id(jpeg),
                "device": self.device_id,
                "camera": job.camera,
                "ts": utc_iso(job.ts_wall),
                "model": job.model,
                "top": [c.as_dict() for c in top],
                "policy": job.policy,
                "event_id": job.event_id,
                "roi": roi,
                "redaction": redaction,
            }
        )

    def on_error(self, exc: Exception, job: SampleJob) -> None:  # one bad job never ends it
        self.failed += 1
        self.last_error = describe_exception(exc)
        if not self._failing:
            self._failing = True
            log.error(
                "sampling: a %s sample of %s was not stored: %s (logged once until one is)",
                job.policy,
                job.camera,
                self.last_error,
                exc_info=not isinstance(exc, (OSError, SnapshotError, ValidationError)),
            )

    # -- the day's budget, across restarts -------------------------------------------------------
    def _load_budget(self) -> None:
        try:
            state = json.loads(self._budget_path.read_text())
            day, used = str(state["day"]), int(state["used"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("sampling: ignoring %s (%s)", self._budget_path, exc)
            return
        budget = self.sampler.budget
        if day == utc_day(time.time()):
            budget.day, budget.used = day, max(0, used)

    def _save_budget(self) -> None:
        day, used = self.sampler.budget_state()
        try:
            write_atomic(self._budget_path, json.dumps({"day": day, "used": used}).encode())
        except OSError as exc:
            log.debug("sampling: cannot save the budget: %s", exc)

    def metrics(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "withheld": self.withheld,
            "last_error": self.last_error,
            "queued": self.queued,
        }
