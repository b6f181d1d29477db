#!/usr/bin/python
"""Ansible module: wait until an edgecam device's retained MQTT status shows the wanted model."""

from __future__ import annotations

import json
import threading
from datetime import datetime

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: edgecam_status
short_description: Wait for an edgecam device to report a model in its MQTT status
description:
  - Subscribes to C(<topic_prefix>/<device_id>/status) (retained, JSON) and waits until it says
    C(state) online, C(model.sha256) is I(sha256) and C(started_at) is not before
    I(started_after). Fails after I(timeout) seconds with the last status seen.
  - Needs paho-mqtt 2.x where it runs (the control machine with C(pip install edgecam[deploy]),
    or the device's own venv).
options:
  device_id: {type: str, required: true, description: the device id in the topics}
  sha256: {type: str, default: "", description: the model sha256 wanted ("" accepts any)}
  started_after:
    type: float
    default: 0
    description: Unix time (the device's clock); an older status is from before the restart.
  timeout: {type: float, default: 120, description: seconds to wait}
  host: {type: str, default: localhost, description: the broker}
  port: {type: int, default: 1883, description: the broker port}
  username: {type: str, default: "", description: MQTT user}
  password: {type: str, default: "", no_log: true, description: MQTT password}
  tls_ca: {type: str, default: "", description: a CA file; enables TLS}
  topic_prefix: {type: str, default: edgecam, description: the topic prefix}
"""


def started_at(status: dict) -> float | None:
    """``started_at`` (ISO 8601 UTC) as Unix time, or None."""
    try:
        return datetime.fromisoformat(str(status["started_at"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


def describe(status: dict | None) -> str:
    if status is None:
        return "no status message"
    model = status.get("model") or {}
    return (
        f"state {status.get('state')}, model {model.get('name')}@{str(model.get('sha256'))[:12]}, "
        f"started_at {status.get('started_at')}"
    )


def wanted(status: dict, sha256: str, after: float) -> bool:
    model = status.get("model") or {}
    begun = started_at(status)
    return (
        status.get("state") == "online"
        and (not sha256 or model.get("sha256") == sha256)
        and (not after or (begun is not None and begun >= after - 1.0))  # second resolution
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "device_id": {"type": "str", "required": True},
            "sha256": {"type": "str", "default": ""},
            "started_after": {"type": "float", "default": 0.0},
            "timeout": {"type": "float", "default": 120.0},
            "host": {"type": "str", "default": "localhost"},
            "port": {"type": "int", "default": 1883},
            "username": {"type": "str", "default": ""},
            "password": {"type": "str", "default": "", "no_log": True},
            "tls_ca": {"type": "str", "default": ""},
            "topic_prefix": {"type": "str", "default": "edgecam"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        module.fail_json(
            msg="paho-mqtt is not installed for this Python: pip install 'edgecam[deploy]' "
            "(or edgecam_verify: host, which uses the device's venv)"
        )
    topic = f"{p['topic_prefix']}/{p['device_id']}/status"
    state: dict = {"last": None, "error": None}
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            state["error"] = f"the broker refused the connection: {reason_code}"
            done.set()
        else:
            client.subscribe(topic, qos=1)

    def on_message(client, userdata, msg):
        try:
            status = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(status, dict):
            state["last"] = status
            if wanted(status, p["sha256"], p["started_after"]):
                done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
    if p["username"]:
        client.username_pw_set(p["username"], p["password"] or None)
    if p["tls_ca"]:
        client.tls_set(ca_certs=p["tls_ca"])
    client.on_connect, client.on_message = on_connect, on_message
    try:
        client.connect(p["host"], p["port"], keepalive=30)
    except OSError as exc:
        module.fail_json(msg=f"cannot reach the broker {p['host']}:{p['port']}: {exc}")
    client.loop_start()
    try:
        done.wait(p["timeout"])
    finally:
        client.disconnect()
        client.loop_stop()
    last = state["last"]
    if state["error"]:
        module.fail_json(msg=state["error"])
    if not done.is_set():
        module.fail_json(
            msg=f"{p['device_id']} did not report model {p['sha256'][:12] or '(any)'} online on "
            f"{topic} within {p['timeout']:g} s; last: {describe(last)}",
            status=last,
        )
    model = last.get("model") or {}
    module.exit_json(
        changed=False,
        msg=f"online with {model.get('name')}@{str(model.get('sha256'))[:12]}",
        status=last,
    )


if __name__ == "__main__":
    main()
