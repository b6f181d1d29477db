"""Names that become MQTT topic levels and file names: cameras, rules, the device id.

One rule for all of them, so a name accepted in one place is accepted everywhere: letters,
digits, ``_``, ``.`` and ``-``, at most 64 characters, and not ``.`` or ``..`` (those would
walk out of a snapshot folder). MQTT wildcards (``+``, ``#``), ``/`` and spaces are refused.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

SAFE_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_SAFE = re.compile(SAFE_NAME_PATTERN)
ALLOWED = "letters, digits, '_', '.' and '-' (1-64 characters, not '.' or '..')"


def check_safe_name(value: str, what: str = "name") -> str:
    """Return ``value`` when it is a safe name; ValueError saying what is allowed otherwise."""
    if not _SAFE.match(value) or value in (".", ".."):
        raise ValueError(
            f"{what} {value!r} is not allowed: use {ALLOWED}; it becomes an MQTT topic level "
            "and a file name"
        )
    return value


def _name_validator(what: str) -> AfterValidator:
    return AfterValidator(lambda v: check_safe_name(v, what))


CameraName = Annotated[str, _name_validator("camera name")]
RuleName = Annotated[str, _name_validator("rule name")]
DeviceId = Annotated[str, _name_validator("device_id")]


def check_unique(names: list[str], what: str) -> None:
    """ValueError naming the repeated ones when ``names`` has duplicates."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} names must be unique, repeated: {', '.join(dupes)}")
