"""The alert service: a sink in the device loop that runs the rules and delivers their events.

Inference thread (``handle``, fast): classify the rules' regions of interest when they have one,
step the rule engine, copy the frame pixels of new events. Everything slow (JPEG encoding, file
writes, SQLite) happens in the "alerts-worker" thread, in order; the "alerts-outbox" thread
publishes the outbox and deletes what the broker acknowledged. Commands arrive in paho's network
thread and are validated there; snapshot and reload run in the worker.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.alerts.commands import (
    CommandError,
    PauseCommand,
    ResumeCommand,
    SnapshotCommand,
    parse_command,
    request_id,
)
from device.alerts.config import AlertsConfig, RuleConfig
from device.alerts.events import AlertEvent, new_event_id, off_state
from device.alerts.forwarder import Forwarder
from device.alerts.homeassistant import Discovery, rule_state_topic
from device.alerts.outbox import Message, Outbox, OutboxError
from device.alerts.rules import (
    LabelMatcher,
    Observation,
    RoiKey,
    RuleEngine,
    Transition,
    UnknownLabelError,
    now_observation,
    resolve_labels,
)
from device.alerts.snapshots import SnapshotStore
from device.errors import ConfigError, EdgecamError
from device.mqtt import MqttPublisher, utc_iso
from device.sinks import Result, Sink
from device.sources.base import Frame

log = logging.getLogger(__name__)

ClassifierFactory = Callable[[str, Sequence[float]], Any]  # (camera, roi) -> Classifier


def build_matchers(cfg: AlertsConfig, labels: Mapping[int, str]) -> dict[str, LabelMatcher]:
    """Resolve every rule's labels and groups to class indices; ConfigError when one is unknown."""
    matchers = {}
    for rule in cfg.rules:
        names = list(rule.labels)
        for group in rule.groups:
            names.extend(cfg.label_groups[group])
        try:
            matchers[rule.name] = LabelMatcher(frozenset(resolve_labels(names, labels)))
        except UnknownLabelError as exc:
            raise ConfigError(f"alerts.rules[{rule.name}]: {exc}") from None
    return matchers


def check_rules(
    cfg: AlertsConfig, cameras: Sequence[str], labels: Mapping[int, str]
) -> dict[str, LabelMatcher]:
    """The checks that need the model and the cameras (at start and on reload)."""
    for rule in cfg.rules:
        unknown = [c for c in rule.cameras or [] if c not in cameras]
        if unknown:
            raise ConfigError(
                f"alerts.rules[{rule.name}].cameras: no camera named {', '.join(unknown)} "
                f"(cameras: {', '.join(cameras)})"
            )
    return build_matchers(cfg, labels)


@dataclass
class _Job:
    """Work for the worker thread, done in order."""

    kind: str  # transition | states | snapshot | reload | recover
    camera: str = ""
    rule: str = ""
    event: AlertEvent | None = None
    transition: Transition | None = None
    snaps: list[tuple[str, str, np.ndarray, Sequence[float] | None]] = field(default_factory=list)
    reply: Callable[[dict[str, Any]], None] | None = None
    command: Any = None


@dataclass
class _Active:
    event: AlertEvent
    best_pixels: np.ndarray | None = None
    best_score: float = -1.0
    start_pixels: np.ndarray | None = None


class AlertService(Sink):
    def __init__(
        self,
        cfg: AlertsConfig,
        *,
        device_id: str,
        cameras: Sequence[str],
        labels: Mapping[int, str],
        publisher: MqttPublisher | None,
        topic_prefix: str = "edgecam",
        classifier_factory: ClassifierFactory | None = None,
        top_k: int = 3,
        config_path: str | Path | None = None,
        version: str = "",
        model_name: str = "",
        model_ref: str | None = None,
    ):
        self.cfg = cfg
        self.device_id = device_id
        self.cameras = list(cameras)
        self.labels = labels
        self.publisher = publisher
        self.prefix = f"{topic_prefix}/{device_id}"
        self.classifier_factory = classifier_factory
        self.top_k = top_k
        self.config_path = Path(config_path) if config_path else None
        self.model_ref = model_ref
        matchers = check_rules(cfg, self.cameras, labels)
        for rule in cfg.rules:
            if rule.roi is None and rule.end_threshold < 1.0 / (top_k + 1):
                log.info(
                    "rule %s: end_score %.3g is below 1/(top_k+1); a label that drops out of "
                    "the top %d counts as 0",
                    rule.name,
                    rule.end_threshold,
                    top_k,
                )
        self._lock = threading.RLock()
        self.engine = RuleEngine(cfg.rules, matchers, self.cameras)
        self._roi_classifiers: dict[str, dict[RoiKey, Any]] = {c: {} for c in self.cameras}
        self._build_roi_classifiers(self.engine)
        self._active: dict[tuple[str, str], _Active] = {}
        self._latest: dict[str, Frame] = {}
        self.counts = {"start": 0, "update": 0, "end": 0}
        self.outbox = Outbox(
            cfg.outbox.path, cfg.outbox.max_messages, cfg.outbox.max_mb, cfg.outbox.max_age_h
        )
        self.outbox_failures = 0
        self.forwarder = Forwarder(self.outbox, publisher, cfg.outbox.inflight)
        self.snapshots = SnapshotStore(cfg.snapshots)
        self.discovery = (
            Discovery(
                cfg.homeassistant,
                device_id,
                self.prefix,
                f"{self.prefix}/status",
                version,
                model_name,
            )
            if cfg.homeassistant.enabled and publisher is not None
            else None
        )
        self._published_configs: set[str] = set()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="alerts-worker", daemon=True)
        self._started = False
        self._stopped = False
        if publisher is not None:
            publisher.add_connect_hook(self._on_connect)
            if cfg.commands:
                publisher.subscribe(f"{self.prefix}/cmd/+", self._on_command)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        self._worker.start()
        self.forwarder.start()
        self._jobs.put(_Job("recover"))
        if self.engine.trackers:
            self._jobs.put(_Job("states"))

    def stop(self) -> None:
        """End active events (reason "stopped"), queue them, flush the outbox briefly."""
        if self._stopped:
            return
        self._stopped = True
        with self._lock:
            ended = self.engine.end_all("stopped", now_observation())
            for cam, name, tr in ended:
                self._transition(cam, name, tr, None)
        if self._started:
            self._jobs.put(None)
            self._worker.join(30.0)
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

    # -- the inference thread ------------------------------------------------------------------
    def handle(self, result: Result) -> None:
        cam = result.camera
        frame = result.frame
        self._latest[cam] = frame
        if not self.engine.trackers:
            return
        tops: dict[RoiKey, Any] = {None: result.top}
        for key, clf in self._roi_classifiers.get(cam, {}).items():
            top, _ms = clf.classify(frame.pixels, k=self.top_k)
            tops[key] = top
        with self._lock:
            for name, tr in self.engine.step(cam, frame.ts_mono, frame.ts_wall, frame.index, tops):
                self._transition(cam, name, tr, frame)
            self._track_best(cam, frame)

    def _track_best(self, cam: str, frame: Frame) -> None:
        """Keep a copy of the pixels of each active event's best frame (seen since its start)."""
        for (c, name), active in self._active.items():
            if c != cam:
                continue
            tracker = self.engine.trackers.get((c, name))
            if tracker is None or tracker.peak is None or tracker.peak.frame != frame.index:
                continue
            if tracker.peak.score > active.best_score and active.event.best_frame != frame.index:
                active.best_pixels = frame.pixels.copy()
                active.best_score = tracker.peak.score
                active.event.best_frame = frame.index

    def _rule(self, name: str) -> RuleConfig:
        return self.engine.rules[name]

    def _transition(self, cam: str, name: str, tr: Transition, frame: Frame | None) -> None:
        """Turn a transition into a job (under the lock; no I/O here)."""
        self.counts[tr.kind] += 1
        rule = self.engine.rules.get(name)
        snaps_on = self.cfg.snapshots.enabled and (rule is None or rule.snapshot)
        roi = rule.roi if rule is not None else None
        job = _Job("transition", camera=cam, rule=name, transition=tr)
        if tr.kind == "start":
            event = AlertEvent(new_event_id(tr.obs.ts_wall), cam, name, tr.obs, tr.first or tr.obs)
            active = _Active(event)
            if frame is not None:
                pixels = frame.pixels.copy()
                active.best_pixels = pixels
                active.best_score = tr.obs.score
                event.best_frame = frame.index
                if snaps_on:
                    event.snapshot = f"{cam}/{event.event_id}-{name}-start.jpg"
                    job.snaps.append(("snapshot", event.snapshot, pixels, roi))
            self._active[(cam, name)] = active
        else:
            active_or_none = self._active.get((cam, name))
            if active_or_none is None:
                log.warning("rule %s on %s: %s without an event", name, cam, tr.kind)
                return
            active = active_or_none
            event = active.event
            event.seq += 1
            if tr.kind == "end":
                del self._active[(cam, name)]
                best = active.best_pixels
                if (
                    snaps_on
                    and self.cfg.snapshots.best_frame
                    and best is not None
                    and event.best_frame != event.start.frame
                ):
                    event.best_snapshot = f"{cam}/{event.event_id}-{name}-best.jpg"
                    job.snaps.append(("best_snapshot", event.best_snapshot, best, roi))
                elif event.snapshot is not None:
                    event.best_snapshot = event.snapshot
        job.event = event
        log.info(
            "alert %s %s on %s: %s %.3f (event %s%s)",
            name,
            tr.kind,
            cam,
            tr.peak.label,
            tr.peak.score,
            event.event_id,
            f", {tr.reason}" if tr.reason else "",
        )
        self._jobs.put(job)

    # -- the worker thread -------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                handler = getattr(self, f"_job_{job.kind}")
                handler(job)
            except Exception:  # one failed job must not stop alerting
                log.exception("alerts: %s job failed", job.kind)
                if job.reply is not None:
                    job.reply({"ok": False, "error": f"{job.kind} failed, see the device log"})

    def _queue(self, messages: list[Message]) -> None:
        """Into the outbox (then the forwarder publishes); straight out if the outbox fails."""
        try:
            self.outbox.put_many(messages)
        except (OutboxError, OSError, sqlite3.Error) as exc:
            self.outbox_failures += 1
            log.error("alerts: outbox unusable (%s); publishing without store-and-forward", exc)
            if self.publisher is not None:
                for m in messages:
                    self.publisher.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            return
        self.forwarder.wake()

    def _snapshot_message(self, camera: str, jpeg: bytes) -> Message:
        topic = f"{self.prefix}/{camera}/snapshot"
        return Message(topic, jpeg, "snapshot", qos=1, retain=True, key=topic)

    def _job_transition(self, job: _Job) -> None:
        event, tr = job.event, job.transition
        assert event is not None and tr is not None
        messages: list[Message] = []
        for field_name, ref, pixels, roi in job.snaps:
            snap = self.snapshots.save(ref, pixels, roi)
            if snap is None:
                setattr(event, field_name, None)
            elif self.cfg.snapshots.publish:
                messages.append(self._snapshot_message(job.camera, snap.jpeg))
        payload = event.payload(tr, self.device_id, self.model_ref)
        alert_topic = f"{self.prefix}/{job.camera}/alert"
        messages.append(Message(alert_topic, _json(payload), "alert", qos=1))
        state_topic = rule_state_topic(self.prefix, job.camera, job.rule)
        messages.append(
            Message(state_topic, _json(event.state(tr)), "state", 1, True, key=state_topic)
        )
        self._queue(messages)
        try:
            if tr.kind == "end":
                self.outbox.set_open_event(event.event_id, None)
            else:
                self.outbox.set_open_event(event.event_id, json.dumps(payload))
        except (OutboxError, OSError, sqlite3.Error) as exc:
            log.warning("alerts: cannot record the open event %s: %s", event.event_id, exc)

    def _job_recover(self, job: _Job) -> None:
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
            state_topic = rule_state_topic(self.prefix, camera, rule)
            self._queue(
                [
                    Message(f"{self.prefix}/{camera}/alert", _json(last), "alert", qos=1),
                    Message(state_topic, _json(off_state(now)), "state", 1, True, key=state_topic),
                ]
            )
            self.outbox.set_open_event(event_id, None)

    def _job_states(self, job: _Job) -> None:
        """Queue every rule's current state (retained): HA is right after a restart or outage."""
        now = time.time()
        messages = []
        with self._lock:
            keys = list(self.engine.trackers)
            active = {k: (a.event, t) for k, a in self._active.items() if (t := self._tracker(k))}
        for cam, name in keys:
            topic = rule_state_topic(self.prefix, cam, name)
            if (cam, name) in active:
                event, tracker = active[(cam, name)]
                assert tracker.peak is not None
                obs = Observation(0.0, now, -1, tracker.peak.score, tracker.peak.label)
                state = event.state(Transition("update", obs, tracker.peak))
            else:
                state = off_state(now)
            messages.append(Message(topic, _json(state), "state", 1, True, key=topic))
        if messages:
            self._queue(messages)

    def _tracker(self, key: tuple[str, str]) -> Any:
        return self.engine.trackers.get(key)

    # -- MQTT: connect, discovery, commands --------------------------------------------------------
    def _on_connect(self) -> None:  # paho's network thread
        self.forwarder.on_connect()
        self.publish_discovery()
        if self._started and self.engine.trackers:
            self._jobs.put(_Job("states"))

    def publish_discovery(self) -> None:
        if self.discovery is None or self.publisher is None:
            return
        with self._lock:
            rules_by_camera: dict[str, list[RuleConfig]] = {}
            for cam, name in self.engine.trackers:
                rules_by_camera.setdefault(cam, []).append(self.engine.rules[name])
        configs = self.discovery.configs(self.cameras, rules_by_camera)
        topics = {t for t, _ in configs}
        for gone in sorted(self._published_configs - topics):
            self.publisher.publish(gone, b"", qos=1, retain=True)  # removes the entity
        for topic, payload in configs:
            self.publisher.publish(topic, payload, qos=1, retain=True)
        self._published_configs = topics

    def _reply(self, name: str, rid: Any) -> Callable[[dict[str, Any]], None]:
        topic = f"{self.prefix}/cmd/{name}/result"

        def send(body: dict[str, Any]) -> None:
            payload = {"id": rid, "command": name, **body, "ts": utc_iso(time.time())}
            if not payload.get("ok"):
                log.warning("command %s failed: %s", name, payload.get("error"))
            if self.publisher is not None:
                self.publisher.publish(topic, payload, qos=1)

        return send

    def _on_command(self, topic: str, payload: bytes) -> None:  # paho's network thread
        name = topic.rsplit("/", 1)[-1]
        try:
            cmd = parse_command(name, payload)
        except CommandError as exc:
            self._reply(name, request_id(payload))({"ok": False, "error": str(exc)})
            return
        reply = self._reply(name, cmd.id)
        log.info("command %s: %s", name, cmd.model_dump(exclude_none=True))
        try:
            if isinstance(cmd, SnapshotCommand):
                self._check_target(cmd.camera, None)
                self._jobs.put(_Job("snapshot", reply=reply, command=cmd))
            elif name == "reload":
                if self.config_path is None:
                    raise CommandError("reload needs the device started with --config FILE")
                self._jobs.put(_Job("reload", reply=reply, command=cmd))
            elif isinstance(cmd, PauseCommand):
                reply({"ok": True, "result": self.pause(cmd.camera, cmd.rule, cmd.minutes)})
            elif isinstance(cmd, ResumeCommand):
                reply({"ok": True, "result": self.resume(cmd.camera, cmd.rule)})
            else:
                reply({"ok": True, "result": self.state()})
        except CommandError as exc:
            reply({"ok": False, "error": str(exc)})

    def _check_target(self, camera: str | None, rule: str | None) -> None:
        if camera is not None and camera not in self.cameras:
            raise CommandError(
                f"camera {camera!r} does not exist (cameras: {', '.join(self.cameras)})"
            )
        if rule is not None and rule not in self.engine.rules:
            raise CommandError(
                f"rule {rule!r} does not exist (rules: {', '.join(self.engine.rules) or 'none'})"
            )

    # -- command actions (also usable in-process) -----------------------------------------------------
    def pause(
        self, camera: str | None = None, rule: str | None = None, minutes: float | None = None
    ) -> dict[str, Any]:
        with self._lock:
            self._check_target(camera, rule)
            keys = self.engine.select(camera, rule)
            until = time.monotonic() + minutes * 60 if minutes else math.inf
            for cam, name, tr in self.engine.pause(keys, until, now_observation()):
                self._transition(cam, name, tr, None)
        return {"paused": [f"{c}/{r}" for c, r in keys], "minutes": minutes}

    def resume(self, camera: str | None = None, rule: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._check_target(camera, rule)
            keys = self.engine.select(camera, rule)
            n = self.engine.resume(keys)
        return {"resumed": n}

    def state(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            paused = [
                f"{c}/{r}"
                for (c, r) in list(self.engine.paused)
                if self.engine.is_paused(c, r, now)
            ]
            active = [
                {"camera": c, "rule": r, "event_id": a.event.event_id}
                for (c, r), a in self._active.items()
            ]
            rules = [
                r.model_dump(mode="json", exclude_defaults=True) for r in self.engine.rules.values()
            ]
        return {"rules": rules, "paused": paused, "active": active, "outbox": self.outbox.stats()}

    def _job_snapshot(self, job: _Job) -> None:
        cmd: SnapshotCommand = job.command
        assert job.reply is not None
        cameras = [cmd.camera] if cmd.camera else self.cameras
        saved, messages, missing = [], [], []
        for cam in cameras:
            frame = self._latest.get(cam)
            if frame is None:
                missing.append(cam)
                continue
            ms = round(frame.ts_wall * 1000) % 1000
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(frame.ts_wall)) + f"{ms:03d}Z"
            snap = self.snapshots.save(f"{cam}/{stamp}-manual.jpg", frame.pixels.copy())
            if snap is None:
                missing.append(cam)
                continue
            saved.append({"camera": cam, "snapshot": snap.ref, "ts": utc_iso(frame.ts_wall)})
            messages.append(self._snapshot_message(cam, snap.jpeg))
        if messages:
            self._queue(messages)
        if not saved:
            job.reply({"ok": False, "error": f"no frame to save yet from {', '.join(missing)}"})
        else:
            job.reply({"ok": True, "result": {"snapshots": saved}})

    def _job_reload(self, job: _Job) -> None:
        assert job.reply is not None and self.config_path is not None
        from device.config import load_config

        try:
            new = load_config(self.config_path).alerts
            matchers = check_rules(new, self.cameras, self.labels)
            engine = RuleEngine(new.rules, matchers, self.cameras)
            rois = self._new_roi_classifiers(engine)
        except EdgecamError as exc:
            job.reply({"ok": False, "error": str(exc)})
            return
        with self._lock:
            old = self.engine
            engine = RuleEngine(new.rules, matchers, self.cameras, previous=old)
            obs = now_observation()
            for key, tracker in old.trackers.items():
                if engine.trackers.get(key) is not tracker:
                    tr = tracker.force_end(obs, "reload")
                    if tr is not None:
                        self._transition(key[0], key[1], tr, None)
            self.engine = engine
            self._roi_classifiers = rois
            self.cfg = self.cfg.model_copy(
                update={"rules": new.rules, "label_groups": new.label_groups}
            )
        restart = [
            section
            for section in ("snapshots", "outbox", "homeassistant", "commands", "enabled")
            if getattr(new, section) != getattr(self.cfg, section)
        ]
        self.publish_discovery()
        self._job_states(_Job("states"))
        log.info("alerts: rules reloaded: %s", ", ".join(engine.rules) or "none")
        result: dict[str, Any] = {"rules": list(engine.rules)}
        if restart:
            result["restart_needed_for"] = restart
        job.reply({"ok": True, "result": result})

    def _build_roi_classifiers(self, engine: RuleEngine) -> None:
        self._roi_classifiers = self._new_roi_classifiers(engine)

    def _new_roi_classifiers(self, engine: RuleEngine) -> dict[str, dict[RoiKey, Any]]:
        out: dict[str, dict[RoiKey, Any]] = {}
        for cam in self.cameras:
            old = getattr(self, "_roi_classifiers", {}).get(cam, {})
            out[cam] = {}
            for key in engine.rois(cam):
                if key in old:
                    out[cam][key] = old[key]
                elif self.classifier_factory is None:
                    raise ConfigError("rules with a roi need the model (no classifier factory)")
                else:
                    out[cam][key] = self.classifier_factory(cam, list(key or ()))
        return out

    # -- metrics -----------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        with self._lock:
            active = len(self._active)
            paused = len(self.engine.paused)
        return {
            "events": dict(self.counts),
            "active": active,
            "paused": paused,
            "outbox": {**self.outbox.stats(), **self.forwarder.stats()},
            "outbox_failures": self.outbox_failures,
            "snapshots": self.snapshots.stats(),
        }


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
