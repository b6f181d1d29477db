"""Field samples: the JSON sidecar that travels with each JPEG from a device to the ingest server.

The contract between the device (which writes it) and the ingest server (which refuses anything
else): ``schema`` ``edgecam.sample/1``, ``sample_id`` = sha256 of the JPEG bytes, ``device``,
``camera``, ``ts`` (ISO 8601 UTC with milliseconds), ``model`` (name, version, sha256,
variant), ``top`` (label, index, score), ``policy`` (what chose the frame), optional
``event_id``, ``roi`` and ``redaction`` (the privacy masks and face redaction applied to the
JPEG, see docs/privacy.md; alert events carry the same record). Unknown keys are refused at
every level; every string that could end up in a file name or a topic is restricted
(device.names), so nothing a client sends becomes a path.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from device.names import CameraName, DeviceId

SCHEMA = "edgecam.sample/1"
POLICIES = (
    "low_confidence",
    "small_margin",
    "flip",
    "alert_start",
    "alert_best",
    "near_threshold",
    "random",
    "manual",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
_EVENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
REDACTION_METHODS = ("blur", "pixelate", "box")


def _sha256(value: str) -> str:
    if not _SHA256.match(value):
        raise ValueError("must be 64 lowercase hex digits (a sha256)")
    return value


def _label(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    # Labels become folder names when reviewed samples are merged into a dataset (DATA/<label>/),
    # so nothing in a sidecar may walk out of a folder: no separators, not "." or "..".
    if "/" in value or "\\" in value or value.strip() in (".", ".."):
        raise ValueError("must not contain '/' or '\\' or be '.' or '..'")
    return value


Sha256 = Annotated[str, AfterValidator(_sha256)]
Label = Annotated[str, Field(max_length=200), AfterValidator(_label)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SampleModel(_Strict):
    """The model that classified the frame."""

    name: Label = Field(description="Model name (model.json name, or the file stem).")
    version: Label = Field(description="Model version (model.json version).")
    sha256: Sha256 = Field(description="sha256 of model.tflite.")
    variant: Label = Field(description="float32, float16, dynamic, int8, edgetpu or unknown.")


class SampleClass(_Strict):
    label: Label
    index: int = Field(ge=0, le=1_000_000)
    score: float = Field(ge=0.0, le=1.0)


class Redaction(_Strict):
    """What privacy did to an image before it left the device (device.privacy)."""

    mask_version: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{12}$",
        description="First 12 hex digits of the sha256 of the camera's mask polygons; null: "
        "no masks.",
    )
    masks: int = Field(0, ge=0, le=1000, description="How many mask polygons were blacked out.")
    detector: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,100}@[0-9a-f]{12}$",
        description="The face detector, <file stem>@<sha12>; null: faces were not redacted.",
    )
    min_score: float | None = Field(
        None, ge=0.0, le=1.0, description="The detector's score threshold."
    )
    method: Literal[REDACTION_METHODS] | None = Field(  # type: ignore[valid-type]
        None, description="How faces were redacted: blur, pixelate or box."
    )
    margin: float | None = Field(
        None, ge=0.0, le=10.0, description="Face boxes were grown by this fraction per side."
    )
    tile_px: int | None = Field(
        None, ge=1, le=100_000, description="The detector also scanned squares of this size."
    )
    faces: int = Field(0, ge=0, le=100_000, description="How many faces were redacted.")

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


class SampleMeta(_Strict):
    """The sidecar of one field sample (``<sample_id>.json`` beside ``<sample_id>.jpg``)."""

    schema_: Literal["edgecam.sample/1"] = Field(
        SCHEMA, alias="schema", description="Format and version of this record."
    )
    sample_id: Sha256 = Field(description="sha256 of the JPEG bytes (the content hash).")
    device: DeviceId = Field(description="The device id that took the frame.")
    camera: CameraName = Field(description="The camera name on that device.")
    ts: str = Field(description="Capture time, ISO 8601 UTC with milliseconds.")
    model: SampleModel
    top: list[SampleClass] = Field(max_length=100, description="Top-k classes, best first.")
    policy: Literal[POLICIES] = Field(description="The sampling policy that chose the frame.")  # type: ignore[valid-type]
    event_id: str | None = Field(None, description="The alert event the frame belongs to.")
    roi: list[float] | None = Field(
        None, description="Region of interest [x, y, w, h] (fractions) when the JPEG is a crop."
    )
    redaction: Redaction | None = Field(
        None, description="The privacy masks and face redaction applied to the JPEG."
    )

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True
    )

    @field_validator("ts")
    @classmethod
    def _ts(cls, value: str) -> str:
        try:
            valid = bool(_ISO_MS.match(value)) and bool(datetime.fromisoformat(value[:-1]))
        except ValueError:  # a month 13, a 31st of June, an hour 25
            valid = False
        if not valid:
            raise ValueError(
                "must be ISO 8601 UTC with milliseconds, e.g. 2026-11-29T08:26:11.123Z"
            )
        return value

    @field_validator("event_id")
    @classmethod
    def _event_id(cls, value: str | None) -> str | None:
        if value is not None and not _EVENT_ID.match(value):
            raise ValueError("must be letters, digits, '_', '.', '-' (at most 80)")
        return value

    @field_validator("roi")
    @classmethod
    def _roi(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return value
        if len(value) != 4 or not all(math.isfinite(v) and 0 <= v <= 1 for v in value):
            raise ValueError("roi is [x, y, w, h], 4 fractions of the frame in [0, 1]")
        return value

    @property
    def date(self) -> str:
        """``YYYY-MM-DD`` of ``ts`` (the inbox folder of the sample)."""
        return self.ts[:10]

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def sample_id(jpeg: bytes) -> str:
    """The content hash that names a sample."""
    return hashlib.sha256(jpeg).hexdigest()
