"""The inference side of the alerts: classify the rules' regions, step the rules, start events.

Runs in each camera's inference thread and must stay fast: it classifies a rule's region of
interest when it has one, steps the rule engine, keeps a copy of the pixels of new and best
frames, and turns every transition into a ``TransitionJob`` for the worker. No I/O here.
Commands (pause, resume, state) and ``reload`` reach the same state under one lock.
An optional ``observer`` (field sampling, device.sampling) sees each frame's rule scores and
the start and best frames of events, on the same thread, under the same lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from device.alerts.config import AlertsConfig
from device.alerts.events import AlertEvent, new_event_id, off_state
from device.alerts.jobs import Job, SnapRequest, TransitionJob
from device.alerts.rules import (
    LabelMatcher,
    Observation,
    RoiKey,
    RuleEngine,
    Transition,
    now_observation,
    roi_key,
)
from device.commands import CommandError
from device.errors import ConfigError
from device.sources.base import Frame

log = logging.getLogger(__name__)

ClassifierFactory = Callable[[str, Sequence[float]], Any]  # (camera, roi) -> Classifier
RoiClassifiers = dict[str, dict[RoiKey, Any]]
Tops = Mapping[RoiKey, Sequence[Any]]  # a frame's top-k lists: None = the camera's, else a roi's


@dataclass(frozen=True)
class RuleScore:
    """An alert rule's score on one frame."""

    rule: str
    roi: Sequence[float] | None
    score: float
    label: str | None
    start_score: float
    active: bool  # an event of the rule is on


class StepObserver(Protocol):
    """Sees what the rules see; called on the inference thread under the stepper's lock, so it
    may only decide and copy, never block."""

    def rule_scores(
        self, camera: str, frame: Frame, tops: Tops, scores: Sequence[RuleScore]
    ) -> None: ...

    def event_frame(
        self,
        policy: str,  # alert_start | alert_best
        camera: str,
        event_id: str,
        frame: Frame,  # its pixels are a private copy
        tops: Tops,
        roi: Sequence[float] | None,
        label: str | None,
    ) -> None: ...


@dataclass
class _Active:
    event: AlertEvent
    best_pixels: np.ndarray | None = None
    best_score: float = -1.0
    best_tops: Tops | None = None
    best_ts: tuple[float, float] = (0.0, 0.0)  # monotonic and wall clock of the best frame


class RuleStepper:
    def __init__(
        self,
        cfg: AlertsConfig,
        cameras: Sequence[str],
        matchers: Mapping[str, LabelMatcher],
        submit: Callable[[Job], None],
        classifier_factory: ClassifierFactory | None = None,
        top_k: int = 3,
    ):
        self.cfg = cfg
        self.cameras = list(cameras)
        self.submit = submit
        self.classifier_factory = classifier_factory
        self.top_k = top_k
        self.lock = threading.RLock()
        self.engine = RuleEngine(cfg.rules, matchers, self.cameras)
        self._rois: RoiClassifiers = {}
        self._rois = self.roi_classifiers(self.engine)
        self._active: dict[tuple[str, str], _Active] = {}
        self._latest: dict[str, Frame] = {}
        self._tops: dict[str, Tops] = {}  # each camera's current frame
        self.counts = {"start": 0, "update": 0, "end": 0}
        self.observer: StepObserver | None = None
        self.observer_errors = 0

    # -- the inference thread ------------------------------------------------------------------
    def handle(self, camera: str, frame: Frame, top: Sequence[Any]) -> None:
        self._latest[camera] = frame
        if not self.engine.trackers:
            return
        tops: dict[RoiKey, Any] = {None: top}
        for key, clf in self._rois.get(camera, {}).items():
            roi_top, _ms = clf.classify(frame.full_pixels, k=self.top_k)
            tops[key] = roi_top
        with self.lock:
            self._tops[camera] = tops
            steps = self.engine.step(camera, frame.ts_mono, frame.ts_wall, frame.index, tops)
            for name, tr in steps:
                self.transition(camera, name, tr, frame)
            self._track_best(camera, frame)
            if self.observer is not None:
                self._observe("rule_scores", camera, frame, tops, self._scores(camera, frame, tops))

    def _observe(self, method: str, *args: Any) -> None:
        try:
            getattr(self.observer, method)(*args)
        except Exception:  # an observer never breaks alerting
            self.observer_errors += 1
            if self.observer_errors == 1:
                log.exception("alerts: the step observer failed (logged once, alerting goes on)")

    def _scores(self, camera: str, frame: Frame, tops: Tops) -> list[RuleScore]:
        out = []
        for (cam, name), tracker in self.engine.trackers.items():
            top = tops.get(roi_key(tracker.rule.roi))
            if cam != camera or top is None or self.engine.is_paused(cam, name, frame.ts_mono):
                continue
            score, label = self.engine.matchers[name].match(top)
            rule = tracker.rule
            out.append(RuleScore(name, rule.roi, score, label, rule.start_score, tracker.active))
        return out

    def latest(self, camera: str) -> Frame | None:
        return self._latest.get(camera)

    def event_active(self, camera: str) -> bool:
        """True while an event of any rule is active on ``camera`` (motion gating asks, from
        the capture thread, to keep classifying every frame until it ends)."""
        with self.lock:
            return any(cam == camera for cam, _ in self._active)

    def _track_best(self, cam: str, frame: Frame) -> None:
        """Keep a copy of the pixels of each active event's best frame (seen since its start)."""
        for (c, name), active in self._active.items():
            if c != cam:
                continue
            tracker = self.engine.trackers.get((c, name))
            if tracker is None or tracker.peak is None or tracker.peak.frame != frame.index:
                continue
            if tracker.peak.score > active.best_score and active.event.best_frame != frame.index:
                active.best_pixels = frame.full_pixels.copy()
                active.best_score = tracker.peak.score
                active.best_tops = self._tops.get(cam)
                active.best_ts = (frame.ts_mono, frame.ts_wall)
                active.event.best_frame = frame.index

    def transition(self, cam: str, name: str, tr: Transition, frame: Frame | None) -> None:
        """Turn a transition into a job (under the lock; no I/O here)."""
        self.counts[tr.kind] += 1
        rule = self.engine.rules.get(name)
        snaps_on = self.cfg.snapshots.enabled and (rule is None or rule.snapshot)
        roi = rule.roi if rule is not None else None
        snaps: list[SnapRequest] = []
        if tr.kind == "start":
            event = AlertEvent(new_event_id(tr.obs.ts_wall), cam, name, tr.obs, tr.first or tr.obs)
            active = _Active(event)
            if frame is not None:
                pixels = frame.full_pixels.copy()
                active.best_pixels = pixels
                active.best_score = tr.obs.score
                active.best_tops = self._tops.get(cam)
                active.best_ts = (frame.ts_mono, frame.ts_wall)
                event.best_frame = frame.index
                if snaps_on:
                    event.snapshot = f"{cam}/{event.event_id}-{name}-start.jpg"
                    snaps.append(SnapRequest("snapshot", event.snapshot, pixels, roi))
                if self.observer is not None:
                    self._observe(
                        "event_frame",
                        "alert_start",
                        cam,
                        event.event_id,
                        replace(frame, pixels=pixels, full=None),
                        self._tops.get(cam, {}),
                        roi,
                        tr.peak.label,
                    )
            self._active[(cam, name)] = active
        else:
            found = self._active.get((cam, name))
            if found is None:
                log.warning("rule %s on %s: %s without an event", name, cam, tr.kind)
                return
            event = found.event
            event.seq += 1
            if tr.kind == "end":
                del self._active[(cam, name)]
                best = found.best_pixels
                if (
                    self.observer is not None
                    and best is not None
                    and event.best_frame != event.start.frame
                ):
                    self._observe(
                        "event_frame",
                        "alert_best",
                        cam,
                        event.event_id,
                        Frame(best, *found.best_ts, event.best_frame),
                        found.best_tops or {},
                        roi,
                        tr.peak.label,
                    )
                if (
                    snaps_on
                    and self.cfg.snapshots.best_frame
                    and best is not None
                    and event.best_frame != event.start.frame
                ):
                    event.best_snapshot = f"{cam}/{event.event_id}-{name}-best.jpg"
                    snaps.append(SnapRequest("best_snapshot", event.best_snapshot, best, roi))
                elif event.snapshot is not None:
                    event.best_snapshot = event.snapshot
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
        self.submit(TransitionJob(cam, name, event, tr, snaps))

    # -- forced ends, commands, reload -----------------------------------------------------------
    def end_all(self, reason: str) -> None:
        with self.lock:
            for cam, name, tr in self.engine.end_all(reason, now_observation()):
                self.transition(cam, name, tr, None)

    def check_target(self, camera: str | None, rule: str | None) -> None:
        if camera is not None and camera not in self.cameras:
            raise CommandError(
                f"camera {camera!r} does not exist (cameras: {', '.join(self.cameras)})"
            )
        if rule is not None and rule not in self.engine.rules:
            raise CommandError(
                f"rule {rule!r} does not exist (rules: {', '.join(self.engine.rules) or 'none'})"
            )

    def pause(
        self, camera: str | None = None, rule: str | None = None, minutes: float | None = None
    ) -> list[str]:
        """Pause rules (ending their events) for ``minutes``, or until resumed (None)."""
        with self.lock:
            self.check_target(camera, rule)
            keys = self.engine.select(camera, rule)
            until = time.monotonic() + minutes * 60 if minutes else math.inf
            for cam, name, tr in self.engine.pause(keys, until, now_observation()):
                self.transition(cam, name, tr, None)
        return [f"{c}/{r}" for c, r in keys]

    def resume(self, camera: str | None = None, rule: str | None = None) -> int:
        with self.lock:
            self.check_target(camera, rule)
            return self.engine.resume(self.engine.select(camera, rule))

    def summary(self) -> dict[str, Any]:
        """Rules, paused rules and active events (the ``state`` command)."""
        with self.lock:
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
        return {"rules": rules, "paused": paused, "active": active}

    def states(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(camera, rule, retained state payload) of every rule, now."""
        now = time.time()
        out = []
        with self.lock:
            for (cam, name), tracker in self.engine.trackers.items():
                active = self._active.get((cam, name))
                if active is not None and tracker.peak is not None:
                    obs = Observation(0.0, now, -1, tracker.peak.score, tracker.peak.label)
                    state = active.event.state(Transition("update", obs, tracker.peak))
                else:
                    state = off_state(now)
                out.append((cam, name, state))
        return out

    def rules_by_camera(self) -> dict[str, list[Any]]:
        with self.lock:
            out: dict[str, list[Any]] = {}
            for cam, name in self.engine.trackers:
                out.setdefault(cam, []).append(self.engine.rules[name])
        return out

    def roi_classifiers(self, engine: RuleEngine) -> RoiClassifiers:
        """One classifier per (camera, roi) of ``engine``'s rules; existing ones are reused."""
        out: RoiClassifiers = {}
        for cam in self.cameras:
            old = self._rois.get(cam, {})
            out[cam] = {}
            for key in engine.rois(cam):
                if key in old:
                    out[cam][key] = old[key]
                elif self.classifier_factory is None:
                    raise ConfigError("rules with a roi need the model (no classifier factory)")
                else:
                    out[cam][key] = self.classifier_factory(cam, list(key or ()))
        return out

    def replace_rules(self, cfg: AlertsConfig, matchers: Mapping[str, LabelMatcher]) -> None:
        """Swap in new rules (``reload``): unchanged rules keep their state, events of changed or
        removed rules end (reason "reload"). Raises before changing anything."""
        rois = self.roi_classifiers(RuleEngine(cfg.rules, matchers, self.cameras))
        with self.lock:
            old = self.engine
            engine = RuleEngine(cfg.rules, matchers, self.cameras, previous=old)
            obs = now_observation()
            for key, tracker in old.trackers.items():
                if engine.trackers.get(key) is not tracker:
                    tr = tracker.force_end(obs, "reload")
                    if tr is not None:
                        self.transition(key[0], key[1], tr, None)
            self.engine = engine
            self._rois = rois
            self.cfg = self.cfg.model_copy(
                update={"rules": cfg.rules, "label_groups": cfg.label_groups}
            )

    def metrics(self) -> dict[str, Any]:
        with self.lock:
            return {
                "events": dict(self.counts),
                "active": len(self._active),
                "paused": len(self.engine.paused),
            }
