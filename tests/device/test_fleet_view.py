"""The fleet view against a real Mosquitto: a real device (Runner) beside simulated ones, one of
them gone (its last will), one on another model, one silent for hours; ``edgecam-fleet status``
as a user runs it (table, --json, exit status)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from device.config import load_config
from device.fleet import Broker, collect
from device.mqtt import utc_iso

WANT = "a" * 64
OTHER = "b" * 64
RULE = {"name": "people", "groups": ["walker"], "start_score": 0.2, "end_score": 0.1}
ALERTS = {"label_groups": {"walker": ["unicycle", "crutch", "ski"]}, "rules": [RULE]}


def status(sha: str, state: str = "online", age_s: float = 0.0) -> bytes:
    return json.dumps(
        {
            "state": state,
            "version": "0.1.0",
            "model": {
                "name": "garden",
                "version": "3",
                "sha256": sha,
                "variant": "int8",
                "backend": "ai_edge_litert",
                "accelerator": "cpu+xnnpack",
            },
            "uptime_s": 3600.0,
            "fps": 9.5,
            "last_alert": None,
            "started_at": utc_iso(time.time() - 3600),
            "ts": utc_iso(time.time() - age_s),
        }
    ).encode()


class SimDevice:
    """A device as the broker sees it: a retained status and a last will."""

    def __init__(self, port: int, device: str, sha: str, age_s: float = 0.0):
        self.topic = f"edgecam/{device}/status"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{device}")
        self.client.will_set(self.topic, status(sha, "offline"), qos=1, retain=True)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self.client.publish(
            self.topic, status(sha, age_s=age_s), qos=1, retain=True
        ).wait_for_publish(5)

    def vanish(self) -> None:
        """Lose the connection without a DISCONNECT: the broker publishes the last will."""
        self.client.loop_stop()
        self.client.socket().close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet(broker, write_config, test_data, wait_until):
    """A real device ``test-pi`` (with an alert rule and fast metrics) and four simulated ones."""
    from device.runner import Runner

    clip = str(test_data / "opencv" / "vtest.avi")
    path = write_config(
        broker.port,
        cameras=[{"name": "street", "source": clip, "loop": True, "realtime": True, "fps": 10}],
        alerts=ALERTS,
        metrics={"interval": 0.5},
    )
    runner = Runner(load_config(path), config_path=path)
    thread = threading.Thread(target=runner.run, name="test-runner")
    thread.start()
    sims = [
        SimDevice(broker.port, "pi-ok", WANT),
        SimDevice(broker.port, "pi-other-model", OTHER),
        SimDevice(broker.port, "pi-gone", WANT),
        SimDevice(broker.port, "pi-silent", WANT, age_s=7200),
    ]
    sims[2].vanish()
    yield runner
    runner.request_stop()
    thread.join(30)
    for sim in sims:
        sim.close()


def fleet_cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "device.fleet",
            "status",
            "--port",
            str(port),
            "--wait",
            "0.5",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fleet_status_marks_offline_stale_and_other_models(fleet, broker, wait_until):
    sha = fleet.status["model"]["sha256"]

    def real_device():
        seen = collect(Broker(port=broker.port), wait_s=0.3).devices
        device = seen.get("test-pi")
        ok = device and device.status.get("uptime_s", 0) > 0 and device.status.get("last_alert")
        return seen if ok else None

    # the device refreshes its retained status with the metrics: uptime, fps, the last alert
    devices = wait_until(real_device, 30, what="a refreshed status with an alert")
    pi = devices["test-pi"].status
    assert pi["state"] == "online" and pi["fps"] > 0 and pi["version"]
    assert set(pi["model"]) >= {"name", "version", "sha256", "variant", "backend", "accelerator"}
    assert pi["model"]["accelerator"] == "cpu+xnnpack" and pi["model"]["sha256"] == sha
    assert pi["last_alert"]["rule"] == "people" and pi["last_alert"]["camera"] == "street"
    assert {"state", "version", "started_at", "cameras", "host"} <= set(pi)  # older keys stay
    assert devices["pi-gone"].state == "offline"  # the last will

    proc = fleet_cli(broker.port, "--want-sha256", WANT)
    assert proc.returncode == 1, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert lines["DEVICE"].split()[:3] == ["DEVICE", "STATE", "VERSION"]
    assert not any(mark in lines["pi-ok"] for mark in ("OFFLINE", "STALE", "DIFFERS"))
    assert "OFFLINE" in lines["pi-gone"] and "offline" in lines["pi-gone"]
    assert "MODEL DIFFERS" in lines["pi-other-model"] and OTHER[:12] in lines["pi-other-model"]
    assert "STALE" in lines["pi-silent"]
    assert "MODEL DIFFERS" in lines["test-pi"] and "people" in lines["test-pi"]
    assert "5 device(s), 4 online, 4 marked" in proc.stdout

    proc = fleet_cli(broker.port, "--want-sha256", sha, "--json", "--stale-after", "1e9")
    out = json.loads(proc.stdout)
    problems = {d["device"]: d["problems"] for d in out["devices"]}
    assert problems == {
        "pi-gone": ["offline", "model"],
        "pi-ok": ["model"],
        "pi-other-model": ["model"],
        "pi-silent": ["model"],
        "test-pi": [],
    }
    assert out["counts"] == {"devices": 5, "online": 4, "with_problems": 4}


def test_fleet_status_usage_and_broker_errors(tmp_path, broker):
    proc = fleet_cli(broker.port, "--want-sha256", "xyz")
    assert proc.returncode == 2 and "--want-sha256 must be 64 hex digits" in proc.stderr
    proc = fleet_cli(broker.port, "--want-bundle", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr
    proc = fleet_cli(broker.port)  # an empty broker
    assert proc.returncode == 1 and "no device status on edgecam/+/status" in proc.stderr
    broker.stop()
    proc = fleet_cli(broker.port)
    assert proc.returncode == 2 and "cannot reach the MQTT broker" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fleet_view_and_rollout_load_no_tensorflow():
    code = (
        "import sys, device.fleet, device.rollout.service, device.rollout.startup\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'training', 'conversion')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
