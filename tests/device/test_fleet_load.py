"""Fleet load benchmark (``make bench-fleet``; skipped in the default suite): 1,000 simulated
devices in one process publish a retained status and one classification per second to one local
Mosquitto for a bounded time; a subscriber in another process counts what the broker delivers;
the fleet view must list every device correctly; then a short ramp finds where the limit lies.

Settings (environment): EDGECAM_BENCH=1 runs it; EDGECAM_BENCH_DEVICES (1000),
EDGECAM_BENCH_SECONDS (60), EDGECAM_BENCH_RAMP ("2,5,10,20,40" messages/s per device, 5 s
each),
EDGECAM_BENCH_OUT (a JSON file for the figures). Traffic stays on 127.0.0.1.

The simulated devices are paho-mqtt clients without threads, driven by one loop (``selectors``):
publishes are written straight to their sockets, reads (CONNACK, PUBACK, PINGRESP) are handled as
the sockets become readable, keepalives with ``loop_misc``. Each has a last will, like a device.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import psutil
import pytest

from device.fleet import Broker, collect, judge
from device.mqtt import utc_iso

pytestmark = pytest.mark.skipif(
    not os.environ.get("EDGECAM_BENCH"), reason="a benchmark: run it with `make bench-fleet`"
)

DEVICES = int(os.environ.get("EDGECAM_BENCH_DEVICES", "1000"))
SECONDS = float(os.environ.get("EDGECAM_BENCH_SECONDS", "60"))
RAMP = [float(r) for r in os.environ.get("EDGECAM_BENCH_RAMP", "2,5,10,20,40").split(",") if r]
RAMP_STEP_S = 5.0
SHA = "5" * 64
OTHER = "6" * 64


def status_payload(device: str, sha: str, uptime: float) -> bytes:
    return json.dumps(
        {
            "state": "online",
            "version": "0.1.0",
            "model": {
                "name": "garden",
                "version": "3",
                "sha256": sha,
                "variant": "int8",
                "backend": "ai_edge_litert",
                "accelerator": "cpu+xnnpack",
            },
            "uptime_s": round(uptime, 1),
            "fps": 10.0,
            "last_alert": None,
            "started_at": utc_iso(time.time() - uptime),
            "cameras": ["cam0"],
            "host": device,
            "ts": utc_iso(time.time()),
        },
        separators=(",", ":"),
    ).encode()


def classification_payload(frame: int) -> bytes:
    return json.dumps(
        {
            "ts": utc_iso(time.time()),
            "frame": frame,
            "top": [
                {"label": "fox", "index": 3, "score": 0.91},
                {"label": "cat", "index": 1, "score": 0.05},
                {"label": "dog", "index": 2, "score": 0.02},
            ],
            "latency_ms": {"inference": 38.2, "total": 51.7},
            "model": "garden@" + SHA[:12],
        },
        separators=(",", ":"),
    ).encode()


class SimFleet:
    """``count`` simulated devices driven by the calling thread (module docstring)."""

    def __init__(self, port: int, count: int):
        self.port = port
        self.names = [f"sim-{i:04d}" for i in range(count)]
        self.sha = dict.fromkeys(self.names, SHA)
        self.clients: dict[str, mqtt.Client] = {}
        self.selector = selectors.DefaultSelector()
        self.connected = 0
        self.published = 0
        self.failed = 0
        self.started = time.monotonic()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            self.connected += 1

    def connect(self, timeout: float = 120.0) -> float:
        began = time.monotonic()
        for name in self.names:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311
            )
            client.will_set(
                f"edgecam/{name}/status",
                json.dumps({"state": "offline", "ts": utc_iso(time.time())}),
                qos=1,
                retain=True,
            )
            client.on_connect = self._on_connect
            client.connect("127.0.0.1", self.port, keepalive=60)
            self.selector.register(client.socket(), selectors.EVENT_READ, client)
            self.clients[name] = client
            self.pump(0)
        deadline = time.monotonic() + timeout
        while self.connected < len(self.names) and time.monotonic() < deadline:
            self.pump(0.05)
        assert self.connected == len(self.names), f"{self.connected} of {len(self.names)}"
        return time.monotonic() - began

    def pump(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            key.data.loop_read()

    def keepalive(self) -> None:
        for client in self.clients.values():
            client.loop_misc()

    def publish(self, topic: str, client: mqtt.Client, payload: bytes, qos: int, retain: bool):
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.published += 1
        else:
            self.failed += 1

    def publish_statuses(self) -> None:
        uptime = time.monotonic() - self.started + 3600
        for name, client in self.clients.items():
            payload = status_payload(name, self.sha[name], uptime)
            self.publish(f"edgecam/{name}/status", client, payload, 1, True)
        self.pump(0)

    def run(self, seconds: float, rate: float, status_every_s: float = 30.0) -> float:
        """Each device publishes ``rate`` classifications per second for ``seconds``; returns
        the rate of publishes achieved (all devices)."""
        names = list(self.clients)
        total = len(names)
        began = time.monotonic()
        sent_before = self.published
        done = 0  # classifications so far in this run
        frame = 0
        next_misc = began + 5.0
        next_status = began + status_every_s
        while (now := time.monotonic()) < began + seconds:
            due = int((now - began) * rate * total) - done
            for _ in range(min(due, 2000)):  # a slice, then read sockets again
                name = names[done % total]
                frame += 1
                self.publish(
                    f"edgecam/{name}/cam0/classification",
                    self.clients[name],
                    classification_payload(frame),
                    0,
                    False,
                )
                done += 1
            self.pump(0 if due > 0 else 0.002)
            if now >= next_misc:
                self.keepalive()
                next_misc += 5.0
            if now >= next_status:
                self.publish_statuses()
                next_status += status_every_s
        return (self.published - sent_before) / (time.monotonic() - began)

    def vanish(self, names: list[str]) -> None:
        """Drop connections without DISCONNECT: the broker publishes their last wills."""
        for name in names:
            client = self.clients.pop(name)
            self.selector.unregister(client.socket())
            client.socket().close()

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
        self.pump(0.2)


COUNTER = """
import json, sys, threading, time
import paho.mqtt.client as mqtt
counts = {"classification": 0, "status": 0}
lock = threading.Lock()
def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe([("edgecam/+/+/classification", 0), ("edgecam/+/status", 1)])
def on_message(client, userdata, msg):
    with lock:
        counts["status" if msg.topic.endswith("/status") else "classification"] += 1
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-counter")
client.on_connect, client.on_message = on_connect, on_message
client.connect("127.0.0.1", int(sys.argv[1]), keepalive=60)
client.loop_start()
while sys.stdin.readline():  # one line from the parent: report
    with lock:
        print(json.dumps(counts), flush=True)
"""


@dataclass
class Sampler:
    """CPU and memory of the broker and of this process, once a second."""

    broker_pid: int
    counter_pid: int
    samples: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.broker = psutil.Process(self.broker_pid)
        self.me = psutil.Process()
        self.counter = psutil.Process(self.counter_pid)
        for proc in (self.broker, self.me, self.counter):
            proc.cpu_percent()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            self.samples.append(
                {
                    "t": time.monotonic(),
                    "broker_cpu": self.broker.cpu_percent(),
                    "broker_rss_mb": self.broker.memory_info().rss / 2**20,
                    "client_cpu": self.me.cpu_percent(),
                    "counter_cpu": self.counter.cpu_percent(),
                    "load": os.getloadavg()[0],
                }
            )

    def between(self, t0: float, t1: float) -> dict:
        window = [s for s in self.samples if t0 <= s["t"] <= t1]
        if not window:
            return {}
        return {
            "broker_cpu_pct": {
                "mean": round(statistics.mean(s["broker_cpu"] for s in window), 1),
                "max": round(max(s["broker_cpu"] for s in window), 1),
            },
            "broker_rss_mb": round(max(s["broker_rss_mb"] for s in window), 1),
            "client_cpu_pct": {
                "mean": round(statistics.mean(s["client_cpu"] for s in window), 1),
                "max": round(max(s["client_cpu"] for s in window), 1),
            },
            "subscriber_cpu_pct": round(statistics.mean(s["counter_cpu"] for s in window), 1),
            "load_avg_1m": round(max(s["load"] for s in window), 2),
        }


class Counter:
    """A subscriber in its own process (its own interpreter lock) counting what is delivered."""

    def __init__(self, port: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", COUNTER, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self) -> tuple[float, dict]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return time.monotonic(), json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


def delivered_rate(before: tuple[float, dict], after: tuple[float, dict]) -> float:
    return (after[1]["classification"] - before[1]["classification"]) / (after[0] - before[0])


def test_fleet_of_1000_devices(broker_factory, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = DEVICES * 4 + 256  # client socket + paho's socket pair + the broker's socket
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))  # the broker inherits
    broker = broker_factory(
        extra=["max_connections -1", "max_queued_messages 10000", "persistence false"]
    ).start()
    counter = Counter(broker.port)
    sampler = Sampler(broker.proc.pid, counter.proc.pid)
    fleet = SimFleet(broker.port, DEVICES)
    figures: dict = {"devices": DEVICES, "cpu_cores": os.cpu_count()}
    try:
        figures["connect_s"] = round(fleet.connect(), 2)
        fleet.publish_statuses()
        deadline = time.monotonic() + 30  # the steady phase starts once every status arrived
        while counter.read()[1]["status"] < DEVICES and time.monotonic() < deadline:
            fleet.pump(0.1)

        # steady: one classification per device and second (plus statuses every 30 s)
        t0, before = time.monotonic(), counter.read()
        published = fleet.run(SECONDS, 1.0)
        t1 = time.monotonic()
        delivered = delivered_rate(before, counter.read())
        figures["steady"] = {
            "seconds": SECONDS,
            "target_msgs_per_s": DEVICES,
            "published_msgs_per_s": round(published, 1),
            "delivered_msgs_per_s": round(delivered, 1),
            **sampler.between(t0 + 1, t1),
        }
        assert published >= 0.95 * DEVICES, figures
        assert delivered >= 0.95 * DEVICES, figures

        # the fleet view: every device, then ten gone and ten on another model
        view = collect(Broker(port=broker.port), wait_s=3.0)
        assert set(view.devices) == set(fleet.names)
        rows = judge(view, SHA, 600, time.time())
        assert not any(r.problems for r in rows)
        gone, other = fleet.names[:10], fleet.names[10:20]
        fleet.vanish(gone)
        for name in other:
            fleet.sha[name] = OTHER
        fleet.publish_statuses()
        fleet.run(2.0, 1.0)
        view = collect(Broker(port=broker.port), wait_s=3.0)
        problems = {r.device.device_id: r.problems for r in judge(view, SHA, 600, time.time())}
        assert len(problems) == DEVICES
        assert {n for n, p in problems.items() if "offline" in p} == set(gone)
        assert {n for n, p in problems.items() if p == ("model",)} == set(other)
        figures["fleet_view"] = {"devices": len(problems), "offline": 10, "other_model": 10}

        # the ramp: where does it stop keeping up, and who is at 100 % CPU?
        figures["ramp"] = []
        for rate in RAMP:
            t0, before = time.monotonic(), counter.read()
            published = fleet.run(RAMP_STEP_S, rate)
            t1 = time.monotonic()
            figures["ramp"].append(
                {
                    "target_msgs_per_s": rate * len(fleet.clients),
                    "published_msgs_per_s": round(published, 1),
                    "delivered_msgs_per_s": round(delivered_rate(before, counter.read()), 1),
                    **sampler.between(t0 + 1, t1),
                }
            )
    finally:
        fleet.close()
        counter.close()
        sampler.stop.set()
        out = os.environ.get("EDGECAM_BENCH_OUT")
        if out:
            with open(out, "w") as f:
                json.dump(figures, f, indent=2)
        print("\nfleet benchmark:", json.dumps(figures, indent=2))
