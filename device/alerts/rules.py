"""The rule engine: per-frame scores in, start / update / end transitions out. Pure, no I/O.

One ``RuleTracker`` per (camera, rule) is a two-state machine (idle, active):

- idle -> active when ``start_frames`` consecutive frames score >= ``start_score`` (or, with
  ``confirm: average``, the mean of the last ``start_frames`` scores does), unless the rule is in
  its cooldown or outside its active hours;
- active -> idle when ``end_frames`` consecutive frames score < ``end_score`` (or their mean is),
  or when forced (pause, reload, schedule, shutdown); the cooldown starts then;
- while active, an ``update`` is emitted when the peak score rose by ``update_delta`` since the
  last message, at most once per ``update_interval_s``.

A rule's score on a frame is the highest score among its labels in the frame's top-k (a label
outside the top-k counts as 0: with top_k = k, any class scoring above 1/(k+1) is in the top-k,
so thresholds above that are exact). Times are the frame's monotonic clock (cooldown,
intervals) and wall clock (active hours, reported times).
"""

from __future__ import annotations

import difflib
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from device.alerts.config import AlertsConfig, RuleConfig, parse_hours
from device.errors import ConfigError
from device.postprocess import Class

RoiKey = tuple[float, float, float, float] | None


def roi_key(roi: Sequence[float] | None) -> RoiKey:
    return None if roi is None else (float(roi[0]), float(roi[1]), float(roi[2]), float(roi[3]))


class UnknownLabelError(ValueError):
    """A rule names a label the model does not have."""


@dataclass(frozen=True)
class Observation:
    """A rule's view of one frame."""

    ts_mono: float
    ts_wall: float
    frame: int
    score: float
    label: str | None


@dataclass(frozen=True)
class Transition:
    kind: str  # "start" | "update" | "end"
    obs: Observation  # the frame that caused it
    peak: Observation  # the best frame of the event so far
    reason: str | None = None  # for forced ends: paused, reload, schedule, stopped
    first: Observation | None = None  # start: the first frame of the confirming run


def _synonyms(label: str) -> list[str]:
    return [s.strip().lower() for s in label.split(",") if s.strip()]


def resolve_labels(names: Iterable[str], labels: Mapping[int, str]) -> set[int]:
    """Class indices whose label equals a name or one of its comma-separated synonyms."""
    by_name: dict[str, set[int]] = {}
    for index, label in labels.items():
        for key in {label.strip().lower(), *_synonyms(label)}:
            by_name.setdefault(key, set()).add(index)
    found: set[int] = set()
    for name in names:
        key = name.strip().lower()
        if key not in by_name:
            close = difflib.get_close_matches(key, list(by_name), n=3, cutoff=0.7)
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise UnknownLabelError(f"label {name!r} is not one of the model's labels{hint}")
        found |= by_name[key]
    return found


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
    """The checks that need the model and the cameras (``validate``, start and ``reload``):
    every camera a rule names exists, every label and group resolves to the model's labels."""
    for rule in cfg.rules:
        unknown = [c for c in rule.cameras or [] if c not in cameras]
        if unknown:
            raise ConfigError(
                f"alerts.rules[{rule.name}].cameras: no camera named {', '.join(unknown)} "
                f"(cameras: {', '.join(cameras)})"
            )
    return build_matchers(cfg, labels)


@dataclass
class LabelMatcher:
    """Scores a rule on a top-k list."""

    indices: frozenset[int]

    def match(self, top: Sequence[Class]) -> tuple[float, str | None]:
        for c in top:  # top is sorted best first
            if c.index in self.indices:
                return float(c.score), c.label
        return 0.0, None


class ActiveHours:
    """Local-time windows; empty means always armed."""

    def __init__(self, specs: Sequence[str]):
        self.windows = [parse_hours(s) for s in specs]

    def armed(self, ts_wall: float) -> bool:
        if not self.windows:
            return True
        t = time.localtime(ts_wall)
        minute = t.tm_hour * 60 + t.tm_min
        for start, end in self.windows:
            if start < end and start <= minute < end:
                return True
            if start > end and (minute >= start or minute < end):
                return True
        return False


@dataclass
class RuleTracker:
    """Hysteresis state machine of one rule on one camera."""

    rule: RuleConfig
    active: bool = False
    cooldown_until: float = -math.inf
    peak: Observation | None = None
    _reported_peak: float = 0.0
    _last_message_mono: float = -math.inf
    _run: list[Observation] = field(default_factory=list)
    _window: deque[Observation] = field(default_factory=deque)
    _below: int = 0
    _end_window: deque[float] = field(default_factory=deque)
    frames_active: int = 0

    def __post_init__(self) -> None:
        self.hours = ActiveHours(self.rule.active_hours)

    def _reset_counters(self) -> None:
        self._run.clear()
        self._window.clear()
        self._below = 0
        self._end_window.clear()

    def step(self, obs: Observation) -> Transition | None:
        if not self.hours.armed(obs.ts_wall):
            return self.force_end(obs, "schedule") if self.active else self._idle_reset()
        if self.active:
            return self._step_active(obs)
        return self._step_idle(obs)

    def _idle_reset(self) -> None:
        self._reset_counters()
        return None

    def _step_idle(self, obs: Observation) -> Transition | None:
        rule = self.rule
        if obs.ts_mono < self.cooldown_until:
            self._reset_counters()
            return None
        if rule.confirm == "consecutive":
            if obs.score >= rule.start_score:
                self._run.append(obs)
            else:
                self._run.clear()
            if len(self._run) < rule.start_frames:
                return None
            run = list(self._run)
        else:
            self._window.append(obs)
            while len(self._window) > rule.start_frames:
                self._window.popleft()
            if len(self._window) < rule.start_frames:
                return None
            if sum(o.score for o in self._window) / len(self._window) < rule.start_score:
                return None
            run = list(self._window)
        peak = max(run, key=lambda o: o.score)
        self._reset_counters()
        self.active = True
        self.peak = peak
        self.frames_active = 1
        self._reported_peak = peak.score
        self._last_message_mono = obs.ts_mono
        return Transition("start", obs, peak, first=run[0])

    def _step_active(self, obs: Observation) -> Transition | None:
        rule = self.rule
        self.frames_active += 1
        assert self.peak is not None
        if obs.score > self.peak.score:
            self.peak = obs
        end = rule.end_threshold
        if rule.confirm == "consecutive":
            self._below = self._below + 1 if obs.score < end else 0
            ended = self._below >= rule.end_frames
        else:
            self._end_window.append(obs.score)
            while len(self._end_window) > rule.end_frames:
                self._end_window.popleft()
            ended = (
                len(self._end_window) == rule.end_frames
                and sum(self._end_window) / rule.end_frames < end
            )
        if ended:
            return self._end(obs, None)
        if (
            self.peak.score >= self._reported_peak + rule.update_delta - 1e-9
            and obs.ts_mono - self._last_message_mono >= rule.update_interval_s
        ):
            self._reported_peak = self.peak.score
            self._last_message_mono = obs.ts_mono
            return Transition("update", obs, self.peak)
        return None

    def _end(self, obs: Observation, reason: str | None) -> Transition:
        assert self.peak is not None
        peak = self.peak
        self.active = False
        self.peak = None
        self.cooldown_until = obs.ts_mono + self.rule.cooldown_s
        self._reset_counters()
        return Transition("end", obs, peak, reason=reason)

    def force_end(self, obs: Observation, reason: str) -> Transition | None:
        """End an active event now (pause, reload, schedule, stop); None when idle."""
        self._reset_counters()
        if not self.active:
            return None
        return self._end(obs, reason)


def now_observation(frame: int = -1) -> Observation:
    """An observation at the current time, for forced ends outside the frame loop."""
    return Observation(time.monotonic(), time.time(), frame, 0.0, None)


class RuleEngine:
    """Trackers for every (camera, rule) pair, pause state, and label matching."""

    def __init__(
        self,
        rules: Sequence[RuleConfig],
        matchers: Mapping[str, LabelMatcher],
        cameras: Sequence[str],
        previous: RuleEngine | None = None,
    ):
        self.rules = {r.name: r for r in rules}
        self.matchers = dict(matchers)
        self.cameras = list(cameras)
        self.trackers: dict[tuple[str, str], RuleTracker] = {}
        self.paused: dict[tuple[str, str], float] = {}  # -> paused until (monotonic; inf)
        for rule in rules:
            for cam in self.cameras:
                if rule.cameras is None or cam in rule.cameras:
                    old = previous.trackers.get((cam, rule.name)) if previous else None
                    # an unchanged rule keeps its state (active event, cooldown) across reloads
                    keep = old is not None and old.rule == rule
                    self.trackers[(cam, rule.name)] = old if keep and old else RuleTracker(rule)
        if previous is not None:
            self.paused = {k: v for k, v in previous.paused.items() if k in self.trackers}

    def rois(self, camera: str) -> set[RoiKey]:
        """The extra regions this camera's rules classify (None, the camera's result, excluded)."""
        return {
            roi_key(t.rule.roi)
            for (cam, _), t in self.trackers.items()
            if cam == camera and t.rule.roi is not None
        }

    def is_paused(self, camera: str, rule: str, now_mono: float) -> bool:
        until = self.paused.get((camera, rule))
        if until is None:
            return False
        if now_mono >= until:
            del self.paused[(camera, rule)]
            return False
        return True

    def step(
        self,
        camera: str,
        ts_mono: float,
        ts_wall: float,
        frame: int,
        tops: Mapping[RoiKey, Sequence[Class]],
    ) -> list[tuple[str, Transition]]:
        """Feed one frame's results (by region) to the camera's rules."""
        out: list[tuple[str, Transition]] = []
        for (cam, name), tracker in self.trackers.items():
            if cam != camera or self.is_paused(cam, name, ts_mono):
                continue
            top = tops.get(roi_key(tracker.rule.roi))
            if top is None:
                continue
            score, label = self.matchers[name].match(top)
            tr = tracker.step(Observation(ts_mono, ts_wall, frame, score, label))
            if tr is not None:
                out.append((name, tr))
        return out

    def select(self, camera: str | None, rule: str | None) -> list[tuple[str, str]]:
        return [
            key
            for key in self.trackers
            if (camera is None or key[0] == camera) and (rule is None or key[1] == rule)
        ]

    def pause(
        self, keys: Iterable[tuple[str, str]], until_mono: float, obs: Observation
    ) -> list[tuple[str, str, Transition]]:
        ended = []
        for key in keys:
            self.paused[key] = until_mono
            tr = self.trackers[key].force_end(obs, "paused")
            if tr is not None:
                ended.append((key[0], key[1], tr))
        return ended

    def resume(self, keys: Iterable[tuple[str, str]]) -> int:
        n = 0
        for key in keys:
            if self.paused.pop(key, None) is not None:
                n += 1
        return n

    def end_all(self, reason: str, obs: Observation) -> list[tuple[str, str, Transition]]:
        ended = []
        for (cam, name), tracker in self.trackers.items():
            tr = tracker.force_end(obs, reason)
            if tr is not None:
                ended.append((cam, name, tr))
        return ended
