"""Where results go: MQTT classification topic, console / JSON-lines. Never block inference.

``SinkSet`` hands each result to every sink and isolates them: a sink that raises is logged
once per kind of error (with its traceback), counted in the metrics, and the others and the
loop go on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from device.config import ConsoleConfig, MQTTConfig
from device.mqtt import MqttPublisher, utc_iso
from device.postprocess import Class
from device.sources.base import Frame
from device.supervision import Backoff, describe_exception

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
        """The ``classification`` payload (docs/architecture.md, MQTT topics): stable keys."""
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
    """Receives every result, on the inference thread of its camera: must not block."""

    name: str = ""  # in metrics and logs; default: the class name

    def handle(self, result: Result) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release."""


def sink_name(sink: Sink) -> str:
    return getattr(sink, "name", "") or type(sink).__name__


@dataclass
class _SinkErrors:
    count: int = 0
    last: str | None = None


class SinkSet:
    """The sinks of a device, isolated from each other and from the loop (module docstring)."""

    def __init__(self, sinks: Iterable[Sink] = ()):
        self.sinks: list[Sink] = []
        self._errors: dict[str, _SinkErrors] = {}
        self._logged: set[tuple[str, type[BaseException]]] = set()
        self._lock = threading.Lock()
        for sink in sinks:
            self.add(sink)

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)
        self._errors.setdefault(sink_name(sink), _SinkErrors())

    def __iter__(self):
        return iter(list(self.sinks))

    def __len__(self) -> int:
        return len(self.sinks)

    def handle(self, result: Result) -> None:
        for sink in self.sinks:
            try:
                sink.handle(result)
            except Exception as exc:  # the isolation boundary of each sink
                self._failed(sink, "handling a result", exc)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # one sink's close never skips the others
                self._failed(sink, "closing", exc)

    def _failed(self, sink: Sink, doing: str, exc: Exception) -> None:
        name = sink_name(sink)
        with self._lock:
            errors = self._errors.setdefault(name, _SinkErrors())
            errors.count += 1
            errors.last = describe_exception(exc)
            first = (name, type(exc)) not in self._logged
            self._logged.add((name, type(exc)))
        if first:
            log.error(
                "sink %s failed %s (logged once per kind of error, counted in metrics): %s",
                name,
                doing,
                errors.last,
                exc_info=exc,
            )

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Per sink: ``errors`` (count), ``last_error``, and what the sink itself reports."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for name, errors in self._errors.items():
                out[name] = {"errors": errors.count, "last_error": errors.last}
        for sink in self.sinks:
            extra = getattr(sink, "sink_metrics", None)
            if callable(extra):
                out.setdefault(sink_name(sink), {}).update(extra())
        return out


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
    name = "mqtt"

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


class ResultsFile:
    """Appends lines to a JSON-lines file without ever stopping the loop.

    When the file cannot be opened or written (full disk, read-only folder), that is logged
    once, lines are dropped and counted, and the file is reopened with backoff (1 s, 2 s, ...
    up to a minute); its recovery is logged too.
    """

    def __init__(self, path: str | Path, retry_max_s: float = 60.0):
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._backoff = Backoff(1.0, retry_max_s)
        self._retry_at = 0.0
        self.failing = False
        self.failures = 0  # outages
        self.dropped = 0  # lines not written
        self._open()

    def write(self, line: str) -> None:
        if self._file is None and (time.monotonic() < self._retry_at or not self._open()):
            self.dropped += 1
            return
        assert self._file is not None
        try:
            self._file.write(line)
        except OSError as exc:
            self.dropped += 1
            self._fail(exc)

    def _open(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", buffering=1)
        except OSError as exc:
            self._fail(exc)
            return False
        if self.failing:
            self.failing = False
            self._backoff.reset()
            log.info(
                "results file %s is writable again (%d results were not written)",
                self.path,
                self.dropped,
            )
        return True

    def _fail(self, exc: OSError) -> None:
        self._discard()
        self._retry_at = time.monotonic() + self._backoff.next()
        if not self.failing:
            self.failing = True
            self.failures += 1
            log.error(
                "cannot write the results file %s: %s; classifying goes on, retrying with backoff",
                self.path,
                exc.strerror or exc,
            )

    def _discard(self) -> None:
        if self._file is not None:
            # the unwritten tail of the buffer is lost with the failing write
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        self._discard()


class ConsoleSink(Sink):
    """Text or JSON lines on stdout, and/or every result appended to a JSON-lines file."""

    name = "console"

    def __init__(self, cfg: ConsoleConfig, stream: IO[str] | None = None):
        self.format = cfg.format
        self.stream = stream or sys.stdout
        self.gate = ChangeGate(cfg.interval) if cfg.changes_only else None
        self.file = ResultsFile(cfg.jsonl_path) if cfg.jsonl_path else None

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

    def sink_metrics(self) -> dict[str, Any]:
        if self.file is None:
            return {}
        return {
            "results_file": {
                "ok": not self.file.failing,
                "outages": self.file.failures,
                "not_written": self.file.dropped,
            }
        }

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
