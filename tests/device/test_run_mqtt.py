"""edgecam-device run on the real clip against a real Mosquitto broker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

CLI = [sys.executable, "-m", "device.cli"]
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def write_config(tmp_path: Path, test_data: Path, port: int, **sections) -> Path:
    coral = test_data / "coral"
    config = {
        "device_id": "test-pi",
        "model": {
            "path": str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
            "labels": str(coral / "imagenet_labels.txt"),
        },
        "inference": {"threads": 1},
        "cameras": [
            {"name": "street", "source": str(test_data / "opencv" / "vtest.avi"), "loop": True}
        ],
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "classification_interval": 0.5,
            "reconnect_min_s": 1,
            "reconnect_max_s": 2,
            "keepalive": 10,
        },
        "console": {"format": "off", "jsonl_path": str(tmp_path / "results.jsonl")},
        "metrics": {"interval": 1.0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path = tmp_path / "device.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


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
    tmp_path, test_data, broker, subscriber_factory
):
    sub = subscriber_factory(broker.port)
    config = write_config(tmp_path, test_data, broker.port)
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


def test_last_will_after_sigkill(tmp_path, test_data, broker, subscriber_factory):
    sub = subscriber_factory(broker.port, topic="edgecam/test-pi/status")
    proc = start(write_config(tmp_path, test_data, broker.port), log=tmp_path / "run.log")
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
    tmp_path, test_data, broker_factory, subscriber_factory
):
    broker = broker_factory()  # not started yet: nothing listens on its port
    results = tmp_path / "results.jsonl"
    proc = start(
        write_config(
            tmp_path,
            test_data,
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
        time.sleep(5)
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        before = count_lines(results)
        assert before > 10  # classifying with no broker at all
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
        time.sleep(3)
        assert proc.poll() is None
        assert count_lines(results) > during + 10
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


def test_broker_password(tmp_path, test_data, broker_factory, subscriber_factory):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "cam", "s3cret-pw"], check=True)
    broker = broker_factory(password_file=passwd).start()
    sub = subscriber_factory(broker.port, auth=("cam", "s3cret-pw"))

    wrong = start(
        write_config(
            tmp_path, test_data, broker.port, mqtt={"username": "cam", "password": "wrong-pw"}
        ),
        log=tmp_path / "wrong.log",
    )
    try:
        deadline = time.monotonic() + 20
        while (
            "refused the connection" not in (tmp_path / "wrong.log").read_text()
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert wrong.poll() is None  # keeps classifying
    finally:
        stop(wrong)
    log = (tmp_path / "wrong.log").read_text()
    assert "refused the connection" in log and "EDGECAM_MQTT_PASSWORD" in log
    assert "wrong-pw" not in log  # never logged
    assert not sub.on("/classification")

    env_config = write_config(tmp_path, test_data, broker.port, mqtt={"username": "cam"})
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


def test_run_frames_and_two_cameras(tmp_path, test_data, broker, subscriber_factory):
    """Two cameras in one process: each has its own topics; --frames stops after N results."""
    sub = subscriber_factory(broker.port)
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("cat.bmp", "bird.bmp", "parrot.jpg"):
        (folder / name).write_bytes((test_data / "coral" / name).read_bytes())
    config = write_config(
        tmp_path,
        test_data,
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
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_unreadable_video_and_missing_camera(tmp_path, test_data):
    config = write_config(tmp_path, test_data, 1, mqtt={"enabled": False})
    fake = tmp_path / "clip.avi"
    fake.write_text("not a video")
    assert_clean_error(
        run_cli("run", "--config", str(config), "--source", str(fake)),
        "cannot read video",
        "clip.avi",
    )
    assert_clean_error(
        run_cli("run", "--config", str(config), "--source", "7"),
        "cannot open camera 7",
        "/dev/video",
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


def test_run_missing_model(tmp_path, test_data):
    config = write_config(tmp_path, test_data, 1, mqtt={"enabled": False})
    assert_clean_error(
        run_cli("run", "--config", str(config), "--model", str(tmp_path / "x.tflite")),
        "model file not found",
    )


@pytest.mark.parametrize("extra", [[], ["--realtime"]])
def test_run_without_broker_flag(tmp_path, test_data, extra):
    config = write_config(
        tmp_path, test_data, 1, mqtt={"enabled": False}, console={"format": "json"}
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
