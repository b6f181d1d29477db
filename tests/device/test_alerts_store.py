"""The SQLite outbox (order, supersede, bounds, persistence) and snapshot retention."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from device.alerts.config import SnapshotConfig
from device.alerts.outbox import Message, Outbox
from device.alerts.snapshots import SnapshotStore, crop


def msg(i: int, key: str | None = None, size: int = 10) -> Message:
    return Message(f"t/{i}", bytes([i % 256]) * size, "alert", key=key)


def test_outbox_is_created_lazily_keeps_order_and_survives_reopening(tmp_path: Path):
    path = tmp_path / "state" / "outbox.sqlite3"
    box = Outbox(path)
    assert not path.exists() and box.pending_after(0, 10) == []
    ids = box.put_many([msg(i) for i in range(5)])
    assert ids == sorted(ids)
    box.ack([ids[1]])
    box.close()

    again = Outbox(path)  # a restart: what was not acknowledged is still there, in order
    assert [e.topic for e in again.pending_after(0, 10)] == ["t/0", "t/2", "t/3", "t/4"]
    assert [e.topic for e in again.pending_after(ids[2], 10)] == ["t/3", "t/4"]
    again.close()


def test_latest_value_messages_replace_undelivered_ones(tmp_path: Path):
    box = Outbox(tmp_path / "o.db")
    box.put(msg(1, key="cam/snapshot"))
    box.put(msg(2))
    box.put(msg(3, key="cam/snapshot"))
    assert [e.topic for e in box.pending_after(0, 10)] == ["t/2", "t/3"]
    assert box.stats()["superseded"] == 1


def test_bounds_drop_oldest_first_and_count_it(tmp_path: Path, caplog):
    box = Outbox(tmp_path / "o.db", max_messages=10, max_mb=1.0)
    box.put_many([msg(i) for i in range(15)])
    assert [e.topic for e in box.pending_after(0, 100)] == [f"t/{i}" for i in range(5, 15)]
    assert box.stats()["dropped"] == {"alert": 5}
    assert "dropped 5 undelivered message(s), oldest first" in caplog.text

    big = Outbox(tmp_path / "big.db", max_mb=0.01)  # ~10 KB
    big.put_many([msg(i, size=3000) for i in range(6)])
    assert [e.topic for e in big.pending_after(0, 100)] == ["t/3", "t/4", "t/5"]  # 3 x 3 KB

    aged = Outbox(tmp_path / "aged.db", max_age_h=1.0)
    aged.put_many([msg(1)], now=time.time() - 7200)
    aged.put(msg(2))
    assert [e.topic for e in aged.pending_after(0, 10)] == ["t/2"]


def test_open_events_are_remembered_for_crash_recovery(tmp_path: Path):
    box = Outbox(tmp_path / "o.db")
    box.set_open_event("ev1", '{"seq": 0}')
    box.set_open_event("ev2", '{"seq": 0}')
    box.set_open_event("ev1", None)
    box.close()
    assert Outbox(tmp_path / "o.db").open_events() == [("ev2", '{"seq": 0}')]


def test_snapshot_retention_by_count_and_age(tmp_path: Path):
    cv2 = pytest.importorskip("cv2")
    cfg = SnapshotConfig(dir=str(tmp_path / "snaps"), max_count=3, max_width=64, quality=70)
    store = SnapshotStore(cfg)
    pixels = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    for i in range(5):
        snap = store.save(f"cam0/{i}.jpg", pixels)
        os.utime(snap.path, (time.time() - 100 + i, time.time() - 100 + i))
    store.enforce_retention()
    assert sorted(p.name for p in (tmp_path / "snaps" / "cam0").iterdir()) == [
        "2.jpg",
        "3.jpg",
        "4.jpg",
    ]
    image = cv2.imdecode(np.frombuffer(snap.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (48, 64, 3)  # downscaled to max_width, aspect kept

    old = SnapshotStore(SnapshotConfig(dir=str(tmp_path / "old"), max_age_days=1))
    for name in ("a", "b"):
        old.save(f"c/{name}.jpg", pixels)
    os.utime(tmp_path / "old" / "c" / "a.jpg", (time.time() - 3 * 86400,) * 2)
    assert old.enforce_retention() == 1
    assert [p.name for p in (tmp_path / "old" / "c").iterdir()] == ["b.jpg"]

    assert crop(pixels, [0.5, 0.5, 0.5, 0.5]).shape == (48, 64, 3)


def test_an_event_left_open_by_a_crash_is_ended_on_the_next_start(tmp_path: Path):
    import json

    from device.alerts.config import AlertsConfig
    from device.alerts.service import AlertContext, AlertService
    from device.topics import Topics

    box = Outbox(tmp_path / "o.db")
    start = {"event_id": "ev1", "type": "start", "seq": 2, "camera": "cam0", "rule": "fox"}
    box.set_open_event("ev1", json.dumps(start))  # the process was killed during this event
    box.close()
    cfg = AlertsConfig.model_validate(
        {
            "rules": [{"name": "fox", "labels": ["red fox"]}],
            "outbox": {"path": str(tmp_path / "o.db"), "flush_timeout_s": 0},
            "snapshots": {"dir": str(tmp_path / "snaps")},
        }
    )
    service = AlertService(cfg, AlertContext(Topics("edgecam", "pi"), ["cam0"], {1: "red fox"}))
    service.start()
    service.stop()
    box = Outbox(tmp_path / "o.db")
    entries = box.pending_after(0, 10)
    alerts = [json.loads(e.payload) for e in entries if e.kind == "alert"]
    assert [(a["event_id"], a["type"], a["seq"], a["reason"]) for a in alerts] == [
        ("ev1", "end", 3, "interrupted")
    ]
    states = [json.loads(e.payload) for e in entries if e.topic == "edgecam/pi/cam0/rule/fox"]
    assert states[-1]["state"] == "OFF"
    assert box.open_events() == []


def test_a_corrupted_outbox_is_moved_aside_and_classifying_goes_on(
    write_config, tmp_path: Path, caplog
):
    import sqlite3

    from device.config import load_config
    from device.runner import Runner

    garbage = b"this is not an SQLite database\n" * 200
    (tmp_path / "outbox.sqlite3").write_bytes(garbage)
    path = write_config(
        None,
        console={"jsonl_path": str(tmp_path / "results.jsonl")},
        alerts={"rules": [{"name": "people", "labels": ["unicycle", "crutch", "ski"]}]},
    )
    runner = Runner(load_config(path), max_results=20)
    assert runner.run() == 0
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 20
    aside = list(tmp_path.glob("outbox.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    assert re.fullmatch(r"outbox\.sqlite3\.corrupt-\d{8}T\d{6}Z", aside[0].name)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert any("is corrupted" in r.getMessage() and aside[0].name in r.getMessage() for r in errors)
    assert runner.metrics()["alerts"]["outbox"]["recovered_corrupt"] == 1
    # the fresh outbox works: it holds the rule's retained state for the broker
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    topics = [t for (t,) in db.execute("SELECT topic FROM outbox")]
    assert topics == ["edgecam/test-pi/street/rule/people"]


def test_the_forwarder_resends_what_a_stalled_broker_never_acknowledged(
    broker, subscriber_factory, tmp_path: Path, wait_until
):
    """The broker stops answering (SIGSTOP) with messages in flight: after ``stall_s`` without
    an acknowledgement they are sent again; the broker is then killed and restarted, and every
    message arrives and leaves the outbox."""
    from device.alerts.forwarder import Forwarder
    from device.config import MQTTConfig
    from device.mqtt import MqttPublisher

    sub = subscriber_factory(broker.port, topic="t/#")
    cfg = MQTTConfig(port=broker.port, reconnect_min_s=1, reconnect_max_s=1, keepalive=60)
    pub = MqttPublisher(cfg.model_copy(update={"host": "127.0.0.1"}), "stall-pi", {})
    box = Outbox(tmp_path / "o.db")
    fwd = Forwarder(box, pub, inflight=5, stall_s=1.0)
    pub.start()
    fwd.start()
    try:
        wait_until(pub.connected.is_set, what="connected")
        # retained: a subscriber that comes back after the broker restart still gets them
        messages = [Message(f"t/{i}", b"%d" % i, "alert", qos=1, retain=True) for i in range(8)]
        box.put_many(messages[:3])
        fwd.wake()
        wait_until(lambda: box.pending_count() == 0, what="first messages acknowledged")

        broker.proc.send_signal(signal.SIGSTOP)  # connected, but nothing is acknowledged
        box.put_many(messages[3:])
        fwd.wake()
        wait_until(lambda: fwd.resends >= 1, what="a resend after the stall")
        assert box.pending_count() == 5 and fwd.acked == 3
        broker.stop(kill=True)
        broker.start()
        wait_until(lambda: box.pending_count() == 0, 30, what="outbox emptied after restart")
        expected = {f"t/{i}" for i in range(8)}
        wait_until(lambda: expected <= {t for t, _, _ in sub.messages}, what="all delivered")
    finally:
        fwd.stop()
        pub.stop()
        if broker.proc is not None and broker.proc.poll() is None:
            broker.proc.send_signal(signal.SIGCONT)
    assert fwd.stats()["resends"] >= 1 and fwd.acked >= 8
