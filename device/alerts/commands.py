"""Commands on ``<prefix>/<device>/cmd/<command>``: payload parsing and validation.

Payloads are JSON objects (an empty payload means ``{}``); every command accepts an ``id`` that
the reply repeats. Replies go to ``<prefix>/<device>/cmd/<command>/result`` (QoS 1)::

    {"id": "42", "command": "pause", "ok": true, "result": {...}, "ts": "..."}
    {"id": "42", "command": "pause", "ok": false, "error": "camera 'x' does not exist", "ts": "..."}

A payload that is not valid JSON, not an object, has unknown keys or wrong types, or names an
unknown camera or rule is answered with ``ok: false`` and changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class CommandError(ValueError):
    """A command payload that cannot be executed; the message goes into the reply."""


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | int | None = Field(None, description="Echoed in the reply.")


class SnapshotCommand(_Command):
    camera: str | None = Field(None, description="One camera; null: every camera.")


class PauseCommand(_Command):
    camera: str | None = Field(None, description="One camera; null: every camera.")
    rule: str | None = Field(None, description="One rule; null: every rule.")
    minutes: float | None = Field(
        None, gt=0, le=7 * 24 * 60, description="Resume by itself after this long; null: never."
    )


class ResumeCommand(_Command):
    camera: str | None = Field(None, description="One camera; null: every camera.")
    rule: str | None = Field(None, description="One rule; null: every rule.")


class ReloadCommand(_Command):
    pass


class StateCommand(_Command):
    pass


COMMANDS: dict[str, type[_Command]] = {
    "snapshot": SnapshotCommand,
    "pause": PauseCommand,
    "resume": ResumeCommand,
    "reload": ReloadCommand,
    "state": StateCommand,
}


def request_id(payload: bytes) -> str | int | None:
    """The ``id`` of a payload, when it can be found, for replies to invalid commands."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str | int) else None


def parse_command(name: str, payload: bytes) -> _Command:
    """Validate one command payload; CommandError says what is wrong."""
    model = COMMANDS.get(name)
    if model is None:
        raise CommandError(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
    text = payload.strip()
    if not text:
        data: Any = {}
    else:
        try:
            data = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CommandError(f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError(f"payload must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()
        )
        raise CommandError(f"invalid {name} command: {problems}") from None
