"""Command hardening on the real device loop and a real Mosquitto: a payload size limit checked
before parsing, no payload echoed in replies or logs, an allowlist, a maximum pause, and the
old ``alerts.commands: false`` still accepted."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from device.config import load_config, parse_config
from device.errors import ConfigError

RULE = {"name": "people", "groups": ["walker"], "start_score": 0.2, "end_score": 0.1}
ALERTS = {"label_groups": {"walker": ["unicycle", "crutch", "ski"]}, "rules": [RULE]}


@pytest.fixture
def device(broker, write_config, test_data):
    """A running device (Runner in-process) on the looping clip, reload not allowed, pauses
    capped at 10 minutes."""
    from device.runner import Runner

    clip = str(test_data / "opencv" / "vtest.avi")
    path = write_config(
        broker.port,
        cameras=[{"name": "street", "source": clip, "loop": True, "realtime": True, "fps": 10}],
        alerts=ALERTS,
        commands={"allow": ["snapshot", "pause", "resume", "state"], "max_pause_minutes": 10},
    )
    runner = Runner(load_config(path), config_path=path)
    thread = threading.Thread(target=runner.run, name="test-runner")
    thread.start()
    yield runner
    runner.request_stop()
    thread.join(30)
    assert not thread.is_alive()


def test_bad_command_payloads_are_refused_without_echoing_them(
    device, broker, subscriber_factory, send_command, caplog
):
    caplog.set_level(logging.INFO)
    sub = subscriber_factory(broker.port, topic="edgecam/test-pi/#")
    assert sub.wait_for(lambda ms: any(t.endswith("/status") for t, _, _ in ms))
    marker = "Q7zv"  # never appears in a reply or the log if payloads are not echoed
    huge = json.dumps({"id": "big", "rule": marker * 1_300_000}).encode()  # 5.2 MB
    cases = [
        ("pause", huge, None, "a command takes at most 65536"),
        ("pause", json.dumps({marker * 10_000: 1}).encode(), None, "<a key of 40000 characters>"),
        (
            "pause",
            json.dumps({"id": marker * 100}).encode(),
            None,
            "id: Value error, give a string of at most 64",
        ),
        ("pause", json.dumps({"id": "c", "camera": marker * 100}).encode(), "c", "at most 64"),
        ("pause", json.dumps({"id": "p", "camera": "a/" + marker}).encode(), "p", "pattern"),
        ("pause", b"[" * 60_000, None, "nested too deeply"),
        ("pause", b"\xff\xfe" + marker.encode(), None, "not UTF-8"),
        ("pause", b'{"id": "' + marker.encode() + b'", ', None, "payload is not JSON"),
        ("pause", json.dumps({"id": "m", "minutes": 60}).encode(), "m", "at most 10 on this"),
        ("reload", json.dumps({"id": "r"}).encode(), "r", "'reload' is disabled on this device"),
        ("explode", json.dumps({"id": "x"}).encode(), "x", "unknown command 'explode'"),
    ]
    for name, payload, rid, error in cases:
        reply = send_command(sub, name, payload)
        assert reply["ok"] is False and error in reply["error"], (name, reply)
        assert reply["id"] == rid
        assert marker not in json.dumps(reply) and len(json.dumps(reply)) < 600, reply
    assert marker not in caplog.text
    assert f"command pause (id -, {len(huge)} bytes) refused: payload is" in caplog.text
    state = send_command(sub, "state", {"id": "s"})
    assert state["ok"] and state["result"]["paused"] == []  # nothing changed

    # a pause without minutes lasts commands.max_pause_minutes, not for ever
    reply = send_command(sub, "pause", {"id": "p1", "rule": "people"})
    assert reply["ok"] and reply["result"] == {"paused": ["street/people"], "minutes": 10}
    assert send_command(sub, "state", {})["result"]["paused"] == ["street/people"]
    assert send_command(sub, "resume", {})["result"] == {"resumed": 1}
    counts = device.commands.stats()
    assert counts["too_large"] == 1 and counts["refused"] >= len(cases)


def test_command_config_old_and_new_forms(broker, write_config, caplog):
    caplog.set_level(logging.INFO)
    # the old switch still turns commands off, with a pointer to the new section
    from device.runner import Runner

    path = write_config(broker.port, alerts={"commands": False, **ALERTS})
    runner = Runner(load_config(path), max_results=2, config_path=path)
    assert runner.run() == 0
    assert runner.commands is not None and runner.commands.cfg.enabled is False
    assert "alerts.commands is deprecated" in caplog.text
    assert "commands: disabled" in caplog.text

    with pytest.raises(ConfigError) as err:
        parse_config("commands:\n  allow: [pause, paws]\n", "device.yaml")
    assert "commands.allow" in str(err.value) and "'paws'" in str(err.value)
    assert "known: snapshot, pause, resume, reload, state" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config("commands:\n  max_pause_minutes: 0\n", "device.yaml")
    assert "commands.max_pause_minutes" in str(err.value)
