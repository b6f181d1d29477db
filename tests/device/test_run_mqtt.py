"""edgecam-device run on the real clip against a real Mosquitto broker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "device.cli"]
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def run_config(tmp_path, test_data, write_config):
    """The shared test config, plus what these tests read: the clip looped, every result in
    results.jsonl, metrics every second."""

    def make(port: int | None, **sections) -> Path:
        base = {
            "cameras": [
                {"name": "street", "source": str(test_data / "opencv" / "vtest.avi"), "loop": True}
            ],
            "console": {"jsonl_path": str(tmp_path / "results.jsonl")},
            "metrics": {"interval": 1.0},
        }
        return write_config(port, **{**base, **sections})

    return make


def start(config: Path, *extra: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [*CLI, "run", "--config", str(config), *extra],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env=env,
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=20)


def payloads(messages) -> list[dict]:
    return [json.loads(m[1]) for m in messages]


def count_lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


def test_run_publishes_status_classifications_metrics_and_offline(
    tmp_path, run_config, broker, subscriber_factory
):
    sub = subscriber_factory(broker.port)
    config = run_config(broker.port)
    proc = start(config, log=tmp_path / "run.log")
    try:
        assert sub.wait_for(
            lambda ms: (
                any(t.endswith("/metrics") for t, _, _ in ms)
                and sum(t.endswith("/classification") for t, _, _ in ms) >= 3
            ),
            60,
        ), (tmp_path / "run.log").read_text()
        # A client connecting later gets the retained online status.
        late = subscriber_factory(broker.port, topic="edgecam/test-pi/status")
        assert late.wait_for(lambda ms: len(ms) >= 1, 10)
        topic, raw, retained = late.messages[0]
        status = json.loads(raw)
        assert retained and topic == "edgecam/test-pi/status"
        assert status["state"] == "online"
        assert set(status) >= {"state", "version", "model", "started_at"}
        assert set(status["model"]) >= {"name", "sha256", "variant", "backend"}
        assert status["model"]["sha256"].startswith("7aad0c74c5e3c06e")
        assert status["model"]["backend"] == "ai_edge_litert"
        assert status["model"]["variant"] == "int8"  # derived from the uint8 input tensor
        assert ISO_MS.match(status["started_at"])
    finally:
        rc = stop(proc)
    assert rc == 0, (tmp_path / "run.log").read_text()

    classifications = payloads(sub.on("edgecam/test-pi/street/classification"))
    assert len(classifications) >= 3
    for c in classifications:
        assert set(c) >= {"ts", "frame", "top", "latency_ms", "model"}
        assert ISO_MS.match(c["ts"])
        assert c["model"] == "mobilenet_v2_1.0_224_quant@7aad0c74c5e3"
        assert set(c["latency_ms"]) == {"inference", "total"}
        assert 0 < c["latency_ms"]["inference"] <= c["latency_ms"]["total"]
        assert 1 <= len(c["top"]) <= 3
        for cls in c["top"]:
            assert set(cls) == {"label", "index", "score"} and 0.0 <= cls["score"] <= 1.0
        scores = [cls["score"] for cls in c["top"]]
        assert scores == sorted(scores, reverse=True)
    frames = [c["frame"] for c in classifications]
    assert frames == sorted(frames)
    # Published on top-1 change or every interval, not on every frame.
    results = count_lines(tmp_path / "results.jsonl")
    assert len(classifications) < results

    metrics = payloads(sub.on("edgecam/test-pi/metrics"))
    cam = metrics[-1]["cameras"]["street"]
    assert cam["results"] > 0 and cam["fps"] > 0
    assert (
        set(cam["latency_ms"]) == {"p50", "p95"}
        and cam["latency_ms"]["p95"] >= cam["latency_ms"]["p50"] > 0
    )
    assert "dropped" in cam and metrics[-1]["rss_mb"] > 0

    statuses = sub.on("edgecam/test-pi/status")
    assert json.loads(statuses[-1][1])["state"] == "offline"


def test_last_will_after_sigkill(tmp_path, run_config, broker, subscriber_factory):
    sub = subscriber_factory(broker.port, topic="edgecam/test-pi/status")
    proc = start(run_config(broker.port), log=tmp_path / "run.log")
    try:
        assert sub.wait_for(
            lambda ms: any(json.loads(p)["state"] == "online" for _, p, _ in ms), 60
        )
    finally:
        stop(proc, signal.SIGKILL)
    assert sub.wait_for(lambda ms: json.loads(ms[-1][1])["state"] == "offline", 15)
    # The will is retained: a newcomer sees the device offline.
    late = subscriber_factory(broker.port, topic="edgecam/test-pi/status")
    assert late.wait_for(lambda ms: len(ms) >= 1, 10)
    assert json.loads(late.messages[0][1])["state"] == "offline" and late.messages[0][2]


def test_broker_late_and_lost_never_stops_the_camera(
    tmp_path, test_data, run_config, broker_factory, subscriber_factory, wait_until
):
    broker = broker_factory()  # not started yet: nothing listens on its port
    results = tmp_path / "results.jsonl"
    log = tmp_path / "run.log"
    proc = start(
        run_config(
            broker.port,
            cameras=[
                {
                    "name": "street",
                    "source": str(test_data / "opencv" / "vtest.avi"),
                    "loop": True,
                    "realtime": True,
                }
            ],
        ),
        log=tmp_path / "run.log",
    )
    try:
        wait_until(lambda: "not reachable" in log.read_text(), 60, what="the broker outage")
        wait_until(lambda: count_lines(results) > 10, 60, what="results with no broker at all")
        assert proc.poll() is None, log.read_text()
        broker.start()
        sub = subscriber_factory(broker.port)
        assert sub.wait_for(lambda ms: any(t.endswith("/classification") for t, _, _ in ms), 30), (
            tmp_path / "run.log"
        ).read_text()
        first_status = [json.loads(p) for _, p, _ in sub.on("/status")]
        assert first_status and first_status[-1]["state"] == "online"

        # Lose the broker mid-run: results keep coming, then the device reconnects.
        broker.stop()
        during = count_lines(results)
        wait_until(lambda: "lost connection" in log.read_text(), 30, what="the lost broker")
        wait_until(lambda: count_lines(results) > during + 10, 60, what="results meanwhile")
        assert proc.poll() is None
        broker.start()
        sub2 = subscriber_factory(broker.port)
        assert sub2.wait_for(
            lambda ms: any(
                t.endswith("/status")
                and json.loads(p)["ts"] > first_status[-1]["ts"]
                and json.loads(p)["state"] == "online"
                for t, p, _ in ms
            ),
            30,
        )
        assert sub2.wait_for(lambda ms: any(t.endswith("/classification") for t, _, _ in ms), 30)
    finally:
        assert stop(proc) == 0
    log = (tmp_path / "run.log").read_text()
    # one line per outage, not one per retry
    assert log.count("not reachable") == 1 and log.count("lost connection") == 1, log
    assert "lost connection" in log and "reconnected" in log


def test_broker_password(tmp_path, run_config, broker_factory, subscriber_factory, wait_until):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "cam", "s3cret-pw"], check=True)
    broker = broker_factory(password_file=passwd).start()
    sub = subscriber_factory(broker.port, auth=("cam", "s3cret-pw"))

    wrong = start(
        run_config(broker.port, mqtt={"username": "cam", "password": "wrong-pw"}),
        log=tmp_path / "wrong.log",
    )
    try:
        wait_until(lambda: "refused the connection" in (tmp_path / "wrong.log").read_text(), 30)
        assert wrong.poll() is None  # keeps classifying
    finally:
        stop(wrong)
    log = (tmp_path / "wrong.log").read_text()
    assert "refused the connection" in log and "EDGECAM_MQTT_PASSWORD" in log
    assert "wrong-pw" not in log  # never logged
    assert not sub.on("/classification")

    env_config = run_config(broker.port, mqtt={"username": "cam"})
    os.environ["EDGECAM_MQTT_PASSWORD"] = "s3cret-pw"
    try:
        right = start(env_config, log=tmp_path / "right.log")
    finally:
        del os.environ["EDGECAM_MQTT_PASSWORD"]
    try:
        assert sub.wait_for(lambda ms: any(t.endswith("/classification") for t, _, _ in ms), 60)
    finally:
        stop(right)
    assert "s3cret-pw" not in (tmp_path / "right.log").read_text()


def test_run_frames_and_two_cameras(tmp_path, test_data, run_config, broker, subscriber_factory):
    """Two cameras in one process: each has its own topics; --frames stops after N results."""
    sub = subscriber_factory(broker.port)
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("cat.bmp", "bird.bmp", "parrot.jpg"):
        (folder / name).write_bytes((test_data / "coral" / name).read_bytes())
    config = run_config(
        broker.port,
        cameras=[
            {"name": "street", "source": str(test_data / "opencv" / "vtest.avi")},
            {"name": "gallery", "source": str(folder), "loop": True},
        ],
        mqtt={"classification_interval": 0.01},
    )
    proc = subprocess.run(
        [*CLI, "run", "--config", str(config), "--frames", "12"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    by_cam = {cam: [r for r in lines if r["camera"] == cam] for cam in ("street", "gallery")}
    assert len(by_cam["street"]) == 12 and len(by_cam["gallery"]) == 12
    gallery_top = [r["top"][0]["label"] for r in by_cam["gallery"][:3]]
    assert gallery_top[:2] == ["chickadee", "Egyptian cat"]  # sorted: bird.bmp, cat.bmp, parrot.jpg
    assert sub.wait_for(
        lambda ms: (
            any("/gallery/classification" in t for t, _, _ in ms)
            and any("/street/classification" in t for t, _, _ in ms)
        ),
        10,
    )


# -- bad input: clear error, non-zero exit, no traceback ----------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def assert_clean_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_unreadable_video_missing_file_and_empty_folder_stop_at_start(tmp_path, run_config):
    """Config errors stop at start with exit 2 (an absent camera or stream is retried instead:
    test_supervision.py)."""
    config = run_config(None)
    fake = tmp_path / "clip.avi"
    fake.write_text("not a video")
    assert_clean_error(
        run_cli("run", "--config", str(config), "--source", str(fake)),
        "cannot read video",
        "clip.avi",
    )
    assert_clean_error(
        run_cli("run", "--config", str(config), "--source", str(tmp_path / "gone.mp4")),
        "source not found",
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(
        run_cli("run", "--config", str(config), "--source", str(empty)), "no images in"
    )


def test_run_missing_model(tmp_path, run_config):
    config = run_config(None)
    assert_clean_error(
        run_cli("run", "--config", str(config), "--model", str(tmp_path / "x.tflite")),
        "model file not found",
    )


@pytest.mark.parametrize("extra", [[], ["--realtime"]])
def test_run_without_broker_flag(tmp_path, run_config, extra):
    config = run_config(
        None, console={"format": "json", "jsonl_path": str(tmp_path / "results.jsonl")}
    )
    proc = subprocess.run(
        [*CLI, "run", "--config", str(config), "--frames", "5", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(x) for x in proc.stdout.splitlines()]
    assert printed and all(p["camera"] == "street" for p in printed)
    assert count_lines(tmp_path / "results.jsonl") == 5
