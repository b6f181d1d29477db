"""Motion gating on real frames (opencv/vtest.avi: people walking in a street) and in the real
camera loop: the detector, its mask, the gate's heartbeats, and every frame classified while an
alert event is active."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.alerts.config import AlertsConfig
from device.alerts.rules import check_rules
from device.alerts.stepper import RuleStepper
from device.classifier import Classifier
from device.config import CameraConfig, parse_config
from device.errors import ConfigError
from device.motion import GreyCopy, MotionConfig, MotionDetector, MotionGate
from device.motion_bench import build_clip
from device.pipeline import CameraPipeline
from device.sinks import Result, Sink, SinkSet


@pytest.fixture
def street(street_frames) -> list[np.ndarray]:
    """The first 40 frames of the clip, RGB."""
    return street_frames[:40]


def moved(detector: MotionDetector, frames: list[np.ndarray], fps: float = 10.0) -> list[bool]:
    grey = GreyCopy()
    return [detector.update(grey.update(f), i / fps) for i, f in enumerate(frames)]


def test_still_street_with_sensor_noise_is_quiet_and_walking_people_are_motion(street) -> None:
    rng = np.random.default_rng(0)
    still = street[0].astype(np.int16)
    noisy = [
        np.clip(still + rng.normal(0, 4, still.shape), 0, 255).astype(np.uint8) for _ in range(30)
    ]
    quiet = moved(MotionDetector(MotionConfig()), noisy)
    assert quiet[0] and not any(quiet[1:])  # the first frame starts the background
    walking = moved(MotionDetector(MotionConfig()), street)
    assert all(walking)


def test_mask_of_rectangles_and_polygons_ignores_those_regions(street) -> None:
    top = [0.0, 0.0, 1.0, 0.5]  # a rectangle [x, y, w, h]
    bottom = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]  # a polygon
    masked = moved(MotionDetector(MotionConfig(mask=[top, bottom])), street)
    assert not any(masked[1:])
    half = moved(MotionDetector(MotionConfig(mask=[top])), street)  # people walk below too
    assert all(half)


def test_a_lighting_change_is_one_motion_frame_then_the_new_background(street) -> None:
    brighter = np.clip(street[0].astype(np.int16) * 2, 0, 255).astype(np.uint8)
    result = moved(MotionDetector(MotionConfig()), [street[0]] * 5 + [brighter] * 5)
    assert result == [True, False, False, False, False, True, False, False, False, False]


def test_gate_reasons_heartbeat_hold_and_event() -> None:
    active = threading.Event()
    gate = MotionGate(MotionConfig(heartbeat_s=2.0, hold_s=0.25), active.is_set)
    grey = np.full((120, 160), 100, np.uint8)
    reasons = [gate.decide(grey, i / 8) for i in range(40)]  # 8 fps: exact times
    assert reasons[0] == "motion" and reasons[1:3] == ["hold"] * 2 and reasons[3] is None
    # a heartbeat 2 s after the last frame classified (the hold's last)
    assert [i for i, r in enumerate(reasons) if r == "heartbeat"] == [18, 34]
    active.set()
    assert gate.decide(grey, 5.0) == "event"
    m = gate.metrics()
    assert m["heartbeats"] == 2 and m["classified"] == 6 and m["skipped"] == 35


def test_mask_config_errors_name_the_field_and_line() -> None:
    text = "cameras:\n  - name: a\n    motion:\n      mask: [[0.5, 0, 0.8, 1]]\n"
    with pytest.raises(ConfigError, match=r"line 4: cameras.0.motion.mask.0: .*inside the frame"):
        parse_config(text)
    text = "cameras:\n  - name: a\n    motion:\n      mask: [[[0, 0], [1, 1]]]\n"
    with pytest.raises(ConfigError, match=r"cameras.0.motion.mask.0: a polygon is 3 to"):
        parse_config(text)
    with pytest.raises(ConfigError, match=r"motion.threshold"):
        parse_config("cameras:\n  - name: a\n    motion: {threshold: 0}\n")


# -- in the real loop ------------------------------------------------------------------------------
class Recorder(Sink):
    name = "recorder"

    def __init__(self, stepper: RuleStepper | None = None) -> None:
        self.frames: list[int] = []
        self.stepper = stepper

    def handle(self, result: Result) -> None:
        self.frames.append(result.frame.index)
        if self.stepper is not None:
            self.stepper.handle(result.camera, result.frame, result.top)


@pytest.fixture(scope="module")
def small_model(test_data: Path) -> Classifier:
    coral = test_data / "coral"
    return Classifier.open(
        coral / "mobilenet_v1_0.25_128_quant.tflite", coral / "imagenet_labels.txt"
    )


@pytest.fixture(scope="module")
def clip(test_data: Path, tmp_path_factory):
    """6 s of the still street, 20 frames of people walking, 6 s still again (10 fps)."""
    dest = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return build_clip(test_data / "opencv" / "vtest.avi", dest, still_s=6.0, moving_frames=20)


def run_loop(clip, classifier, motion: MotionConfig, stepper: RuleStepper | None = None):
    recorder = Recorder(stepper)
    stop = threading.Event()
    pipeline = CameraPipeline(
        CameraConfig(name="street", source=str(clip.path), motion=motion),
        classifier,
        SinkSet([recorder]),
        stop,
        event_active=stepper.event_active if stepper is not None else None,
    )
    pipeline.start()
    assert pipeline.done.wait(60)
    stop.set()
    pipeline.join()
    return recorder.frames, pipeline.metrics()


def test_gated_loop_skips_the_still_street_with_heartbeats(clip, small_model) -> None:
    motion = MotionConfig(enabled=True, heartbeat_s=2.0, hold_s=0.5)
    frames, metrics = run_loop(clip, small_model, motion)
    first, end = clip.parts["moving"]
    assert metrics["frames"] == clip.frames == 140
    assert set(range(first + 1, end)) <= set(frames)  # every frame where people walk
    still = [f for f in frames if f < first]
    assert still[0] == 0 and len(still) <= 10  # the first frame, its hold and heartbeats
    beats = [f for f in still if f > 5]
    assert beats and all(b - a >= 20 for a, b in itertools.pairwise(beats))  # 2 s apart
    m = metrics["motion"]
    assert m["classified"] == len(frames) == metrics["results"]
    assert m["skipped"] == clip.frames - len(frames) > 60
    assert m["heartbeats"] >= 4  # in both still parts: results keep flowing
    ungated, _ = run_loop(clip, small_model, MotionConfig())
    assert ungated == list(range(clip.frames))


def test_every_frame_is_classified_while_an_alert_event_is_active(clip, small_model) -> None:
    cap = cv2.VideoCapture(str(clip.path))
    ok, first = cap.read()
    cap.release()
    assert ok
    top, _ = small_model.classify(cv2.cvtColor(first, cv2.COLOR_BGR2RGB))
    cfg = AlertsConfig.model_validate(
        {
            "rules": [
                {
                    "name": "scene",
                    "labels": [top[0].label],
                    "start_score": top[0].score / 2,
                    "start_frames": 1,
                    "end_frames": 1000,  # the still street never ends it
                }
            ],
            "snapshots": {"enabled": False},
        }
    )
    matchers = check_rules(cfg, ["street"], small_model.bundle.labels)
    jobs: list = []
    stepper = RuleStepper(cfg, ["street"], matchers, jobs.append, None, 3)
    motion = MotionConfig(enabled=True, heartbeat_s=2.0, hold_s=0.5)
    frames, metrics = run_loop(clip, small_model, motion, stepper)
    assert jobs and jobs[0].transition.kind == "start" and jobs[0].transition.obs.frame == 0
    assert frames == list(range(clip.frames))  # none skipped while the event is active
    assert metrics["motion"]["by_reason"]["event"] > 90 and metrics["motion"]["skipped"] == 0
