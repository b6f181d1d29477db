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
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from device.config import load_config

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


def alerts_config(write_config, test_data: Path, port: int, rules: list[dict], **camera) -> Path:
    """The device config of these tests: the clip as camera ``street``, top-5, the rules."""
    clip = test_data / "opencv" / "vtest.avi"
    return write_config(
        port,
        inference={"top_k": 5},
        mqtt={"reconnect_max_s": 1, "keepalive": 5},
        cameras=[{"name": "street", "source": str(clip), **camera}],
        alerts={
            "label_groups": {"walker": WALKER},
            "rules": rules,
            "snapshots": {"max_width": 320},
        },
    )


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


def payloads(sub, pattern: str) -> list[bytes]:
    """Payloads of the messages whose whole topic matches ``pattern``, in arrival order."""
    return [p for _, p, _ in sub.matching(pattern)]


def test_home_assistant_discovery_and_commands(
    broker, write_config, subscriber_factory, send_command, tmp_path, test_data, wait_until
):
    cv2 = pytest.importorskip("cv2")
    from device.runner import Runner

    path = alerts_config(
        write_config, test_data, broker.port, [RULE], loop=True, realtime=True, fps=10
    )
    sub = subscriber_factory(broker.port)

    def command(name: str, payload: bytes | dict, rid: str | None = None) -> dict:
        reply = send_command(sub, name, payload)
        assert reply["command"] == name
        if rid is not None:
            assert reply["id"] == rid
        return reply

    def last(pattern: str) -> bytes:
        return wait_until(lambda: payloads(sub, pattern), what=pattern)[-1]

    runner = Runner(load_config(path), config_path=path)
    thread = threading.Thread(target=runner.run, name="test-runner")
    thread.start()
    try:
        # -- discovery: one device, entities per camera and rule, availability from status
        wait_until(lambda: len(sub.matching(r"homeassistant/.*/config")) >= 4, what="discovery")
        parsed = {t: json.loads(p) for t, p, _ in sub.matching(r"homeassistant/.*")}
        assert len(sub.matching(r"homeassistant/.*/config")) == 4
        kinds = sorted(check_ha_config(t, c) for t, c in parsed.items())
        assert kinds == ["binary_sensor", "image", "sensor", "sensor"]
        assert len({c["unique_id"] for c in parsed.values()}) == 4
        assert len({json.dumps(c["device"], sort_keys=True) for c in parsed.values()}) == 1
        assert all(c["qos"] == 1 for t, c in parsed.items() if "/sensor/" not in t)
        binary = next(c for t, c in parsed.items() if "/binary_sensor/" in t)
        status = last("edgecam/test-pi/status")
        assert binary["availability_topic"] == "edgecam/test-pi/status"
        assert render(binary["availability_template"], status) == binary["payload_available"]
        state = last(re.escape(binary["state_topic"]))
        assert render(binary["value_template"], state) in (
            binary["payload_on"],
            binary["payload_off"],
        )
        image_cfg = next(c for t, c in parsed.items() if "/image/" in t)
        assert image_cfg["image_topic"] == "edgecam/test-pi/street/snapshot"
        assert image_cfg["qos"] == 1  # HA's image entity subscribes at QoS 1
        classification = json.loads(last(r".*/street/classification"))
        for sensor in (c for t, c in parsed.items() if "/sensor/" in t):
            assert sensor["state_topic"] == "edgecam/test-pi/street/classification"
            assert "value_json.top" in sensor["value_template"]
        assert {"label", "score"} <= set(classification["top"][0])

        # -- malformed commands: an error on the result topic, nothing changes
        baseline = command("state", {"id": "s0"}, "s0")
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
            reply = command(name, payload, rid)
            assert reply["ok"] is False and error in reply["error"], reply
        # a reload whose file has a label the model does not know is refused
        data = yaml.safe_load(path.read_text())
        data["alerts"]["rules"].append({"name": "cars", "labels": ["sports carr"]})
        path.write_text(yaml.safe_dump(data))
        reply = command("reload", {"id": "r1"}, "r1")
        assert reply["ok"] is False and "did you mean: sports car" in reply["error"]
        after = command("state", {"id": "s1"}, "s1")
        assert after["result"]["rules"] == baseline["result"]["rules"]
        assert after["result"]["paused"] == []

        # -- valid commands
        reply = command("pause", {"id": "p", "rule": "people", "minutes": 5}, "p")
        assert reply["ok"] and reply["result"]["paused"] == ["street/people"]
        assert command("state", {})["result"]["paused"] == ["street/people"]
        assert command("resume", {"id": "q"}, "q")["result"] == {"resumed": 1}

        reply = command("snapshot", {"id": "snap", "camera": "street"}, "snap")
        assert reply["ok"], reply
        saved = reply["result"]["snapshots"][0]
        assert (tmp_path / "snapshots" / saved["snapshot"]).is_file()
        jpeg = last("edgecam/test-pi/street/snapshot")
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)

        data["alerts"]["rules"][-1]["labels"] = ["sports car"]
        path.write_text(yaml.safe_dump(data))
        reply = command("reload", {"id": "r2"}, "r2")
        assert reply["ok"] and reply["result"]["rules"] == ["people", "cars"]
        cars = "homeassistant/binary_sensor/edgecam_test-pi/street_cars/config"
        check_ha_config(cars, json.loads(last(cars)))
    finally:
        runner.request_stop()
        thread.join(30)
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


def log_has(log: Path, text: str):
    return lambda: text in log.read_text()


def test_every_event_survives_a_broker_outage_and_a_device_restart(
    broker, write_config, subscriber_factory, tmp_path, test_data, wait_until
):
    path = alerts_config(write_config, test_data, broker.port, [RULE], fps=10)
    alert_topic = "edgecam/test-pi/street/alert"

    def alerts() -> list[dict]:
        return [json.loads(p) for p in payloads(sub, alert_topic)]

    # a persistent subscriber (Home Assistant, Node-RED, ...); a clean broker stop saves its
    # session, so messages for it are queued while it reconnects after the outage below
    sub = subscriber_factory(
        broker.port, topic=alert_topic, client_id="alert-consumer", clean_session=False
    )
    wait_until(sub.client.is_connected, what="subscriber connected")
    broker.stop()
    broker.start()
    wait_until(sub.client.is_connected, what="subscriber reconnected")

    log1, log2 = tmp_path / "device1.log", tmp_path / "device2.log"
    dev1 = start_device(path, log1)
    dev2 = None
    try:
        first = wait_until(alerts, 60, what="the first alert")[0]
        assert first["type"] == "start"
        broker.stop(kill=True)  # the broker dies in the middle of the event
        killed_at = time.time()
        wait_until(log_has(log1, "MQTT: lost connection"), 30, what="the device noticed")
        dev1.send_signal(signal.SIGTERM)  # the device restarts while the broker is down
        assert dev1.wait(30) == 0
        assert "stay in the outbox" in log1.read_text()

        dev2 = start_device(path, log2, "--frames", "90")
        # a new event while the broker is still down
        wait_until(log_has(log2, "alert people start"), 60, what="a second event")
        restarted_at = time.time()
        broker.start()
        assert dev2.wait(60) == 0
    finally:
        for proc in (dev1, dev2):
            if proc is not None and proc.poll() is None:
                proc.kill()
    wait_until(lambda: sum(a["type"] == "end" for a in alerts()) >= 2, what="both events ended")

    received = alerts()
    unique: dict[tuple[str, int], dict] = {}
    for msg in received:
        unique.setdefault((msg["event_id"], msg["seq"]), msg)
    duplicates = len(received) - len(unique)
    ordered = list(unique.values())  # first arrival of each message, in arrival order
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
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(restarted_at + 1))
    assert ev1[-1]["ts"] < iso and ev2[0]["ts"] < iso
    assert ev1[-1]["ts"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(killed_at - 1))
    # the outbox is empty: everything was acknowledged
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM open_events").fetchone()[0] == 0
    log_text = log2.read_text()
    backlog = re.search(r"(\d+) undelivered message\(s\) from an earlier run", log_text)
    assert backlog, log_text[-3000:]
    print(
        f"\noutage: outbox held {backlog.group(1)} message(s) from the first process at restart; "
        f"{len(received)} alert messages received, {len(unique)} unique, "
        f"{duplicates} duplicate(s) collapsed; outbox empty at the end"
    )
