"""The ``alerts:`` section of the device config.

Rules are global and apply to every camera unless they name ``cameras``. Defaults suppress
flapping without any tuning: 3 consecutive frames over ``start_score`` start an event, 10
consecutive frames under ``end_score`` (60 % of ``start_score``) end it, and the same rule may
not start again on the same camera for 30 s. Model-dependent checks (do the labels exist, do
the cameras exist) are done when the device starts and on ``reload``
(``device.alerts.check_rules``): this module needs neither the model nor the cameras.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from device.geometry import Roi
from device.names import RuleName, check_unique

_HOURS = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-4]):([0-5]\d)$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_hours(spec: str) -> tuple[int, int]:
    """``"22:00-06:30"`` -> (start, end) in minutes after midnight; end may be before start."""
    match = _HOURS.match(spec.strip())
    if not match:
        raise ValueError(f"active_hours entry {spec!r} is not 'HH:MM-HH:MM' (24 h, local time)")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end > 24 * 60:
        raise ValueError(f"active_hours entry {spec!r}: the end is after 24:00")
    if start == end:
        raise ValueError(f"active_hours entry {spec!r} is empty (start == end)")
    return start, end


class RuleConfig(_Section):
    name: RuleName = Field(
        description="Rule name, used in event payloads, topics, snapshot file names and Home "
        "Assistant entity ids: letters, digits, '_', '.' and '-' (not '.' or '..').",
    )
    labels: list[str] = Field(
        default_factory=list,
        description="Model labels that trigger the rule: the full label or any of its "
        "comma-separated synonyms, case-insensitive (e.g. 'red fox').",
    )
    groups: list[str] = Field(
        default_factory=list, description="Names of label groups (alerts.label_groups) to include."
    )
    cameras: list[str] | None = Field(
        None, description="Cameras the rule watches; null: every camera."
    )
    start_score: float = Field(
        0.5, gt=0.0, le=1.0, description="An event starts when the score reaches this."
    )
    end_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="An event ends when the score stays below this (hysteresis); "
        "null: 60 % of start_score.",
    )
    confirm: Literal["consecutive", "average"] = Field(
        "consecutive",
        description="consecutive: start_frames frames in a row over start_score start an event, "
        "end_frames in a row under end_score end it; average: the mean over the last "
        "start_frames / end_frames frames is compared instead.",
    )
    start_frames: int = Field(3, ge=1, le=1000, description="Frames that confirm a start.")
    end_frames: int = Field(10, ge=1, le=10000, description="Frames that confirm an end.")
    cooldown_s: float = Field(
        30.0,
        ge=0.0,
        description="After an event ends, the rule cannot start again on that camera for this "
        "long (seconds).",
    )
    update_delta: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="Send an 'update' message when the peak score rises by at least this much.",
    )
    update_interval_s: float = Field(
        1.0, ge=0.0, description="At most one 'update' message per event this often (seconds)."
    )
    active_hours: list[str] = Field(
        default_factory=list,
        description="Local-time windows 'HH:MM-HH:MM' (may span midnight) when the rule is "
        "armed; empty: always.",
    )
    roi: Roi = Field(
        None,
        description="Region of interest [x, y, w, h] as fractions of the full frame: this crop is "
        "classified for the rule (one more inference per frame); null: the camera's result.",
    )
    snapshot: bool = Field(True, description="Save and publish snapshots of this rule's events.")
    device_class: str | None = Field(
        None,
        description="Home Assistant binary_sensor device class (e.g. motion, occupancy); null: none.",
    )

    @field_validator("active_hours")
    @classmethod
    def _hours(cls, value: list[str]) -> list[str]:
        for spec in value:
            parse_hours(spec)
        return value

    @model_validator(mode="after")
    def _check(self) -> RuleConfig:
        if not self.labels and not self.groups:
            raise ValueError(f"rule {self.name!r} names no labels and no groups")
        if self.end_score is not None and self.end_score > self.start_score:
            raise ValueError(
                f"rule {self.name!r}: end_score ({self.end_score}) must not be above "
                f"start_score ({self.start_score})"
            )
        return self

    @property
    def end_threshold(self) -> float:
        return self.end_score if self.end_score is not None else round(self.start_score * 0.6, 6)


class SnapshotConfig(_Section):
    enabled: bool = Field(True, description="Save alert snapshots as JPEG files.")
    dir: str = Field(
        "state/snapshots", description="Folder for snapshots (one subfolder per camera)."
    )
    publish: bool = Field(
        True, description="Publish each snapshot on <camera>/snapshot (retained, via the outbox)."
    )
    best_frame: bool = Field(
        True, description="Also keep the frame with the event's peak score ('best' snapshot)."
    )
    crop_to_roi: bool = Field(
        False, description="Crop snapshots of rules with a roi to that region."
    )
    max_width: int | None = Field(
        1280, ge=32, description="Downscale wider frames to this width; null: full size."
    )
    quality: int = Field(85, ge=10, le=100, description="JPEG quality.")
    max_count: int = Field(2000, ge=1, description="Keep at most this many snapshot files.")
    max_age_days: float = Field(14.0, gt=0, description="Delete snapshots older than this.")
    max_mb: float = Field(500.0, gt=0, description="Keep the snapshot folder under this size.")
    min_free_mb: float = Field(
        200.0, ge=0, description="Delete oldest snapshots while the disk has less free space."
    )


class OutboxConfig(_Section):
    path: str = Field(
        "state/outbox.sqlite3",
        description="SQLite file of the store-and-forward queue (created on first use).",
    )
    max_messages: int = Field(
        10000, ge=10, description="Keep at most this many undelivered messages (oldest dropped)."
    )
    max_mb: float = Field(
        200.0, gt=0, description="Keep undelivered messages under this size (oldest dropped)."
    )
    max_age_h: float = Field(
        168.0, gt=0, description="Drop undelivered messages older than this (hours)."
    )
    inflight: int = Field(
        20, ge=1, le=1000, description="Messages published and not yet acknowledged at once."
    )
    flush_timeout_s: float = Field(
        3.0, ge=0, description="On stop, wait this long for the broker to take what is queued."
    )
    resend_after_s: float = Field(
        60.0,
        gt=0,
        description="Connected, yet nothing acknowledged for this long: send every undelivered "
        "message again, oldest first (consumers collapse duplicates by event_id and seq).",
    )


class HomeAssistantConfig(_Section):
    enabled: bool = Field(True, description="Publish Home Assistant MQTT discovery configs.")
    discovery_prefix: str = Field(
        "homeassistant", pattern=r"^[A-Za-z0-9_./-]+$", description="HA's discovery prefix."
    )
    name: str | None = Field(None, description="Device name shown in HA; null: the device_id.")
    top_label_sensor: bool = Field(
        True, description="A sensor per camera for the current top label and one for its score."
    )


class AlertsConfig(_Section):
    enabled: bool = Field(
        True, description="Run alert rules, snapshots, discovery and commands (needs nothing else)."
    )
    rules: list[RuleConfig] = Field(default_factory=list, description="Alert rules.")
    label_groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Named lists of labels that rules can use, e.g. canines: [red fox, kit fox].",
    )
    snapshots: SnapshotConfig = Field(
        default_factory=SnapshotConfig, description="Snapshot files and their retention."
    )
    outbox: OutboxConfig = Field(
        default_factory=OutboxConfig, description="Durable store-and-forward of alert messages."
    )
    homeassistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="Home Assistant MQTT discovery."
    )
    commands: bool | None = Field(
        None,
        description="Deprecated: use the top-level `commands:` section (commands.enabled). "
        "false still turns commands off.",
    )

    @model_validator(mode="after")
    def _check(self) -> AlertsConfig:
        check_unique([r.name for r in self.rules], "rule")
        for rule in self.rules:
            missing = [g for g in rule.groups if g not in self.label_groups]
            if missing:
                raise ValueError(
                    f"rule {rule.name!r}: unknown label group(s) {', '.join(missing)} "
                    f"(defined: {', '.join(self.label_groups) or 'none'})"
                )
        return self
