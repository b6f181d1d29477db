"""The alert service: the sink the runner adds, wiring the alerts' parts together.

- ``RuleStepper`` (inference threads): regions of interest, rule engine, new events;
- ``AlertWorker`` ("alerts-worker"): snapshots, messages, SQLite, in order, by typed jobs;
- ``Forwarder`` ("alerts-outbox"): publishes the outbox, deletes what the broker acknowledged;
- ``Discovery``: Home Assistant configs on every (re)connect;
- ``device.alerts.commands``: snapshot, pause, resume, state, registered with the device's
  command dispatcher. ``reload(section)`` takes a freshly parsed ``alerts`` section (the runner
  reads the file).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from device.alerts.config import AlertsConfig
from device.alerts.forwarder import Forwarder, Publisher
from device.alerts.homeassistant import Discovery
from device.alerts.jobs import HealthJob, RecoverJob, StatesJob, TransitionJob
from device.alerts.outbox import Outbox
from device.alerts.rules import check_rules
from device.alerts.snapshots import SnapshotStore
from device.alerts.stepper import ClassifierFactory, RuleStepper
from device.alerts.worker import AlertWorker, Delivery
from device.commands import CommandDispatcher
from device.mqtt import NullPublisher, utc_iso
from device.privacy.guard import PrivacyGuard
from device.sinks import Result, Sink
from device.topics import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertContext:
    """What the alerts need to know about the device and its model."""

    topics: Topics
    cameras: Sequence[str]
    labels: Mapping[int, str]
    top_k: int = 3
    version: str = ""
    model_name: str = ""
    model_ref: str | None = None
    health_cameras: Sequence[str] = ()  # cameras whose health is watched (device.health)


class AlertService(Sink):
    def __init__(
        self,
        cfg: AlertsConfig,
        ctx: AlertContext,
        publisher: Publisher | None = None,
        classifier_factory: ClassifierFactory | None = None,
        privacy: PrivacyGuard | None = None,
    ):
        self.cfg = cfg
        self.ctx = ctx
        self.cameras = list(ctx.cameras)
        self.publisher: Publisher = publisher or NullPublisher(ctx.topics)
        matchers = check_rules(cfg, self.cameras, ctx.labels)
        for rule in cfg.rules:
            if rule.roi is None and rule.end_threshold < 1.0 / (ctx.top_k + 1):
                log.info(
                    "rule %s: end_score %.3g is below 1/(top_k+1); a label that drops out of "
                    "the top %d counts as 0",
                    rule.name,
                    rule.end_threshold,
                    ctx.top_k,
                )
        box = cfg.outbox
        self.outbox = Outbox(box.path, box.max_messages, box.max_mb, box.max_age_h)
        self.forwarder = Forwarder(self.outbox, self.publisher, box.inflight, box.resend_after_s)
        self.delivery = Delivery(self.outbox, self.forwarder, self.publisher)
        self.snapshots = SnapshotStore(cfg.snapshots, privacy)  # masks, faces (docs/privacy.md)
        self.stepper = RuleStepper(
            cfg, self.cameras, matchers, self._submit, classifier_factory, ctx.top_k
        )
        self.worker = AlertWorker(
            self.stepper, self.delivery, self.snapshots, ctx.topics, ctx.model_ref
        )
        ha = cfg.homeassistant
        self.discovery = (
            Discovery(ha, ctx.topics, ctx.version, ctx.model_name) if ha.enabled else None
        )
        self._published_configs: set[str] = set()
        self.last_alert: dict[str, Any] | None = None  # the latest event start (status)
        self._discovery_lock = threading.Lock()  # paho's thread (connect) and reload
        self._started = False
        self._stopped = False
        self.publisher.add_connect_hook(self._on_connect)

    def _submit(self, job: Any) -> None:
        if isinstance(job, TransitionJob) and job.transition.kind == "start":
            obs = job.transition.obs  # the device's retained status names the latest alert
            self.last_alert = {
                "ts": utc_iso(obs.ts_wall),
                "camera": job.camera,
                "rule": job.rule,
                "label": obs.label,
                "event_id": job.event.event_id,
            }
        self.worker.put(job)

    def register_commands(self, dispatcher: CommandDispatcher) -> None:
        from device.alerts import commands

        commands.register(dispatcher, self)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        self.worker.start()
        self.forwarder.start()
        self.worker.put(RecoverJob())
        if self.stepper.engine.trackers:
            self.worker.put(StatesJob())

    def stop(self) -> None:
        """End active events (reason "stopped"), queue them, flush the outbox briefly."""
        if self._stopped:
            return
        self._stopped = True
        self.stepper.end_all("stopped")
        if self._started:
            self.worker.stop()
            flushed = self.forwarder.flush(self.cfg.outbox.flush_timeout_s)
            self.forwarder.stop()
            pending = self.outbox.pending_count()
            if not flushed and pending:
                log.info(
                    "alerts: %d message(s) stay in the outbox %s for the next start",
                    pending,
                    self.outbox.path,
                )
        self.outbox.close()

    def close(self) -> None:
        self.stop()

    # -- the inference thread --------------------------------------------------------------------
    def handle(self, result: Result) -> None:
        self.stepper.handle(result.camera, result.frame, result.top)

    def event_active(self, camera: str) -> bool:
        """An event is active on ``camera`` (motion gating keeps classifying every frame)."""
        return self.stepper.event_active(camera)

    # -- camera health (device.health): through the outbox, like alert events ------------------
    def publish_health(
        self, camera: str, state: dict[str, Any], event: dict[str, Any] | None
    ) -> None:
        self.worker.put(HealthJob(camera, state, event))

    # -- MQTT: connect, discovery ------------------------------------------------------------------
    def _on_connect(self) -> None:  # paho's network thread
        self.forwarder.on_connect()
        self.publish_discovery()
        if self._started and self.stepper.engine.trackers:
            self.worker.put(StatesJob())

    def publish_discovery(self) -> None:
        if self.discovery is None:
            return
        configs = self.discovery.configs(
            self.cameras, self.stepper.rules_by_camera(), self.ctx.health_cameras
        )
        topics = {t for t, _ in configs}
        with self._discovery_lock:
            for gone in sorted(self._published_configs - topics):
                self.publisher.publish(gone, b"", qos=1, retain=True)  # removes the entity
            for topic, payload in configs:
                self.publisher.publish(topic, payload, qos=1, retain=True)
            self._published_configs = topics

    # -- what commands and the runner use --------------------------------------------------------
    def pause(
        self, camera: str | None = None, rule: str | None = None, minutes: float | None = None
    ) -> dict[str, Any]:
        return {"paused": self.stepper.pause(camera, rule, minutes), "minutes": minutes}

    def resume(self, camera: str | None = None, rule: str | None = None) -> dict[str, Any]:
        return {"resumed": self.stepper.resume(camera, rule)}

    def state(self) -> dict[str, Any]:
        return {**self.stepper.summary(), "outbox": self.outbox.stats()}

    def reload(self, section: AlertsConfig) -> dict[str, Any]:
        """Apply a freshly parsed ``alerts`` section: rules and label groups change now; for the
        other parts the result lists ``restart_needed_for``. ConfigError changes nothing."""
        matchers = check_rules(section, self.cameras, self.ctx.labels)
        self.stepper.replace_rules(section, matchers)
        restart = [
            part
            for part in ("snapshots", "outbox", "homeassistant", "commands", "enabled")
            if getattr(section, part) != getattr(self.cfg, part)
        ]
        self.cfg = self.cfg.model_copy(
            update={"rules": section.rules, "label_groups": section.label_groups}
        )
        self.publish_discovery()
        self.worker.put(StatesJob())
        rules = list(self.stepper.engine.rules)
        log.info("alerts: rules reloaded: %s", ", ".join(rules) or "none")
        result: dict[str, Any] = {"rules": rules}
        if restart:
            result["restart_needed_for"] = restart
        return result

    # -- metrics ---------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        return {
            **self.stepper.metrics(),
            "outbox": {**self.outbox.stats(), **self.forwarder.stats()},
            "outbox_failures": self.delivery.failures,
            "snapshots": self.snapshots.stats(),
        }
