"""The fleet view: what each device says in its retained status, and ``edgecam-fleet status``.

Every device keeps one retained message on ``<prefix>/<device>/status`` (docs/fleet.md)::

    {"state": "online", "version": "0.1.0",
     "model": {"name", "version", "sha256", "variant", "backend", "accelerator"},
     "uptime_s": 8123.4, "fps": 9.8, "last_alert": {"ts", "camera", "rule", "label",
     "event_id"} | null, "started_at": "...", "cameras": [...], "host": "...", "ts": "..."}

refreshed with every metrics interval, and replaced by its last will (``"state": "offline"``)
when the device goes away. So the broker always holds one current line per device, and a
subscriber to ``<prefix>/+/status`` gets the whole fleet at once: ``collect`` does that and
``edgecam-fleet status`` prints it as a table, marking devices that are offline, silent for too
long, or not on the wanted model. Only paho-mqtt is needed (no TensorFlow, no model runtime).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device import __version__
from device.cliapp import EXIT_FAILURE, EXIT_OK, ArgumentParser, CliApp
from device.errors import ConfigError, EdgecamError

if TYPE_CHECKING:
    from device.classifier import Classifier

MAX_STATUS_BYTES = 64 * 1024  # a status is a few hundred bytes; bigger ones are not read


# -- the device side: status fields -----------------------------------------------------------------
def accelerator(classifier: Classifier) -> str:
    """``edgetpu:<device>``, ``cpu+xnnpack`` or ``cpu``: where inference runs."""
    options = classifier.options
    if options.edgetpu:
        return f"edgetpu:{options.edgetpu_device}"
    return "cpu+xnnpack" if options.xnnpack else "cpu"


def model_status(classifier: Classifier) -> dict[str, Any]:
    """The ``model`` object of the status (and of rollout messages)."""
    bundle = classifier.bundle
    return {
        "name": bundle.name,
        "version": bundle.version,
        "sha256": bundle.sha256,
        "variant": bundle.variant,
        "backend": classifier.backend_name,
        "accelerator": accelerator(classifier),
    }


def live_fields(uptime_s: float, cameras: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The status fields that change while a device runs (refreshed with the metrics)."""
    fps = sum(float(c.get("fps") or 0.0) for c in cameras.values())
    return {"uptime_s": round(uptime_s, 1), "fps": round(fps, 2)}


# -- the operator side: reading the fleet -------------------------------------------------------------
@dataclass
class Device:
    """One device as its retained status describes it."""

    device_id: str
    status: dict[str, Any]

    @property
    def state(self) -> str:
        return str(self.status.get("state", "?"))

    @property
    def model(self) -> dict[str, Any]:
        model = self.status.get("model")
        return model if isinstance(model, dict) else {}

    @property
    def sha256(self) -> str:
        return str(self.model.get("sha256") or "")

    def age_s(self, now: float) -> float | None:
        """Seconds since the device last refreshed its status (None: no time stamp)."""
        ts = parse_ts(self.status.get("ts"))
        return None if ts is None else max(0.0, now - ts)


@dataclass
class Fleet:
    devices: dict[str, Device] = field(default_factory=dict)
    ignored: int = 0  # messages that were not a status object

    def sorted(self) -> list[Device]:
        return [self.devices[k] for k in sorted(self.devices)]


def parse_ts(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def device_from_topic(topic: str, prefix: str) -> str | None:
    head, sep, rest = topic.partition(f"{prefix}/")
    if head or not sep:
        return None
    device, _, tail = rest.partition("/")
    return device if device and tail == "status" else None


@dataclass
class Broker:
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    insecure: bool = False


def collect(broker: Broker, prefix: str = "edgecam", wait_s: float = 2.0) -> Fleet:
    """Subscribe to ``<prefix>/+/status`` for ``wait_s`` seconds (retained statuses arrive
    right after the subscription) and return what was seen. EdgecamError when the broker
    cannot be reached or refuses the login."""
    from device.mqtt import _paho

    mqtt = _paho()
    fleet = Fleet()
    lock = threading.Lock()
    subscribed = threading.Event()
    refused: list[str] = []
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"edgecam-fleet-{os.getpid()}-{time.monotonic_ns() % 10**9}",
        protocol=mqtt.MQTTv311,
    )
    if broker.username or broker.password:
        client.username_pw_set(broker.username or "", broker.password)
    if broker.ca_file is not None:
        client.tls_set(ca_certs=broker.ca_file)
        client.tls_insecure_set(broker.insecure)
    topic = f"{prefix}/+/status"

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_code.is_failure:
            refused.append(str(reason_code))
            subscribed.set()
            return
        client.subscribe(topic, qos=1)

    def on_subscribe(client: Any, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
        subscribed.set()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        device_id = device_from_topic(msg.topic, prefix)
        if device_id is None:
            return
        with lock:
            if not msg.payload:  # a cleared retained status: the device was removed
                fleet.devices.pop(device_id, None)
                return
            try:
                status = json.loads(msg.payload) if len(msg.payload) <= MAX_STATUS_BYTES else None
            except (ValueError, UnicodeDecodeError):
                status = None
            if isinstance(status, dict):
                fleet.devices[device_id] = Device(device_id, status)
            else:
                fleet.ignored += 1

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise EdgecamError(
            f"cannot reach the MQTT broker {broker.host}:{broker.port}: {exc}",
            "check --host/--port (or the device config's mqtt section) and that the broker runs",
        ) from None
    client.loop_start()
    try:
        if not subscribed.wait(10.0):
            raise EdgecamError(f"the broker {broker.host}:{broker.port} did not answer in 10 s")
        if refused:
            raise EdgecamError(
                f"the broker {broker.host}:{broker.port} refused the login: {refused[0]}",
                "give --username and the password in EDGECAM_MQTT_PASSWORD (an account that "
                f"may read {topic}, e.g. the operator in deploy/mosquitto/edgecam.acl)",
            )
        time.sleep(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return Fleet(dict(fleet.devices), fleet.ignored)


# -- the view ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    device: Device
    problems: tuple[str, ...]  # offline, stale, model


def judge(fleet: Fleet, want_sha256: str | None, stale_after_s: float, now: float) -> list[Row]:
    rows = []
    for device in fleet.sorted():
        problems = []
        if device.state != "online":
            problems.append("offline")
        else:
            age = device.age_s(now)
            if age is not None and age > stale_after_s:
                problems.append("stale")
        if want_sha256 and device.sha256 != want_sha256:
            problems.append("model")
        rows.append(Row(device, tuple(problems)))
    return rows


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _ago(ts: Any, now: float) -> str:
    when = parse_ts(ts)
    return "-" if when is None else _duration(max(0.0, now - when)) + " ago"


def table(rows: Sequence[Row], now: float) -> str:
    head = (
        "DEVICE", "STATE", "VERSION", "MODEL", "SHA256", "VARIANT", "BACKEND",
        "ACCELERATOR", "UPTIME", "FPS", "LAST ALERT", "SEEN", "NOTE",
    )  # fmt: skip
    lines: list[tuple[str, ...]] = [head]
    for row in rows:
        d = row.device
        model = d.model
        alert = d.status.get("last_alert")
        alert_text = "-"
        if isinstance(alert, dict):
            alert_text = f"{alert.get('rule', '?')} {_ago(alert.get('ts'), now)}"
        fps = d.status.get("fps")
        note = []
        if "offline" in row.problems:
            note.append("OFFLINE")
        if "stale" in row.problems:
            note.append("STALE")
        if "model" in row.problems:
            note.append("MODEL DIFFERS")
        lines.append(
            (
                d.device_id,
                d.state,
                str(d.status.get("version", "-")),
                f"{model.get('name', '-')}@{model.get('version', '-')}",
                (d.sha256[:12] or "-"),
                str(model.get("variant", "-")),
                str(model.get("backend", "-")),
                str(model.get("accelerator", "-")),
                _duration(d.status.get("uptime_s")) if d.state == "online" else "-",
                f"{fps:.1f}" if isinstance(fps, int | float) and d.state == "online" else "-",
                alert_text,
                _ago(d.status.get("ts"), now),
                ", ".join(note),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def want_from_bundle(path: Path) -> str:
    """The sha256 of a bundle folder's model.tflite (or of a .tflite file)."""
    from device.fetch import sha256_file
    from device.manifest import MODEL_FILE

    model = path / MODEL_FILE if path.is_dir() else path
    try:
        return sha256_file(model)
    except OSError as exc:
        raise EdgecamError(
            f"--want-bundle: cannot read {model}: {exc.strerror}",
            "give a bundle folder (with model.tflite) or a .tflite file",
        ) from None


# -- the command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="edgecam-fleet",
        description="What every edgecam device on a broker runs: reads the retained statuses.",
    )
    p.add_argument("--version", action="version", version=f"edgecam {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "status",
        help="a table of every device seen on the broker",
        description="Subscribe to <prefix>/+/status for a moment and print every device: "
        "offline ones, ones silent for longer than --stale-after, and ones not on the wanted "
        "model are marked. Exit status 0 when every device is online (and on the wanted "
        "model), 1 when not or when no device was seen, 2 on errors.",
    )
    s.add_argument("--config", type=Path, help="take the broker settings from a device config")
    s.add_argument("--host", help="broker host (default localhost, or the config's)")
    s.add_argument("--port", type=int, help="broker port (default 1883, or the config's)")
    s.add_argument(
        "--username", help="broker account; the password comes from EDGECAM_MQTT_PASSWORD"
    )
    s.add_argument("--ca-file", help="CA certificate (PEM): connect with TLS")
    s.add_argument("--prefix", help="topic prefix (default edgecam, or the config's)")
    s.add_argument(
        "--wait", type=float, default=2.0, help="seconds to collect statuses (default 2)"
    )
    s.add_argument(
        "--stale-after",
        type=float,
        default=600.0,
        help="mark an online device whose status is older than this many seconds (default 600;"
        " devices refresh it every metrics.interval)",
    )
    want = s.add_mutually_exclusive_group()
    want.add_argument("--want-sha256", help="mark devices whose model has another sha256")
    want.add_argument(
        "--want-bundle", type=Path, help="mark devices not running this bundle (folder or .tflite)"
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _broker(args: argparse.Namespace) -> tuple[Broker, str]:
    broker, prefix = Broker(), "edgecam"
    if args.config is not None:
        from device.config import load_config

        mqtt = load_config(args.config).mqtt
        broker = Broker(
            mqtt.host,
            mqtt.port,
            mqtt.username,
            mqtt.password.get_secret_value() if mqtt.password else None,
            mqtt.tls.ca_file if mqtt.tls else None,
            mqtt.tls.insecure if mqtt.tls else False,
        )
        prefix = mqtt.topic_prefix
    if args.host:
        broker.host = args.host
    if args.port:
        broker.port = args.port
    if args.username:
        broker.username = args.username
    if os.environ.get("EDGECAM_MQTT_PASSWORD"):
        broker.password = os.environ["EDGECAM_MQTT_PASSWORD"]
    if args.ca_file:
        broker.ca_file = args.ca_file
    return broker, args.prefix or prefix


def status(args: argparse.Namespace) -> int:
    want = args.want_sha256
    if want is not None:
        want = want.strip().lower()
        if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
            raise ConfigError(
                "--want-sha256 must be 64 hex digits",
                "copy it from `edgecam-convert sign` or give --want-bundle DIR",
            )
    elif args.want_bundle is not None:
        want = want_from_bundle(args.want_bundle)
    broker, prefix = _broker(args)
    fleet = collect(broker, prefix, args.wait)
    now = time.time()
    rows = judge(fleet, want, args.stale_after, now)
    if args.json:
        out = {
            "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "want_sha256": want,
            "devices": [
                {"device": r.device.device_id, "problems": list(r.problems), **r.device.status}
                for r in rows
            ],
            "counts": {
                "devices": len(rows),
                "online": sum(r.device.state == "online" for r in rows),
                "with_problems": sum(bool(r.problems) for r in rows),
            },
        }
        print(json.dumps(out, indent=2))
    elif rows:
        print(table(rows, now))
        bad = sum(bool(r.problems) for r in rows)
        online = sum(r.device.state == "online" for r in rows)
        print(f"\n{len(rows)} device(s), {online} online, {bad} marked")
    if not rows:
        print(
            f"no device status on {prefix}/+/status at {broker.host}:{broker.port}", file=sys.stderr
        )
        return EXIT_FAILURE
    return EXIT_FAILURE if any(r.problems for r in rows) else EXIT_OK


APP = CliApp(build_parser, {"status": status}, error_prefix="edgecam-fleet: ")


def main(argv: Sequence[str] | None = None) -> int:
    return APP.main(argv)


if __name__ == "__main__":
    sys.exit(main())
