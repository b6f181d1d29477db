"""Work handed from the inference and command threads to the "alerts-worker" thread.

One small record per kind of job; the worker dispatches on the record's type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from device.alerts.events import AlertEvent
from device.alerts.rules import Transition
from device.commands import Reply


@dataclass(frozen=True)
class SnapRequest:
    """Save (and publish) these pixels as the event's start or best snapshot."""

    field: Literal["snapshot", "best_snapshot"]  # the event field that names the file
    ref: str  # path below the snapshot folder
    pixels: np.ndarray
    roi: Sequence[float] | None = None


@dataclass(frozen=True)
class TransitionJob:
    """An event started, was updated or ended: snapshots, the alert message, the rule state."""

    camera: str
    rule: str
    event: AlertEvent
    transition: Transition
    snaps: list[SnapRequest] = field(default_factory=list)


@dataclass(frozen=True)
class StatesJob:
    """Queue every rule's current state (retained), e.g. after a (re)connect or a reload."""


@dataclass(frozen=True)
class RecoverJob:
    """End the events an earlier run left open (crash, power loss)."""


@dataclass(frozen=True)
class SnapshotJob:
    """The ``snapshot`` command: save and publish the latest frame of these cameras."""

    cameras: list[str]
    reply: Reply


@dataclass(frozen=True)
class HealthJob:
    """A camera's health changed (device.health): its retained state, and the health event
    (start or end, on the alert topic) when there is one."""

    camera: str
    state: dict[str, Any]
    event: dict[str, Any] | None = None


Job = TransitionJob | StatesJob | RecoverJob | SnapshotJob | HealthJob
