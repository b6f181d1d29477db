"""Alerts against a real Mosquitto: Home Assistant discovery, commands, and a broker outage with
a device restart in the middle (store-and-forward through the SQLite outbox)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from device.config import parse_config

CLI = [sys.executable, "-m", "device.cli"]
WALKER = ["unicycle", "crutch", "ski"]
RULE = {
    "name": "people",
    "groups": ["walker"],
    "start_score": 0.2,
    "end_score": 0.1,
    "start_frames": 3,
    "end_frames": 10,
    "cooldown_s": 5.0,
}


class Subscriber:
    """A paho 2.x client recording (topic, payload, time); optionally a persistent session."""

    def __init__(
        self, port: int, topics: list[str], client_id: str | None = None, persistent: bool = False
    ):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, float]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{uuid.uuid4()}",
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(1, 1)
        # subscribe on every connect: survives a broker that lost its sessions
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, time.time()))

    def on(self, pattern: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if re.fullmatch(pattern, t)]

    def wait(self, pred: Callable[[], Any], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s")

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(tmp_path: Path, test_data: Path, port: int, rules: list[dict], **cam) -> Path:
    coral = test_data / "coral"
    config = {
        "device_id": "test-pi",
        "model": {
            "path": str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
            "labels": str(coral / "imagenet_labels.txt"),
        },
        "inference": {"top_k": 5, "threads": 1},
        "cameras": [{"name": "street", "source": str(test_data / "opencv" / "vtest.avi"), **cam}],
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "reconnect_min_s": 1,
            "reconnect_max_s": 1,
            "keepalive": 5,
            "classification_interval": 0.5,
        },
        "console": {"format": "off"},
        "metrics": {"interval": 60},
        "alerts": {
            "label_groups": {"walker": WALKER},
            "rules": rules,
            "snapshots": {"dir": str(tmp_path / "snapshots"), "max_width": 320},
            "outbox": {"path": str(tmp_path / "outbox.sqlite3"), "flush_timeout_s": 1.0},
        },
    }
    path = tmp_path / "device.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# -- Home Assistant discovery, checked against HA's own schemas --------------------------------
# Keys accepted by Home Assistant's MQTT integration (homeassistant/components/mqtt/:
# schemas.py MQTT_ENTITY_COMMON_SCHEMA, MQTT_AVAILABILITY_SCHEMA, MQTT_ENTITY_DEVICE_INFO_SCHEMA,
# MQTT_ORIGIN_INFO_SCHEMA; config.py MQTT_RO_SCHEMA; binary_sensor.py, sensor.py, image.py).
HA_COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "payload_available", "payload_not_available", "device", "origin", "enabled_by_default",
    "entity_category", "entity_picture", "icon", "json_attributes_topic",
    "json_attributes_template", "object_id", "default_entity_id", "unique_id", "name", "qos",
    "encoding",
}  # fmt: skip
HA_STATE = {"state_topic", "value_template"}
HA_PLATFORM = {
    "binary_sensor": HA_STATE
    | {"device_class", "expire_after", "force_update", "off_delay", "payload_off", "payload_on"},
    "sensor": HA_STATE
    | {
        "device_class", "expire_after", "force_update", "last_reset_value_template", "options",
        "suggested_display_precision", "state_class", "unit_of_measurement",
    },
    "image": {"content_type", "image_encoding", "image_topic", "url_template", "url_topic"},
}  # fmt: skip
HA_DEVICE = {
    "identifiers", "connections", "manufacturer", "model", "model_id", "name", "hw_version",
    "serial_number", "sw_version", "via_device", "suggested_area", "configuration_url",
}  # fmt: skip
HA_ORIGIN = {"name", "sw_version", "support_url"}
HA_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def check_ha_config(topic: str, config: dict) -> str:
    """Raise AssertionError where Home Assistant would reject the discovery message."""
    parts = topic.split("/")
    assert len(parts) == 5 and parts[0] == "homeassistant" and parts[4] == "config", topic
    component, node_id, object_id = parts[1:4]
    assert component in HA_PLATFORM, component
    assert HA_ID.match(node_id) and HA_ID.match(object_id), topic
    unknown = set(config) - HA_COMMON - HA_PLATFORM[component]
    assert not unknown, f"{topic}: keys HA does not accept: {unknown}"
    assert not ("availability" in config and "availability_topic" in config)
    assert "#" not in config["availability_topic"] and "+" not in config["availability_topic"]
    device = config["device"]
    assert set(device) <= HA_DEVICE and (device.get("identifiers") or device.get("connections"))
    assert all(isinstance(v, str) for v in device["identifiers"])
    assert set(config["origin"]) <= HA_ORIGIN and config["origin"]["name"]
    if component in ("binary_sensor", "sensor"):
        assert config["state_topic"]
    if component == "sensor" and "state_class" in config:
        assert config["state_class"] in ("measurement", "total", "total_increasing")
    if component == "image":
        assert ("image_topic" in config) != ("url_topic" in config)
        assert not ("content_type" in config and "url_topic" in config)
    return component


def render(template: str, payload: bytes) -> str:
    """Enough of HA's Jinja for ``{{ value_json.a.b }}`` templates."""
    match = re.fullmatch(r"\{\{\s*value_json((?:\.\w+)+)\s*\}\}", template)
    assert match, f"unexpected template {template}"
    value: Any = json.loads(payload)
    for key in match.group(1).strip(".").split("."):
        value = value[key]
    return str(value)


def command(sub: Subscriber, name: str, payload: bytes | dict, rid: str | None = None) -> dict:
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    before = len(sub.on(f"edgecam/test-pi/cmd/{name}/result"))
    sub.client.publish(f"edgecam/test-pi/cmd/{name}", payload, qos=1)
    replies = sub.wait(
        lambda: (r := sub.on(f"edgecam/test-pi/cmd/{name}/result"))[before:] and r, 15
    )
    reply = json.loads(replies[before])
    assert reply["command"] == name
    if rid is not None:
        assert reply["id"] == rid
    return reply


def test_home_assistant_discovery_and_commands(broker, test_data, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from device.runner import Runner

    path = write_config(tmp_path, test_data, broker.port, [RULE], loop=True, realtime=True, fps=10)
    sub = Subscriber(broker.port, ["homeassistant/#", "edgecam/test-pi/#"])
    runner = Runner(parse_config(path.read_text(), str(path)), config_path=path)
    thread = threading.Thread(target=runner.run, name="test-runner")
    thread.start()
    try:
        # -- discovery: one device, entities per camera and rule, availability from status
        configs = sub.wait(lambda: (c := sub.on(r"homeassistant/.*/config")) and len(c) >= 4 and c)
        topics = [t for t, _, _ in sub.messages if t.startswith("homeassistant/")]
        parsed = {t: json.loads(p) for t, p, _ in sub.messages if t.startswith("homeassistant/")}
        assert len(configs) == 4
        kinds = sorted(check_ha_config(t, c) for t, c in parsed.items())
        assert kinds == ["binary_sensor", "image", "sensor", "sensor"]
        assert len({c["unique_id"] for c in parsed.values()}) == 4
        assert len({json.dumps(c["device"], sort_keys=True) for c in parsed.values()}) == 1
        binary = next(c for t, c in parsed.items() if "/binary_sensor/" in t)
        status = sub.wait(lambda: sub.on("edgecam/test-pi/status"))[-1]
        assert binary["availability_topic"] == "edgecam/test-pi/status"
        assert render(binary["availability_template"], status) == binary["payload_available"]
        state = sub.wait(lambda: sub.on(re.escape(binary["state_topic"])))[-1]
        assert render(binary["value_template"], state) in (
            binary["payload_on"],
            binary["payload_off"],
        )
        image_cfg = next(c for t, c in parsed.items() if "/image/" in t)
        assert image_cfg["image_topic"] == "edgecam/test-pi/street/snapshot"
        classification = json.loads(sub.wait(lambda: sub.on(r".*/street/classification"))[-1])
        for sensor in (c for t, c in parsed.items() if "/sensor/" in t):
            assert sensor["state_topic"] == "edgecam/test-pi/street/classification"
            assert "value_json.top" in sensor["value_template"]
        assert {"label", "score"} <= set(classification["top"][0])
        assert all(t.startswith("homeassistant/") for t in topics)

        # -- malformed commands: an error on the result topic, nothing changes
        baseline = command(sub, "state", {"id": "s0"}, "s0")
        assert baseline["ok"] and baseline["result"]["paused"] == []
        bad = [
            ("pause", b"{not json", None, "not JSON"),
            ("pause", b"[1, 2]", None, "must be a JSON object"),
            ("pause", {"id": "m3", "minutes": "soon"}, "m3", "minutes"),
            ("pause", {"id": "m4", "camera": "garage"}, "m4", "camera 'garage' does not exist"),
            ("pause", {"id": "m5", "rule": "people", "for": 3}, "m5", "for: Extra inputs"),
            ("resume", {"id": "m6", "rule": "nobody"}, "m6", "rule 'nobody' does not exist"),
            ("explode", {"id": "m7"}, "m7", "unknown command 'explode'"),
        ]
        for name, payload, rid, error in bad:
            reply = command(sub, name, payload, rid)
            assert reply["ok"] is False and error in reply["error"], reply
        # a reload whose file has a label the model does not know is refused
        good_text = path.read_text()
        data = yaml.safe_load(good_text)
        data["alerts"]["rules"].append({"name": "cars", "labels": ["sports carr"]})
        path.write_text(yaml.safe_dump(data))
        reply = command(sub, "reload", {"id": "r1"}, "r1")
        assert reply["ok"] is False and "did you mean: sports car" in reply["error"]
        after = command(sub, "state", {"id": "s1"}, "s1")
        assert after["result"]["rules"] == baseline["result"]["rules"]
        assert after["result"]["paused"] == []

        # -- valid commands
        reply = command(sub, "pause", {"id": "p", "rule": "people", "minutes": 5}, "p")
        assert reply["ok"] and reply["result"]["paused"] == ["street/people"]
        assert command(sub, "state", {})["result"]["paused"] == ["street/people"]
        assert command(sub, "resume", {"id": "q"}, "q")["result"] == {"resumed": 1}

        reply = command(sub, "snapshot", {"id": "snap", "camera": "street"}, "snap")
        assert reply["ok"], reply
        saved = reply["result"]["snapshots"][0]
        assert (tmp_path / "snapshots" / saved["snapshot"]).is_file()
        jpeg = sub.wait(lambda: sub.on("edgecam/test-pi/street/snapshot"))[-1]
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)

        data["alerts"]["rules"][-1]["labels"] = ["sports car"]
        path.write_text(yaml.safe_dump(data))
        reply = command(sub, "reload", {"id": "r2"}, "r2")
        assert reply["ok"] and reply["result"]["rules"] == ["people", "cars"]
        new = sub.wait(
            lambda: sub.on(r"homeassistant/binary_sensor/edgecam_test-pi/street_cars/config")
        )
        check_ha_config(
            "homeassistant/binary_sensor/edgecam_test-pi/street_cars/config", json.loads(new[-1])
        )
    finally:
        runner.request_stop()
        thread.join(30)
        sub.stop()
    assert not thread.is_alive()


# -- store-and-forward: broker killed mid-event, device restarted while it is down --------------
def start_device(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [*CLI, "run", "--config", str(config), "--realtime", *extra],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env=env,
    )


def wait_log(log: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {log}:\n{log.read_text()[-3000:]}")


def test_every_event_survives_a_broker_outage_and_a_device_restart(broker, test_data, tmp_path):
    path = write_config(tmp_path, test_data, broker.port, [RULE], fps=10)
    alert_topic = "edgecam/test-pi/street/alert"
    # a persistent subscriber (Home Assistant, Node-RED, ...); the broker saves its session
    sub = Subscriber(broker.port, [alert_topic], client_id="alert-consumer", persistent=True)
    sub.subscribed.clear()
    broker.stop()
    broker.start()
    assert sub.subscribed.wait(15)

    log1, log2 = tmp_path / "device1.log", tmp_path / "device2.log"
    dev1 = start_device(path, log1)
    try:
        first = json.loads(sub.wait(lambda: sub.on(alert_topic), 60)[0])
        assert first["type"] == "start"
        broker.stop(kill=True)  # the broker dies in the middle of the event
        killed_at = time.time()
        wait_log(log1, "MQTT: lost connection")
        time.sleep(1.0)
        dev1.send_signal(signal.SIGTERM)  # the device restarts while the broker is down
        assert dev1.wait(30) == 0
        assert "stay in the outbox" in log1.read_text()

        dev2 = start_device(path, log2, "--frames", "90")
        wait_log(log2, "alert people start", 60)  # a new event while the broker is still down
        time.sleep(1.0)
        restarted_at = time.time()
        broker.start()
        assert dev2.wait(60) == 0
    finally:
        for proc in (dev1, locals().get("dev2")):
            if proc is not None and proc.poll() is None:
                proc.kill()
    sub.wait(lambda: sum(json.loads(p)["type"] == "end" for p in sub.on(alert_topic)) >= 2, 20)
    time.sleep(0.5)
    sub.stop()

    with sub.lock:
        received = [(json.loads(p), t) for topic, p, t in sub.messages if topic == alert_topic]
    unique: dict[tuple[str, int], tuple[dict, float]] = {}
    for msg, t in received:
        unique.setdefault((msg["event_id"], msg["seq"]), (msg, t))
    duplicates = len(received) - len(unique)
    ordered = [m for m, _ in unique.values()]  # first arrival of each message, in arrival order
    events: dict[str, list[dict]] = {}
    for m in ordered:
        events.setdefault(m["event_id"], []).append(m)
    assert len(events) == 2, [(m["event_id"], m["type"]) for m in ordered]
    ev1, ev2 = events.values()
    # every event complete and exactly once by (event_id, seq), each in order
    for msgs in (ev1, ev2):
        assert [m["seq"] for m in msgs] == list(range(len(msgs)))
        assert msgs[0]["type"] == "start" and msgs[-1]["type"] == "end"
    assert ev1[0]["event_id"] == first["event_id"]
    assert ev1[-1]["reason"] == "stopped"  # ended by the restart of the first process
    # in order across events: all of the first event before the second
    assert ordered.index(ev1[-1]) < ordered.index(ev2[0])
    # marked with their original times, not the time they were delivered
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(restarted_at))
    assert ev1[-1]["ts"] < iso and ev2[0]["ts"] < iso
    assert ev1[-1]["ts"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(killed_at - 1))
    delays = [t - restarted_at for m, t in unique.values() if m["ts"] < iso]
    late = [(m, t) for m, t in unique.values() if t > restarted_at]
    # the outbox is empty: everything was acknowledged
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM open_events").fetchone()[0] == 0
    log_text = log2.read_text()
    assert "undelivered message(s) from an earlier run" in log_text
    backlog = re.search(r"(\d+) undelivered message\(s\) from an earlier run", log_text)
    print(
        f"\noutage: outbox held {backlog.group(1)} message(s) from the first process at restart; "
        f"{len(received)} alert messages received, {len(unique)} unique, "
        f"{duplicates} duplicate(s) collapsed; {len(late)} delivered after the broker came back "
        f"(max {max(delays):.2f} s after its restart); outbox empty at the end"
    )
