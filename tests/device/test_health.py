"""Camera health on real frames (opencv/vtest.avi) transformed the way cameras fail: darkened,
overexposed, blurred with a Gaussian kernel, covered by a uniform patch, frozen, gone. Each
problem is raised after its hysteresis and cleared when the picture recovers: in the monitor on
its own, and in the running device over a real Mosquitto (retained health state, events on the
alert topic, the Home Assistant problem sensor). The USB camera is the one hardware fake."""

from __future__ import annotations

import json
import threading
import time
from typing import ClassVar

import cv2
import numpy as np
import pytest

from device.config import load_config, parse_config
from device.errors import ConfigError
from device.health import HealthConfig, HealthMonitor
from device.motion import GreyCopy
from device.runner import Runner


@pytest.fixture
def street(street_frames) -> list[np.ndarray]:
    """The first 60 frames of the clip, RGB."""
    return street_frames


def darkened(px: np.ndarray) -> np.ndarray:
    return (px * 0.08).astype(np.uint8)  # night without light, or a hand over the lens


def overexposed(px: np.ndarray) -> np.ndarray:
    return np.clip(px.astype(np.int32) * 4, 0, 255).astype(np.uint8)


def blurred(px: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(px, (21, 21), 0)  # out of focus, or a fogged lens


def covered(px: np.ndarray) -> np.ndarray:
    out = px.copy()
    out[: int(px.shape[0] * 0.9)] = 90  # a uniform patch over 90 % of the picture
    return out


class Recorded:
    """A HealthSink that keeps what it is given."""

    def __init__(self) -> None:
        self.states: list[dict] = []
        self.events: list[dict] = []

    def publish_health(self, camera, state, event) -> None:
        self.states.append(state)
        if event is not None:
            self.events.append(event)


def feed(monitor: HealthMonitor, frames, t0: float, seconds: float, fps: float = 10.0) -> float:
    grey = GreyCopy()
    n = round(seconds * fps)
    for i in range(n):
        monitor.observe(grey.update(frames[i % len(frames)]), t0 + i / fps)
    return t0 + n / fps


def test_each_failure_is_raised_after_its_hysteresis_and_cleared_on_recovery(street) -> None:
    sink = Recorded()
    monitor = HealthMonitor("street", HealthConfig(raise_s=1.0, clear_s=1.0), sink, live=True)
    t = feed(monitor, street, 0.0, 2.0)
    assert monitor.problems == [] and monitor.measures is not None
    frozen = [street[0]] * 10
    for name, frames in [
        ("dark", [darkened(f) for f in street]),
        ("bright", [overexposed(f) for f in street]),
        ("blurred", [blurred(f) for f in street]),
        ("covered", [covered(f) for f in street]),
        ("frozen", frozen),
    ]:
        t_half = feed(monitor, frames, t, 0.6)
        assert monitor.problems == [], f"{name} raised before its raise_s"
        t = feed(monitor, frames, t_half, 1.0)
        assert monitor.problems == [name]  # only this one (dark is not also "covered")
        t = feed(monitor, street, t, 0.6)
        assert monitor.problems == [name], f"{name} cleared before its clear_s"
        t = feed(monitor, street, t, 1.0)
        assert monitor.problems == []
    kinds = [(e["type"], e["rule"]) for e in sink.events]
    names = ["dark", "bright", "blurred", "covered", "frozen"]
    assert kinds == [(k, f"health.{n}") for n in names for k in ("start", "end")]
    start, end = sink.events[0], sink.events[1]
    assert start["event_id"] == end["event_id"] and (start["seq"], end["seq"]) == (0, 1)
    assert start["kind"] == "health" and start["problem"] == "dark" and start["limit"] == 20
    assert start["value"] < 20 and end["duration_s"] >= 0 and end["reason"] is None
    raised = sink.states[0]
    assert raised["state"] == "problem" and raised["problems"] == ["dark"]
    assert raised["details"]["dark"]["limit"] == 20 and sink.states[-1]["state"] == "ok"


def test_a_plain_scene_is_not_blurred_the_camera_is_judged_against_itself(street) -> None:
    sink = Recorded()
    cfg = HealthConfig(raise_s=1.0, clear_s=1.0, baseline_s=5.0)
    monitor = HealthMonitor("street", cfg, sink, live=False)
    soft = [blurred(f) for f in street]
    t = feed(monitor, soft, 0.0, 10.0)  # a camera that always saw a soft picture
    assert monitor.problems == []
    t = feed(monitor, street, t, 20.0)  # a sharp scene becomes the baseline ...
    t = feed(monitor, soft, t, 2.0)  # ... and losing focus then is a problem
    assert monitor.problems == ["blurred"]
    assert monitor.state()["measures"]["focus_baseline"] > 3 * monitor.measures.focus


def test_no_frames_raised_when_frames_stop_and_cleared_when_they_come_back(street) -> None:
    now = [100.0]
    sink = Recorded()
    monitor = HealthMonitor(
        "door", HealthConfig(raise_s=10.0, clear_s=5.0), sink, clock=lambda: now[0]
    )
    grey = GreyCopy().update(street[0])
    monitor.observe(grey, 0.0)
    for step in range(1, 30):
        now[0] = 100.0 + step
        monitor.tick("reconnecting")  # the capture thread's outage: no frame since 100 s
    assert monitor.problems == ["no_frames"] and sink.events[0]["value"] >= 10
    for step in range(30, 40):
        now[0] = 100.0 + step
        monitor.observe(grey, step * 1.0)
        monitor.tick("running")
    assert monitor.problems == [] and [e["type"] for e in sink.events] == ["start", "end"]
    now[0] = 1000.0
    monitor.tick("finished")  # a file that ended expects no frames
    assert monitor.problems == []


def test_stop_ends_raised_problems(street) -> None:
    sink = Recorded()
    monitor = HealthMonitor("street", HealthConfig(raise_s=0.5, checks=["dark"]), sink)
    feed(monitor, [darkened(f) for f in street], 0.0, 1.0)
    assert monitor.problems == ["dark"]
    monitor.stop()
    assert monitor.problems == [] and sink.events[-1]["reason"] == "stopped"


def test_health_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"cameras.0.health.checks.0: Input should be 'dark'"):
        parse_config("cameras:\n  - name: a\n    health: {checks: [dusty]}\n")
    with pytest.raises(ConfigError, match=r"cameras.0.health.blur_ratio"):
        parse_config("cameras:\n  - name: a\n    health: {blur_ratio: 1.5}\n")


# -- the running device, a real broker ------------------------------------------------------------
PHASES = [  # (what the camera shows, seconds)
    ("normal", 1.5),
    ("dark", 1.0),
    ("normal", 1.0),
    ("blurred", 1.0),
    ("normal", 1.0),
    ("covered", 1.0),
    ("normal", 1.0),
    ("frozen", 1.0),
    ("normal", 1.0),
    ("gone", 1.2),
]
SCRIPT_S = sum(s for _, s in PHASES)


class ScriptedUsbCamera:
    """Stands in for cv2.VideoCapture(0): a USB camera at 30 fps showing the street, then
    failing the ways of PHASES (time-based, so a busy machine stretches nothing)."""

    frames: ClassVar[list[np.ndarray]] = []  # BGR
    started: float | None = None
    opens = 0

    def __init__(self, spec, *args):
        assert spec == 0, spec
        ScriptedUsbCamera.opens += 1
        self.released = False
        self.next_due = time.monotonic()

    @classmethod
    def phase(cls) -> tuple[str, float]:
        if cls.started is None:
            cls.started = time.monotonic()
        elapsed = time.monotonic() - cls.started
        at = 0.0
        for name, seconds in PHASES:
            if elapsed < at + seconds:
                return name, elapsed
            at += seconds
        return "normal", elapsed

    def isOpened(self) -> bool:  # OpenCV's name
        return not self.released

    def set(self, prop, value) -> bool:
        return True

    def get(self, prop) -> float:
        h, w = self.frames[0].shape[:2]
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_WIDTH: w}.get(
            prop, h if prop == cv2.CAP_PROP_FRAME_HEIGHT else 0.0
        )

    def read(self):
        self.next_due += 1 / 30  # the sensor's pace
        time.sleep(max(0.0, self.next_due - time.monotonic()))
        name, elapsed = self.phase()
        if name == "gone" or self.released:
            return False, None  # unplugged: nothing comes
        if name == "frozen":
            return True, self.frames[0].copy()
        frame = self.frames[int(elapsed * 10) % len(self.frames)]  # the street at 10 fps
        transform = {"dark": darkened, "blurred": blurred, "covered": covered}.get(name)
        return True, (frame.copy() if transform is None else transform(frame))

    def release(self) -> None:
        self.released = True


def test_health_over_mqtt_state_events_and_home_assistant(
    street, test_data, write_config, broker, subscriber_factory, monkeypatch, wait_until
):
    import device.sources.opencv as opencv_source

    ScriptedUsbCamera.frames = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in street]
    ScriptedUsbCamera.started = None
    monkeypatch.setattr(opencv_source.cv2, "VideoCapture", ScriptedUsbCamera)
    sub = subscriber_factory(broker.port)
    coral = test_data / "coral"
    config = load_config(
        write_config(
            broker.port,
            model={"path": str(coral / "mobilenet_v1_0.25_128_quant.tflite")},
            cameras=[
                {
                    "name": "door",
                    "source": "0",
                    "reconnect_max_s": 0.5,
                    "health": {"enabled": True, "raise_s": 0.3, "clear_s": 0.3},
                }
            ],
        )
    )
    runner = Runner(config)
    thread = threading.Thread(target=runner.run, name="device", daemon=True)
    thread.start()
    try:
        health = "edgecam/test-pi/door/health"

        def states() -> list[dict]:
            return [json.loads(p) for t, p, _ in sub.messages if t == health]

        def seen_all(_=None) -> bool:
            problems = [s["problems"] for s in states()]
            raised = {p for ps in problems for p in ps}
            return raised >= {"dark", "blurred", "covered", "frozen", "no_frames"} and bool(
                problems and not problems[-1] and ScriptedUsbCamera.started
            )

        assert sub.wait_for(seen_all, timeout=SCRIPT_S + 30), [s["problems"] for s in states()]
        wait_until(
            lambda: time.monotonic() - ScriptedUsbCamera.started > SCRIPT_S + 0.5,
            what="the script",
        )
        assert sub.wait_for(lambda _: not states()[-1]["problems"], timeout=10)
    finally:
        runner.request_stop()
        thread.join(20)
    # each problem raised, then cleared when the picture came back, in the order they came
    sequence = [tuple(s["problems"]) for s in states()]
    assert sequence[0] == ()  # the state at start: ok
    order = []
    for problems in sequence:
        for p in problems:
            if p not in order:
                order.append(p)
    assert [p for p in order if p != "no_frames"] == ["dark", "blurred", "covered", "frozen"]
    frozen_at = next(i for i, ps in enumerate(sequence) if "frozen" in ps)
    assert any("no_frames" in ps for ps in sequence[frozen_at:]), sequence  # then unplugged
    assert all(s["camera"] == "door" and s["state"] in ("ok", "problem") for s in states())
    # events on the alert topic: start and end of each, through the outbox (QoS 1)
    events = sub.json_on("edgecam/test-pi/door/alert")
    pairs = [(e["type"], e["rule"]) for e in events]
    for p in order:
        assert ("start", f"health.{p}") in pairs and ("end", f"health.{p}") in pairs
        assert p == "no_frames" or pairs.count(("start", f"health.{p}")) == 1
    start = next(e for e in events if e["rule"] == "health.dark")
    assert start["device"] == "test-pi" and start["kind"] == "health" and start["value"] < 20
    # Home Assistant: a problem sensor on the retained health state
    topic = "homeassistant/binary_sensor/edgecam_test-pi/door_health/config"
    cfg = json.loads(next(p for t, p, _ in sub.messages if t == topic))
    assert cfg["device_class"] == "problem" and cfg["state_topic"] == health
    assert (cfg["payload_on"], cfg["payload_off"]) == ("problem", "ok")
    # retained: a newcomer learns the current state at once
    late = subscriber_factory(broker.port, topic=health)
    assert late.wait_for(lambda ms: bool(ms), timeout=10)
    _, payload, retained = late.messages[0]
    assert retained and json.loads(payload)["state"] == "ok"
    assert ScriptedUsbCamera.opens >= 2  # the camera was reopened after it was gone
