"""The "alerts-worker" thread: everything slow about alerts, in order.

JPEG encoding, snapshot files and SQLite writes happen here, never in an inference thread. Jobs
are typed records (``device.alerts.jobs``); the worker looks up the handler by the record's
type. What it produces goes into the outbox (``Delivery``), which the forwarder publishes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from device.alerts.events import off_state
from device.alerts.forwarder import Forwarder, Publisher
from device.alerts.jobs import (
    HealthJob,
    Job,
    RecoverJob,
    SnapshotJob,
    StatesJob,
    TransitionJob,
)
from device.alerts.outbox import Message, Outbox, OutboxError
from device.alerts.snapshots import Snapshot, SnapshotStore
from device.alerts.stepper import RuleStepper
from device.jobthread import JobThread
from device.mqtt import utc_iso
from device.privacy.guard import Withheld
from device.topics import Topics

log = logging.getLogger(__name__)


def to_json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class Delivery:
    """Messages into the outbox, then the forwarder publishes them; straight out when the
    outbox cannot be written (no store-and-forward then, but nothing is lost silently)."""

    def __init__(self, outbox: Outbox, forwarder: Forwarder, publisher: Publisher):
        self.outbox = outbox
        self.forwarder = forwarder
        self.publisher = publisher
        self.failures = 0

    def send(self, messages: list[Message]) -> None:
        if not messages:
            return
        try:
            self.outbox.put_many(messages)
        except (OutboxError, OSError, sqlite3.Error) as exc:
            self.failures += 1
            log.error("alerts: outbox unusable (%s); publishing without store-and-forward", exc)
            for m in messages:
                self.publisher.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            return
        self.forwarder.wake()


class AlertWorker(JobThread[Job]):
    def __init__(
        self,
        stepper: RuleStepper,
        delivery: Delivery,
        snapshots: SnapshotStore,
        topics: Topics,
        model_ref: str | None = None,
    ):
        self.stepper = stepper
        self.delivery = delivery
        self.outbox = delivery.outbox
        self.snapshots = snapshots
        self.topics = topics
        self.model_ref = model_ref
        super().__init__("alerts-worker")
        self._handlers: dict[type, Callable[[Any], None]] = {
            TransitionJob: self._transition,
            StatesJob: self._states,
            RecoverJob: self._recover,
            SnapshotJob: self._snapshot,
            HealthJob: self._health,
        }

    def do(self, job: Job) -> None:
        self._handlers[type(job)](job)

    def on_error(self, exc: Exception, job: Job) -> None:  # one failed job must not stop alerting
        log.error("alerts: %s failed", type(job).__name__, exc_info=exc)
        if isinstance(job, SnapshotJob):
            job.reply.error("snapshot failed, see the device log")

    # -- messages ------------------------------------------------------------------------------------
    def snapshot_message(self, camera: str, jpeg: bytes) -> Message:
        topic = self.topics.snapshot(camera)
        return Message(topic, jpeg, "snapshot", qos=1, retain=True, key=topic)

    def state_message(self, camera: str, rule: str, state: dict[str, Any]) -> Message:
        topic = self.topics.rule_state(camera, rule)
        return Message(topic, to_json(state), "state", qos=1, retain=True, key=topic)

    def alert_message(self, camera: str, payload: dict[str, Any]) -> Message:
        return Message(self.topics.alert(camera), to_json(payload), "alert", qos=1)

    # -- handlers -------------------------------------------------------------------------------------
    def _save(
        self, camera: str, ref: str, pixels: Any, roi: Any = None
    ) -> tuple[Snapshot | None, dict[str, Any] | None]:
        """Save a snapshot through privacy; (snapshot or None, its redaction record, or
        ``{"withheld": why}`` when privacy withheld it)."""
        try:
            snap = self.snapshots.save(ref, pixels, roi, camera=camera)
        except Withheld as exc:
            return None, {"withheld": exc.reason}
        redaction = snap.redaction.to_json() if snap and snap.redaction else None
        return snap, redaction

    def _transition(self, job: TransitionJob) -> None:
        event, tr = job.event, job.transition
        messages: list[Message] = []
        for snap_request in job.snaps:
            snap, event.redaction = self._save(
                job.camera, snap_request.ref, snap_request.pixels, snap_request.roi
            )
            if snap is None:
                setattr(event, snap_request.field, None)
            elif self.snapshots.cfg.publish:
                messages.append(self.snapshot_message(job.camera, snap.jpeg))
        payload = event.payload(tr, self.topics.device_id, self.model_ref)
        messages.append(self.alert_message(job.camera, payload))
        messages.append(self.state_message(job.camera, job.rule, event.state(tr)))
        self.delivery.send(messages)
        try:
            data = None if tr.kind == "end" else json.dumps(payload)
            self.outbox.set_open_event(event.event_id, data)
        except (OutboxError, OSError, sqlite3.Error) as exc:
            log.warning("alerts: cannot record the open event %s: %s", event.event_id, exc)

    def _recover(self, job: RecoverJob) -> None:
        """Events left open by a crash or power loss: end them now (reason "interrupted")."""
        for event_id, data in self.outbox.open_events():
            try:
                last = json.loads(data)
            except ValueError:
                self.outbox.set_open_event(event_id, None)
                continue
            now = time.time()
            last.update(
                type="end",
                seq=int(last.get("seq", 0)) + 1,
                ts=utc_iso(now),
                end=utc_iso(now),
                duration_s=None,
                reason="interrupted",
                frame=-1,
            )
            camera, rule = last.get("camera", ""), last.get("rule", "")
            log.info("alerts: ending event %s left open by an earlier run", event_id)
            messages = [self.alert_message(camera, last)]
            if last.get("kind") != "health":  # health has its own state topic, sent at start
                messages.append(self.state_message(camera, rule, off_state(now)))
            self.delivery.send(messages)
            self.outbox.set_open_event(event_id, None)

    def _health(self, job: HealthJob) -> None:
        """A camera's health (retained, the newest replaces an undelivered older one) and its
        health event; an open health event is recorded like a rule's, so a crash ends it."""
        topic = self.topics.camera(job.camera, "health")
        messages = [Message(topic, to_json(job.state), "health", qos=1, retain=True, key=topic)]
        event = job.event
        if event is not None:
            messages.append(self.alert_message(job.camera, event))
        self.delivery.send(messages)
        if event is not None:
            try:
                data = None if event["type"] == "end" else json.dumps(event)
                self.outbox.set_open_event(event["event_id"], data)
            except (OutboxError, OSError, sqlite3.Error) as exc:
                log.warning("alerts: cannot record the open event %s: %s", event["event_id"], exc)

    def _states(self, job: StatesJob) -> None:
        """Every rule's current state (retained): HA is right after a restart or outage."""
        self.delivery.send([self.state_message(c, r, s) for c, r, s in self.stepper.states()])

    def _snapshot(self, job: SnapshotJob) -> None:
        saved, messages, missing, withheld = [], [], [], {}
        for cam in job.cameras:
            frame = self.stepper.latest(cam)
            if frame is None:
                missing.append(cam)
                continue
            ms = round(frame.ts_wall * 1000) % 1000
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(frame.ts_wall)) + f"{ms:03d}Z"
            snap, redaction = self._save(cam, f"{cam}/{stamp}-manual.jpg", frame.full_pixels.copy())
            if snap is None:
                if redaction is not None:
                    withheld[cam] = redaction["withheld"]
                else:
                    missing.append(cam)
                continue
            saved.append(
                {
                    "camera": cam,
                    "snapshot": snap.ref,
                    "ts": utc_iso(frame.ts_wall),
                    "redaction": redaction,
                }
            )
            messages.append(self.snapshot_message(cam, snap.jpeg))
        self.delivery.send(messages)
        if not saved:
            why = [f"no frame to save yet from {', '.join(missing)}"] if missing else []
            why += [f"{cam}: withheld by privacy ({reason})" for cam, reason in withheld.items()]
            job.reply.error("; ".join(why))
        else:
            result: dict[str, Any] = {"snapshots": saved}
            if withheld:
                result["withheld"] = withheld
            job.reply.ok(result)
