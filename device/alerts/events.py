"""Alert events and their payloads on ``<prefix>/<device>/<camera>/alert`` (QoS 1).

An event has a stable ``event_id`` (UTC start time + random suffix, unique across restarts) and
a ``seq`` per message (start = 0, then each update, end last): ``(event_id, seq)`` identifies a
message, so a consumer collapses the duplicates of at-least-once delivery with it. Times are the
original times of what happened (ISO 8601 UTC, ms), also when delivered late from the outbox.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from device.alerts.rules import Observation, Transition
from device.mqtt import utc_iso


def new_event_id(ts_wall: float) -> str:
    ms = round(ts_wall * 1000) % 1000
    return (
        time.strftime("%Y%m%dT%H%M%S", time.gmtime(ts_wall)) + f"{ms:03d}Z-{secrets.token_hex(4)}"
    )


@dataclass
class AlertEvent:
    event_id: str
    camera: str
    rule: str
    start: Observation  # the frame that confirmed the start
    first: Observation  # the first frame of the confirming run
    seq: int = 0
    snapshot: str | None = None  # ref of the start snapshot
    best_snapshot: str | None = None  # ref of the best-frame snapshot (set at the end)
    best_frame: int = -1  # index of the frame whose pixels are kept as the best
    redaction: dict[str, Any] | None = None  # privacy applied to its latest snapshot

    def payload(
        self, tr: Transition, device_id: str, model_ref: str | None = None
    ) -> dict[str, Any]:
        """The message for a transition of this event (stable keys: add, never rename)."""
        peak = tr.peak
        ended = tr.kind == "end"
        return {
            "event_id": self.event_id,
            "type": tr.kind,
            "seq": self.seq,
            "device": device_id,
            "camera": self.camera,
            "rule": self.rule,
            "label": peak.label,
            "score": round(tr.obs.score, 5),
            "peak_score": round(peak.score, 5),
            "ts": utc_iso(tr.obs.ts_wall),
            "start": utc_iso(self.start.ts_wall),
            "first_seen": utc_iso(self.first.ts_wall),
            "end": utc_iso(tr.obs.ts_wall) if ended else None,
            "duration_s": round(tr.obs.ts_wall - self.start.ts_wall, 3) if ended else None,
            "frame": tr.obs.frame,
            "peak_frame": peak.frame,
            "snapshot": self.snapshot,
            "best_snapshot": self.best_snapshot,
            "reason": tr.reason,
            "model": model_ref,
            "redaction": self.redaction,
        }

    def state(self, tr: Transition) -> dict[str, Any]:
        """The retained rule-state message (Home Assistant binary_sensor + attributes)."""
        return {
            "state": "OFF" if tr.kind == "end" else "ON",
            "event_id": self.event_id,
            "label": tr.peak.label,
            "score": round(tr.obs.score, 5),
            "peak_score": round(tr.peak.score, 5),
            "ts": utc_iso(tr.obs.ts_wall),
        }


def off_state(ts_wall: float) -> dict[str, Any]:
    return {
        "state": "OFF",
        "event_id": None,
        "label": None,
        "score": 0.0,
        "peak_score": 0.0,
        "ts": utc_iso(ts_wall),
    }
