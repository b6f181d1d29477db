"""The broker-side answer to "anyone can pause every rule": deploy/mosquitto/edgecam.acl on a
real Mosquitto with password logins. The device runs as its own user with its username and
password only from the environment (EDGECAM_MQTT_USERNAME / EDGECAM_MQTT_PASSWORD)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ACL = REPO / "deploy" / "mosquitto" / "edgecam.acl"
CLI = [sys.executable, "-m", "device.cli"]
USERS = {
    "test-pi": "device-secret",
    "other-pi": "other-secret",
    "operator": "operator-secret",
    "homeassistant": "ha-secret",
}
RULE = {
    "name": "people",
    "groups": ["walker"],
    "start_score": 0.2,
    "end_score": 0.1,
    "start_frames": 3,
    "end_frames": 10,
    "cooldown_s": 0.0,
}


@pytest.fixture
def acl_broker(tmp_path, broker_factory):
    exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(exe).exists():
        pytest.skip("mosquitto_passwd not installed (apt-get install mosquitto)")
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run([exe, *flags, str(passwd), user, password], check=True)
    return broker_factory(password_file=passwd, extra=[f"acl_file {ACL}"]).start()


def test_only_the_operator_commands_and_each_device_publishes_only_its_own_topics(
    acl_broker, write_config, subscriber_factory, send_command, tmp_path, test_data, wait_until
):
    port = acl_broker.port
    ha = subscriber_factory(port, auth=("homeassistant", USERS["homeassistant"]))
    operator = subscriber_factory(port, topic="edgecam/#", auth=("operator", USERS["operator"]))
    other = subscriber_factory(port, auth=("other-pi", USERS["other-pi"]))
    wait_until(lambda: all(s.client.is_connected() for s in (ha, operator, other)), what="logins")

    clip = str(test_data / "opencv" / "vtest.avi")
    config = write_config(
        port,
        inference={"top_k": 5},
        cameras=[{"name": "street", "source": clip, "loop": True, "realtime": True, "fps": 25}],
        alerts={"label_groups": {"walker": ["unicycle", "crutch", "ski"]}, "rules": [RULE]},
    )
    text = config.read_text()
    assert "username" not in text and "password" not in text  # only from the environment
    env = dict(
        os.environ,
        EDGECAM_MQTT_USERNAME="test-pi",
        EDGECAM_MQTT_PASSWORD=USERS["test-pi"],
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "device.log"
    device = subprocess.Popen(
        [*CLI, "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env=env,
    )
    try:
        # -- the device's own publishes pass: status, classification, discovery, alerts
        def seen(topic: str) -> bool:
            return bool(ha.on(topic))

        assert ha.wait_for(lambda _: seen("edgecam/test-pi/status"), 60), log.read_text()
        assert json.loads(ha.on("edgecam/test-pi/status")[0][1])["state"] == "online"
        assert ha.wait_for(lambda _: seen("edgecam/test-pi/street/classification"), 30)
        assert ha.wait_for(
            lambda _: bool(ha.matching(r"homeassistant/binary_sensor/edgecam_test-pi/.*/config")),
            30,
        )
        assert ha.wait_for(lambda _: seen("edgecam/test-pi/street/rule/people"), 30)
        assert ha.wait_for(lambda _: seen("edgecam/test-pi/street/alert"), 90), log.read_text()
        assert json.loads(ha.on("edgecam/test-pi/street/alert")[0][1])["type"] == "start"

        # -- another device's user cannot command this device, nor read or fake its topics
        info = other.client.publish(
            "edgecam/test-pi/cmd/pause", json.dumps({"id": "evil"}).encode(), qos=1
        )
        info.wait_for_publish(10)  # the broker has it (and dropped it)
        fake = other.client.publish(
            "edgecam/test-pi/street/alert", b'{"type": "start", "event_id": "fake"}', qos=1
        )
        fake.wait_for_publish(10)
        # Home Assistant's account reads everything, but cannot send commands either
        ha.client.publish("edgecam/test-pi/cmd/pause", b'{"id": "ha"}', qos=1).wait_for_publish(10)
        # nor can the device's own account (a second login) command itself
        self_cmd = subscriber_factory(port, auth=("test-pi", USERS["test-pi"]))
        wait_until(self_cmd.client.is_connected, what="device login")
        self_cmd.client.publish(
            "edgecam/test-pi/cmd/pause", b'{"id": "self"}', qos=1
        ).wait_for_publish(10)

        # the operator's state command comes after those: had they been delivered, they were
        # carried out first (one broker, one device command thread, in order)
        state = send_command(operator, "state", {"id": "s1"})
        assert state["ok"] and state["id"] == "s1"
        assert state["result"]["paused"] == []
        replies = [
            json.loads(p)["id"] for _, p, _ in operator.on("edgecam/test-pi/cmd/pause/result")
        ]
        assert replies == []  # the refused pauses never reached the device
        assert not [m for m in ha.on("edgecam/test-pi/street/alert") if b"fake" in m[1]]
        assert not [t for t, _, _ in other.messages if t.startswith("edgecam/test-pi/")]

        # -- the operator's pause is obeyed
        reply = send_command(operator, "pause", {"id": "op", "rule": "people", "minutes": 5})
        assert reply["ok"] and reply["id"] == "op", reply
        assert reply["result"]["paused"] == ["street/people"]
        assert send_command(operator, "state", {})["result"]["paused"] == ["street/people"]
    finally:
        device.send_signal(signal.SIGTERM)
        try:
            code = device.wait(30)
        except subprocess.TimeoutExpired:
            device.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "refused the connection" not in text and USERS["test-pi"] not in text
    statuses = [json.loads(p)["state"] for _, p, _ in ha.on("edgecam/test-pi/status")]
    assert statuses[-1] == "offline"
