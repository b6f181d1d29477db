"""Field sampling on the real device loop: the reference model on opencv/vtest.avi (people walking
in a street; the model sees them as "unicycle", "crutch", "ski": see test_alerts_clip.py).

Each test runs the Runner in-process over the start of the clip, as fast as inference allows,
and checks what it left in the outbox folder: JPEG + sidecar pairs that the ingest server would
take (SampleMeta, sha256 = sample_id = file name), within the limits and the day's budget.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.samples import SampleMeta

WALKER = ["unicycle", "crutch", "ski"]
RULE = {
    "name": "people",
    "groups": ["walker"],
    "start_score": 0.2,
    "end_score": 0.1,
    "cooldown_s": 0.0,  # frames, not seconds: the file runs as fast as it can
}
OPEN = {"max_per_hour": 1000, "min_interval_s": 0}  # a policy without limits


def run(write_config, tmp_path: Path, frames: int, sampling: dict, **sections) -> Any:
    from device.config import load_config
    from device.runner import Runner

    path = write_config(
        inference={"top_k": 5},
        sampling={"enabled": True, **sampling},
        upload={"outbox": {"dir": str(tmp_path / "samples")}},
        **sections,
    )
    runner = Runner(load_config(path), max_results=frames)
    assert runner.run() == 0
    return runner


def stored(tmp_path: Path) -> list[tuple[SampleMeta, bytes]]:
    """Every sample in the outbox, checked: the sidecar validates, the JPEG's sha256 is its
    sample_id and its file name."""
    out = []
    for meta_path in sorted((tmp_path / "samples").glob("*.json")):
        if meta_path.name == "sampling-budget.json":
            continue
        meta = SampleMeta.model_validate_json(meta_path.read_bytes())
        jpeg = meta_path.with_suffix(".jpg").read_bytes()
        assert hashlib.sha256(jpeg).hexdigest() == meta.sample_id == meta_path.stem
        out.append((meta, jpeg))
    return out


def decode(jpeg: bytes) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_policies_and_limits_on_the_real_clip(write_config, tmp_path) -> None:
    sampling = {
        "max_per_hour": 1000,
        "max_per_label_per_hour": 1000,
        "low_confidence": {"below": 0.3, "max_per_hour": 5, "min_interval_s": 0},
        "small_margin": {"enabled": False},
        "flip": {"max_per_hour": 3, "min_interval_s": 0},
        "alerts": OPEN,
        "near_threshold": {"band": 0.05, **OPEN},
        "random": {"enabled": False},
    }
    alerts = {"label_groups": {"walker": WALKER}, "rules": [RULE], "snapshots": {"enabled": False}}
    runner = run(write_config, tmp_path, 300, sampling, alerts=alerts)
    samples = stored(tmp_path)
    metrics = runner.metrics()
    policies = metrics["sampling"]["policies"]
    by_policy: dict[str, list[SampleMeta]] = {}
    for meta, _jpeg in samples:
        by_policy.setdefault(meta.policy, []).append(meta)
        assert (meta.device, meta.camera) == ("test-pi", "street")
        assert meta.model.name == "mobilenet_v2_1.0_224_quant" and len(meta.top) == 5
        assert meta.roi is None
    assert decode(samples[0][1]).shape == (576, 768, 3)  # the full frame

    # every decision became a file, and the limits held
    assert metrics["sampling"]["written"] == len(samples)
    for name in ("low_confidence", "flip", "alert_start", "alert_best", "near_threshold"):
        assert policies[name]["taken"] == len(by_policy.get(name, [])), name
        assert policies[name]["queue_dropped"] == 0  # a file source waits for inference
    assert policies["low_confidence"]["taken"] == 5 and policies["low_confidence"]["rate_limited"]
    assert policies["flip"]["taken"] == 3 and policies["flip"]["rate_limited"]
    for meta in by_policy["low_confidence"]:
        assert meta.top[0].score < 0.3

    # alert events: their start frame, and their best frame when it is another frame
    starts = {m.event_id: m for m in by_policy["alert_start"]}
    assert len(starts) == metrics["alerts"]["events"]["start"] >= 2
    for best in by_policy.get("alert_best", []):
        assert best.event_id in starts and best.ts >= starts[best.event_id].ts
        assert max(c.score for c in best.top if c.label.split(",")[0] in WALKER) >= 0.2

    # near threshold: the rule's score in [start_score - band, start_score)
    assert by_policy["near_threshold"]
    for meta in by_policy["near_threshold"]:
        score = max((c.score for c in meta.top if c.label.split(",")[0] in WALKER), default=0)
        assert 0.15 <= score < 0.2 and meta.event_id is None

    upload = metrics["upload"]
    assert upload["state"] == "off" and upload["pending"] == len(samples)


def test_the_daily_budget_holds_across_a_restart(write_config, tmp_path) -> None:
    budget = 0.3  # MB: two or three frames of this clip
    sampling = {
        "daily_mb": budget,
        "max_per_hour": 1000,
        "max_per_label_per_hour": 1000,
        "low_confidence": {"below": 1.0, **OPEN},  # every frame wants in
    }
    first = run(write_config, tmp_path, 20, sampling)
    taken = stored(tmp_path)
    jpeg_bytes = sum(len(j) for _, j in taken)
    assert len(taken) >= 1 and jpeg_bytes <= budget * 1048576
    policies = first.metrics()["sampling"]["policies"]
    assert policies["low_confidence"]["budget_exhausted"] > 0
    assert first.metrics()["sampling"]["bytes_today"] == jpeg_bytes

    second = run(write_config, tmp_path, 10, sampling)  # the same day: no fresh budget
    assert len(stored(tmp_path)) == len(taken)
    policies = second.metrics()["sampling"]["policies"]["low_confidence"]
    assert policies["taken"] == 0 and policies["budget_exhausted"] == 10


ONLY_LOW_CONFIDENCE = {
    "max_per_hour": 1000,
    "max_per_label_per_hour": 1000,
    "low_confidence": {"below": 1.0, "max_per_hour": 2, "min_interval_s": 0},
    "small_margin": {"enabled": False},
    "flip": {"enabled": False},
    "random": {"enabled": False},
}


def test_roi_crops_are_samples_of_their_own(write_config, tmp_path, test_data) -> None:
    roi = [0.0, 0.5, 1.0, 0.5]
    camera = {"name": "street", "source": str(test_data / "opencv" / "vtest.avi"), "roi": roi}
    sampling = {"crop_roi": True, **ONLY_LOW_CONFIDENCE}
    run(write_config, tmp_path, 5, sampling, cameras=[camera])
    samples = stored(tmp_path)
    full = [(m, j) for m, j in samples if m.roi is None]
    crops = [(m, j) for m, j in samples if m.roi is not None]
    assert len(full) == len(crops) == 2
    assert all(m.roi == roi for m, _ in crops)
    assert decode(full[0][1]).shape == (576, 768, 3)
    assert decode(crops[0][1]).shape == (288, 768, 3)
    assert {m.ts for m, _ in full} == {m.ts for m, _ in crops}


def test_an_unwritable_outbox_never_stops_the_loop(write_config, tmp_path, caplog) -> None:
    blocker = tmp_path / "samples"
    blocker.write_text("a file where the folder should be")
    runner = run(write_config, tmp_path, 20, ONLY_LOW_CONFIDENCE)
    metrics = runner.metrics()
    assert metrics["cameras"]["street"]["results"] == 20  # classifying went on
    assert metrics["sampling"]["failed"] == 2 and metrics["sampling"]["written"] == 0
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "not stored" in errors[0] and "samples" in errors[0]


def test_samples_name_the_model_that_classified_them_after_an_update(tmp_path, wait_until):
    """After a model update (device.rollout) results name another model: its samples say so."""
    from dataclasses import dataclass

    from device.postprocess import Class
    from device.sampling.config import SamplingConfig
    from device.sampling.sink import SamplingSink
    from device.sinks import Result
    from device.sources.base import Frame
    from device.upload.outbox import SampleOutbox

    @dataclass
    class Bundle:  # what the sink reads of a device.model.ModelBundle
        name: str
        version: str
        sha256: str
        variant: str = "int8"

        @property
        def ref(self) -> str:
            return f"{self.name}@{self.sha256[:12]}"

    old, new = Bundle("henhouse", "3", "a" * 64), Bundle("henhouse", "4", "b" * 64)
    running = [old]
    cfg = SamplingConfig.model_validate({"enabled": True, **ONLY_LOW_CONFIDENCE})
    box = SampleOutbox(tmp_path / "samples")
    sink = SamplingSink(cfg, "test-pi", box, old, bundles=lambda: running)
    sink.start()
    pixels = np.zeros((48, 64, 3), np.uint8)
    try:
        running[:] = [new]  # the camera swapped its classifier
        for i, bundle in enumerate((old, new)):
            frame = Frame(pixels + i, 100.0 + i, 1.7e9 + i, i)
            sink.handle(Result("street", frame, [Class(1, "hen", 0.2)], 5.0, 9.0, bundle.ref))
        wait_until(lambda: len(box) == 2, 10, what="two samples")
    finally:
        sink.close()
    versions = sorted(m.model.version for m, _ in stored(tmp_path))
    assert versions == ["3", "4"]


def test_alert_frames_of_a_rule_with_a_roi_keep_its_region(tmp_path, test_data, wait_until):
    """With crop_roi, an alert rule's frame is kept whole (the camera's top-k) and as the
    rule's region (that region's own top-k, the roi in the sidecar)."""
    from device.alerts.rules import roi_key
    from device.model import load_bundle
    from device.postprocess import Class
    from device.sampling.config import SamplingConfig
    from device.sampling.sink import SamplingSink
    from device.sources.base import Frame
    from device.upload.outbox import SampleOutbox

    coral = test_data / "coral"
    bundle, _ = load_bundle(
        coral / "mobilenet_v2_1.0_224_quant.tflite", coral / "imagenet_labels.txt"
    )
    cfg = SamplingConfig.model_validate({"enabled": True, "crop_roi": True})
    box = SampleOutbox(tmp_path / "samples")
    sink = SamplingSink(cfg, "test-pi", box, bundle)
    sink.start()
    roi = [0.5, 0.0, 0.5, 1.0]
    tops = {None: [Class(1, "street", 0.6)], roi_key(roi): [Class(2, "red fox", 0.7)]}
    pixels = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    try:
        sink.event_frame(
            "alert_start", "street", "ev-1", Frame(pixels, 1.0, 1.7e9, 7), tops, roi, "red fox"
        )
        wait_until(lambda: len(box) == 2, 10, what="the frame and its region")
    finally:
        sink.close()
    (whole, _), (region, jpeg) = sorted(stored(tmp_path), key=lambda s: s[0].roi is not None)
    assert whole.roi is None and [c.label for c in whole.top] == ["street"]
    assert region.roi == roi and [c.label for c in region.top] == ["red fox"]
    assert whole.event_id == region.event_id == "ev-1" and whole.policy == "alert_start"
    assert decode(jpeg).shape == (60, 40, 3)


def test_samples_pass_the_privacy_guard_and_fail_closed(write_config, tmp_path) -> None:
    """A camera's mask is blacked out in its samples (and recorded in the sidecar); when face
    redaction is on and its detector cannot run, no sample is stored at all."""
    left_half = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]
    privacy = {"cameras": {"street": {"masks": [left_half]}}}
    run(write_config, tmp_path, 5, ONLY_LOW_CONFIDENCE, privacy=privacy)
    samples = stored(tmp_path)
    assert len(samples) == 2
    for meta, jpeg in samples:
        assert meta.redaction is not None and meta.redaction.masks == 1
        image = decode(jpeg)
        assert image[:, : 768 // 2 - 8].max() < 40  # black (JPEG ringing aside)
        assert image[:, 768 // 2 + 8 :].mean() > 40  # the street

    faces = {"faces": {"enabled": True, "model": str(tmp_path / "missing.tflite")}}
    metrics = run(write_config, tmp_path / "x", 5, ONLY_LOW_CONFIDENCE, privacy=faces).metrics()
    assert (metrics["sampling"]["withheld"], metrics["sampling"]["written"]) == (2, 0)
    assert not list((tmp_path / "x").rglob("*.jpg"))


def test_a_full_encoder_queue_drops_the_sample_and_counts_it(tmp_path) -> None:
    """The inference thread never waits: past ``queue`` jobs, a new one is dropped."""
    from device.samples import SampleModel
    from device.sampling.config import SamplingConfig
    from device.sampling.policies import Sampler
    from device.sampling.writer import SampleJob, SampleWriter
    from device.upload.outbox import SampleOutbox

    cfg = SamplingConfig(enabled=True, queue=2)
    sampler = Sampler(cfg)
    writer = SampleWriter(cfg, sampler, SampleOutbox(tmp_path / "samples"), "test-pi")
    model = SampleModel(name="m", version="1", sha256="0" * 64, variant="int8")
    job = SampleJob("street", "flip", np.zeros((8, 8, 3), np.uint8), 1.7e9, [], model)
    assert [writer.offer(job) for _ in range(3)] == [True, True, False]  # not started: full
    assert sampler.counts["flip"].queue_dropped == 1
    writer.start()
    writer.stop()  # stores what was queued (the same JPEG twice: one sample)
    assert (writer.written, writer.duplicates) == (1, 1)
