"""Commands to the device on ``<prefix>/<device>/cmd/<command>``: one dispatcher, a handler table.

Components register their commands by name with a payload model and a handler: the alerts
register ``snapshot``, ``pause``, ``resume`` and ``state`` (``device.alerts.commands``), the runner
registers ``reload``, the model rollout ``model`` and ``rollback`` (``device.rollout``; a long
command replies once per step, each reply with a ``"step"`` key, docs/fleet.md). Payloads are
JSON objects (an empty payload means ``{}``); every command accepts an ``id`` that the reply
repeats. Replies go to ``cmd/<command>/result`` (QoS 1)::

    {"id": "42", "command": "pause", "ok": true, "result": {...}, "ts": "..."}
    {"id": "42", "command": "pause", "ok": false, "error": "camera 'x' does not exist", "ts": "..."}

Checks, in order, before a handler runs: the payload size (``MAX_PAYLOAD_BYTES``, checked before
parsing), the command name (registered, and in ``commands.allow``), then JSON and the payload
model. A refused command changes nothing. Neither replies nor log lines repeat the payload:
the log names the command, the payload size and the id. Handlers run in one "commands" thread,
in arrival order, never in paho's network thread; a handler may reply later (from a worker).

The broker is the first line of defence: only an operator account should be able to publish
on ``cmd/`` (deploy/mosquitto/ has an ACL file that does this).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from device.mqtt import MessageHandler, utc_iso
from device.names import SAFE_NAME_PATTERN
from device.topics import Topics

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_QUEUED = 32  # commands waiting for the "commands" thread; more are answered "busy"
COMMAND_NAMES = ("snapshot", "pause", "resume", "reload", "state", "model", "rollback")
_SAFE = re.compile(SAFE_NAME_PATTERN)

# a camera or rule named in a payload: bounded and from the safe set, so an error that names it
# never repeats more than 64 harmless characters
TargetName = Annotated[str, Field(max_length=64, pattern=SAFE_NAME_PATTERN)]


class CommandsConfig(BaseModel):
    """The top-level ``commands:`` section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(
        True, description="Accept commands on <prefix>/<device>/cmd/<command> (docs/alerts.md)."
    )
    allow: list[str] = Field(
        default_factory=lambda: list(COMMAND_NAMES),
        description="The commands this device carries out; others are answered 'disabled'. "
        f"Known: {', '.join(COMMAND_NAMES)}.",
    )
    max_pause_minutes: float | None = Field(
        1440.0,
        gt=0,
        description="Longest pause a 'pause' command may ask for; a pause without 'minutes' "
        "lasts this long. null: no limit (a pause without minutes lasts until 'resume').",
    )

    @field_validator("allow")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in COMMAND_NAMES]
        if unknown:
            raise ValueError(
                f"unknown command(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(COMMAND_NAMES)})"
            )
        return value


def effective_config(cfg: CommandsConfig, legacy: bool | None) -> CommandsConfig:
    """Fold the old ``alerts.commands: true/false`` into the ``commands:`` section."""
    if legacy is None:
        return cfg
    log.warning(
        "alerts.commands is deprecated: write `commands: {enabled: %s}` at the top level",
        "true" if legacy else "false",
    )
    return cfg if legacy else cfg.model_copy(update={"enabled": False})


class CommandError(ValueError):
    """A command that cannot be carried out; the message goes into the reply (never the
    payload)."""


class Command(BaseModel):
    """Base of every command payload model."""

    model_config = ConfigDict(extra="forbid")
    id: str | int | None = Field(
        None, description="Echoed in the reply (a string of at most 64 characters, or a number)."
    )

    @field_validator("id", mode="before")
    @classmethod
    def _short_id(cls, value: Any) -> Any:
        if _echoable_id(value) is None and value is not None:
            raise ValueError("give a string of at most 64 characters or a 64-bit integer")
        return value


class ReloadCommand(Command):
    """Read the config file again and apply its ``alerts`` section."""


class Reply:
    """Sends the one reply to a command (from any thread)."""

    def __init__(self, send: Callable[[str, dict[str, Any]], None], name: str, rid: Any):
        self._send = send
        self.name = name
        self.id = rid

    def ok(self, result: Any) -> None:
        self._send(self.name, {"id": self.id, "ok": True, "result": result})

    def error(self, message: str) -> None:
        log.warning("command %s (id %s) failed: %s", self.name, _loggable(self.id), message)
        self._send(self.name, {"id": self.id, "ok": False, "error": message})

    def step(self, step: str, result: Any = None, *, error: str | None = None) -> None:
        """One step of a long command (``model``): several replies, each naming its ``step``;
        ``error`` makes it a failed one (``ok`` false)."""
        body: dict[str, Any] = {"id": self.id, "ok": error is None, "step": step, "result": result}
        if error is not None:
            log.warning("command %s (id %s) %s: %s", self.name, _loggable(self.id), step, error)
            body["error"] = error
        self._send(self.name, body)


Handler = Callable[[Any, Reply], None]  # (validated payload model, reply)


@dataclass(frozen=True)
class CommandSpec:
    name: str
    model: type[Command]
    handler: Handler


class Publisher(Protocol):
    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> Any: ...

    def subscribe(self, topic: str, handler: MessageHandler) -> None: ...


@dataclass(frozen=True)
class _Incoming:
    name: str
    payload: bytes


class CommandDispatcher:
    def __init__(self, publisher: Publisher, topics: Topics, cfg: CommandsConfig | None = None):
        self.publisher = publisher
        self.topics = topics
        self.cfg = cfg or CommandsConfig()
        self.commands: dict[str, CommandSpec] = {}
        self.counts = {"received": 0, "done": 0, "refused": 0, "too_large": 0, "busy": 0}
        self._queue: queue.Queue[_Incoming | None] = queue.Queue(MAX_QUEUED)
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._thread_lock = threading.Lock()

    @property
    def max_pause_minutes(self) -> float | None:
        return self.cfg.max_pause_minutes

    def register(self, name: str, model: type[Command], handler: Handler) -> None:
        """Carry out ``name`` with ``handler(payload, reply)``; one handler per name."""
        if name in self.commands:
            raise ValueError(f"command {name!r} is registered twice")
        self.commands[name] = CommandSpec(name, model, handler)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe to ``cmd/+`` (now and after every reconnect); the "commands" thread starts
        with the first command."""
        if not self.cfg.enabled:
            log.info("commands: disabled (commands.enabled: false)")
            return
        if not self.commands:
            return
        self.publisher.subscribe(self.topics.command("+"), self.on_message)
        log.info(
            "commands: %s on %s",
            ", ".join(n for n in self.commands if n in self.cfg.allow) or "none enabled",
            self.topics.command("<command>"),
        )

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):  # a full queue: the thread is a daemon
                self._queue.put_nowait(None)
            self._thread.join(5.0)

    # -- paho's network thread: cheap checks, then hand over -----------------------------------------
    def on_message(self, topic: str, payload: bytes) -> None:
        name = self.topics.command_name(topic)
        if name is None:
            return
        self.counts["received"] += 1
        if len(payload) > MAX_PAYLOAD_BYTES:
            self.counts["too_large"] += 1
            self._refuse(
                name,
                None,
                len(payload),
                f"payload is {len(payload)} bytes; a command takes at most {MAX_PAYLOAD_BYTES}",
            )
            return
        with self._thread_lock:
            if not self._thread.is_alive() and self._thread.ident is None:
                self._thread.start()
        try:
            self._queue.put_nowait(_Incoming(name, bytes(payload)))
        except queue.Full:
            self.counts["busy"] += 1
            self._refuse(name, request_id(payload), len(payload), "busy: too many commands waiting")

    # -- the "commands" thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self.dispatch(item.name, item.payload)

    def dispatch(self, name: str, payload: bytes) -> None:
        """Check, parse and carry out one command; every outcome is replied to."""
        size = len(payload)
        if size > MAX_PAYLOAD_BYTES:
            self.counts["too_large"] += 1
            msg = f"payload is {size} bytes; a command takes at most {MAX_PAYLOAD_BYTES}"
            self._refuse(name, None, size, msg)
            return
        spec = self.commands.get(name)
        if spec is None:
            shown = repr(name) if _SAFE.match(name) else "(name not shown: not a safe name)"
            known = ", ".join(n for n in self.commands if n in self.cfg.allow) or "none"
            self._refuse(
                name, request_id(payload), size, f"unknown command {shown} (known: {known})"
            )
            return
        if name not in self.cfg.allow:
            allowed = ", ".join(self.cfg.allow) or "none"
            self._refuse(
                name,
                request_id(payload),
                size,
                f"command {name!r} is disabled on this device (commands.allow: {allowed})",
            )
            return
        try:
            cmd = parse_payload(spec.model, name, payload)
        except CommandError as exc:
            self._refuse(name, request_id(payload), size, str(exc))
            return
        log.info("command %s: id %s, %d bytes", name, _loggable(cmd.id), size)
        reply = Reply(self._send, name, cmd.id)
        try:
            spec.handler(cmd, reply)
        except CommandError as exc:
            self.counts["refused"] += 1
            reply.error(str(exc))
            return
        except Exception:  # a handler bug must not stop the command thread
            log.exception("command %s (id %s) failed", name, _loggable(cmd.id))
            reply.error(f"{name} failed, see the device log")
            return
        self.counts["done"] += 1

    def _refuse(self, name: str, rid: Any, size: int, message: str) -> None:
        self.counts["refused"] += 1
        if not _SAFE.match(name):
            log.warning("command refused (%d bytes): %s; not answered", size, message)
            return
        log.warning("command %s (id %s, %d bytes) refused: %s", name, _loggable(rid), size, message)
        self._send(name, {"id": rid, "ok": False, "error": message})

    def _send(self, name: str, body: dict[str, Any]) -> None:
        payload = {"id": body.get("id"), "command": name, **body, "ts": utc_iso(time.time())}
        self.publisher.publish(self.topics.command_result(name), payload, qos=1)

    def stats(self) -> dict[str, int]:
        return dict(self.counts)


def _loggable(rid: Any) -> str:
    return "-" if rid is None else repr(rid)


def request_id(payload: bytes) -> str | int | None:
    """The ``id`` of a payload, for replies to invalid commands, when it is a short string or a
    64-bit integer (anything else is not repeated)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return _echoable_id(data.get("id") if isinstance(data, dict) else None)


def _echoable_id(value: Any) -> str | int | None:
    if isinstance(value, str) and len(value) <= 64:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        return value
    return None


def parse_payload(model: type[Command], name: str, payload: bytes) -> Any:
    """Validate one command payload; CommandError says what is wrong without repeating it."""
    text = payload.strip()
    if not text:
        data: Any = {}
    else:
        try:
            data = json.loads(text.decode("utf-8"))
        except UnicodeDecodeError:
            raise CommandError("payload is not UTF-8 text") from None
        except RecursionError:
            raise CommandError("payload is not JSON: nested too deeply") from None
        except ValueError as exc:
            reason = getattr(exc, "msg", "invalid")
            pos = getattr(exc, "pos", None)
            where = f" at character {pos}" if pos is not None else ""
            raise CommandError(f"payload is not JSON: {reason}{where}") from None
    if not isinstance(data, dict):
        raise CommandError(f"payload must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(_short(p) for p in e['loc']) or 'payload'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)[:5]
        )
        raise CommandError(f"invalid {name} command: {problems}") from None


def _short(part: Any) -> str:
    """A field name from the payload, shortened: an unknown key is named, never repeated whole."""
    text = str(part)
    if len(text) > 32:
        return f"<a key of {len(text)} characters>"
    return text if _SAFE.match(text) else repr(text)
