"""Where results go: MQTT classification topic, console / JSON-lines. Never block inference."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from device.config import ConsoleConfig, MQTTConfig
from device.mqtt import MqttPublisher, utc_iso
from device.postprocess import Class
from device.sources.base import Frame

log = logging.getLogger(__name__)


@dataclass
class Result:
    """One classified frame."""

    camera: str
    frame: Frame
    top: list[Class]
    inference_ms: float
    total_ms: float  # capture -> result
    model_ref: str
    done_wall: float = field(default_factory=time.time)

    @property
    def top1(self) -> str | None:
        return self.top[0].label if self.top else None

    def payload(self) -> dict[str, Any]:
        """The ``classification`` payload (DESIGN.md, MQTT): stable keys."""
        return {
            "ts": utc_iso(self.frame.ts_wall),
            "frame": self.frame.index,
            "top": [c.as_dict() for c in self.top],
            "latency_ms": {
                "inference": round(self.inference_ms, 2),
                "total": round(self.total_ms, 2),
            },
            "model": self.model_ref,
        }


class Sink:
    def handle(self, result: Result) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release."""


class ChangeGate:
    """Emit on a change of the top-1 label, or when ``interval`` seconds passed."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last: dict[str, tuple[str | None, float]] = {}

    def __call__(self, result: Result) -> bool:
        now = time.monotonic()
        last = self._last.get(result.camera)
        if last is not None and last[0] == result.top1 and now - last[1] < self.interval:
            return False
        self._last[result.camera] = (result.top1, now)
        return True


class MqttClassificationSink(Sink):
    def __init__(self, publisher: MqttPublisher, cfg: MQTTConfig):
        self.publisher = publisher
        self.qos = cfg.qos
        self.gate = ChangeGate(cfg.classification_interval)

    def handle(self, result: Result) -> None:
        if self.gate(result):
            self.publisher.publish(
                self.publisher.topic(result.camera, "classification"),
                result.payload(),
                qos=self.qos,
            )


class ConsoleSink(Sink):
    """Text or JSON lines on stdout, and/or every result appended to a JSON-lines file."""

    def __init__(self, cfg: ConsoleConfig, stream: IO[str] | None = None):
        self.format = cfg.format
        self.stream = stream or sys.stdout
        self.gate = ChangeGate(cfg.interval) if cfg.changes_only else None
        self.file: IO[str] | None = None
        if cfg.jsonl_path:
            path = Path(cfg.jsonl_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = path.open("a", encoding="utf-8", buffering=1)

    def handle(self, result: Result) -> None:
        if self.file is not None:
            self.file.write(json.dumps({"camera": result.camera, **result.payload()}) + "\n")
        if self.format == "off" or (self.gate is not None and not self.gate(result)):
            return
        if self.format == "json":
            line = json.dumps({"camera": result.camera, **result.payload()})
        else:
            best = ", ".join(f"{c.label}: {c.score:.3f}" for c in result.top)
            line = f"[{result.camera} #{result.frame.index}] {best} ({result.inference_ms:.1f} ms)"
        try:
            print(line, file=self.stream, flush=True)
        except (BrokenPipeError, ValueError):
            self.format = "off"

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
