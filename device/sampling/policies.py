"""Which frames become samples: policies, rate limits, the daily byte budget. Pure, no I/O.

A frame policy looks at one camera's top-k list (``wants``); the near-threshold policy looks at
the alert rules' scores on the frame; alert frames are offered by the alert stepper. The
``Sampler`` tries the policies in a fixed order and takes the frame for the first one that its
limits allow: the policy's own rate limit, the camera's limit for all policies, the camera's
limit per label, and the device's daily byte budget. Every refusal is counted per policy.
Times are monotonic seconds given by the caller (the frame's capture time), so the classes are
tested without a clock, a model or a camera.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from device.sampling.config import SamplingConfig

HOUR_S = 3600.0


class Scored(Protocol):
    """A class in a top-k list (device.postprocess.Class)."""

    label: str
    index: int
    score: float


class RuleScoreLike(Protocol):
    """An alert rule's score on a frame (device.alerts.stepper.RuleScore)."""

    rule: str
    score: float
    label: str | None
    start_score: float
    active: bool


# -- limits --------------------------------------------------------------------------------------
class RateLimit:
    """At most ``per_hour`` takes in any rolling hour, at least ``min_interval_s`` apart."""

    def __init__(self, per_hour: int, min_interval_s: float = 0.0, window_s: float = HOUR_S):
        self.per_hour = per_hour
        self.min_interval_s = min_interval_s
        self.window_s = window_s
        self._times: deque[float] = deque()

    def allows(self, now: float) -> bool:
        times = self._times
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.per_hour:
            return False
        return not times or now - times[-1] >= self.min_interval_s

    def take(self, now: float) -> None:
        self._times.append(now)


class Limits:
    """Rate limits created on first use, one per key (e.g. per camera and label)."""

    def __init__(self, make: Callable[[], RateLimit]):
        self._make = make
        self._limits: dict[Hashable, RateLimit] = {}

    def __getitem__(self, key: Hashable) -> RateLimit:
        limit = self._limits.get(key)
        if limit is None:
            limit = self._limits[key] = self._make()
        return limit


class DailyBudget:
    """Bytes written per UTC day (``day`` is ``YYYY-MM-DD``); a new day starts from zero. The
    budget counts as spent when the next JPEG, expected as large as the last one, would not
    fit, so that frames are not copied for nothing."""

    def __init__(self, max_bytes: int, day: str = "", used: int = 0):
        self.max_bytes = max_bytes
        self.day = day
        self.used = used
        self.expected = 0  # the size of the last JPEG offered

    def _roll(self, day: str) -> None:
        if day != self.day:
            self.day, self.used = day, 0

    def exhausted(self, day: str) -> bool:
        self._roll(day)
        return self.used + self.expected > self.max_bytes

    def spend(self, day: str, size: int) -> bool:
        """Count ``size`` bytes when they fit in the day's budget; False (nothing counted) when
        they do not."""
        self._roll(day)
        self.expected = size
        if self.used + size > self.max_bytes:
            return False
        self.used += size
        return True


# -- policies ------------------------------------------------------------------------------------
class FramePolicy:
    """Looks at a camera's top-k list on every frame."""

    name: str = ""

    def wants(self, camera: str, top: Sequence[Scored], now: float) -> bool:
        raise NotImplementedError

    def taken(self, camera: str, label: str | None, now: float) -> None:
        """The frame this policy wanted became a sample."""


def top1(top: Sequence[Scored]) -> str | None:
    return top[0].label if top else None


class LowConfidence(FramePolicy):
    """Top-1 score under ``below`` (an empty list, every class under min_score, counts too)."""

    name = "low_confidence"

    def __init__(self, below: float):
        self.below = below

    def wants(self, camera: str, top: Sequence[Scored], now: float) -> bool:
        return not top or top[0].score < self.below


class SmallMargin(FramePolicy):
    """Top-1 and top-2 closer than ``below``."""

    name = "small_margin"

    def __init__(self, below: float):
        self.below = below

    def wants(self, camera: str, top: Sequence[Scored], now: float) -> bool:
        return len(top) >= 2 and top[0].score - top[1].score < self.below


class Flip(FramePolicy):
    """Top-1 label differs from the previous frame's on the same camera."""

    name = "flip"

    def __init__(self) -> None:
        self._previous: dict[str, str | None] = {}

    def wants(self, camera: str, top: Sequence[Scored], now: float) -> bool:
        label = top1(top)
        missing = object()
        previous = self._previous.get(camera, missing)
        self._previous[camera] = label
        return previous is not missing and previous != label


class ClassBalancedRandom(FramePolicy):
    """A random frame per top-1 label at most every ``per_label_interval_s``: rare labels get as
    many samples as common ones. An eligible frame is taken with ``probability``."""

    name = "random"

    def __init__(
        self, per_label_interval_s: float, probability: float, rng: random.Random | None = None
    ):
        self.interval = per_label_interval_s
        self.probability = probability
        self.rng = rng or random.Random()
        self._last: dict[tuple[str, str | None], float] = {}

    def wants(self, camera: str, top: Sequence[Scored], now: float) -> bool:
        last = self._last.get((camera, top1(top)))
        if last is not None and now - last < self.interval:
            return False
        return self.rng.random() < self.probability

    def taken(self, camera: str, label: str | None, now: float) -> None:
        self._last[(camera, label)] = now


class NearThreshold:
    """An idle alert rule scores within ``band`` under its start_score: the closest one."""

    name = "near_threshold"

    def __init__(self, band: float):
        self.band = band

    def pick(self, scores: Sequence[RuleScoreLike]) -> RuleScoreLike | None:
        near = [
            s
            for s in scores
            if not s.active and s.start_score - self.band <= s.score < s.start_score
        ]
        return max(near, key=lambda s: s.score - s.start_score) if near else None


# -- the decision --------------------------------------------------------------------------------
@dataclass
class PolicyCounts:
    taken: int = 0
    rate_limited: int = 0  # the policy's own limit or the camera's limit for all policies
    label_limited: int = 0  # the camera's limit per label
    budget_exhausted: int = 0  # the day's bytes are spent (decided, or found when writing)
    queue_dropped: int = 0  # the encoder's queue was full

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Limits:
    policy: dict[str, Limits] = field(default_factory=dict)
    camera: Limits | None = None
    label: Limits | None = None


class Sampler:
    """Decides, on the inference threads, which frames become samples (module docstring).

    Thread-safe (one lock; each call is a few comparisons). A frame is taken at most once.
    """

    def __init__(self, cfg: SamplingConfig, rng: random.Random | None = None):
        self.cfg = cfg
        self._lock = threading.Lock()
        self.frame_policies: list[FramePolicy] = []
        if cfg.low_confidence.enabled:
            self.frame_policies.append(LowConfidence(cfg.low_confidence.below))
        if cfg.small_margin.enabled:
            self.frame_policies.append(SmallMargin(cfg.small_margin.below))
        if cfg.flip.enabled:
            self.frame_policies.append(Flip())
        if cfg.random.enabled:
            r = cfg.random
            self.frame_policies.append(
                ClassBalancedRandom(r.per_label_interval_s, r.probability, rng)
            )
        nt = cfg.near_threshold
        self.near_threshold = NearThreshold(nt.band) if nt.enabled else None
        self.limits = _Limits()
        sections: dict[str, Any] = {
            "low_confidence": cfg.low_confidence,
            "small_margin": cfg.small_margin,
            "flip": cfg.flip,
            "random": cfg.random,
            "near_threshold": nt,
            "alert_start": cfg.alerts,
            "alert_best": cfg.alerts,
        }
        for name, section in sections.items():
            self.limits.policy[name] = Limits(
                lambda s=section: RateLimit(s.max_per_hour, s.min_interval_s)
            )
        self.limits.camera = Limits(lambda: RateLimit(cfg.max_per_hour))
        self.limits.label = Limits(lambda: RateLimit(cfg.max_per_label_per_hour))
        self.budget = DailyBudget(int(cfg.daily_mb * 1024 * 1024))
        self.counts = {name: PolicyCounts() for name in sections}
        self._last_frame: dict[str, int] = {}

    # -- decisions (inference threads) -----------------------------------------------------------
    def on_frame(
        self, camera: str, frame: int, top: Sequence[Scored], now: float, day: str
    ) -> str | None:
        """The frame policy that takes this frame, or None."""
        with self._lock:
            wanted = [p for p in self.frame_policies if p.wants(camera, top, now)]
            if self._last_frame.get(camera) == frame:
                return None
            label = top1(top)
            for policy in wanted:
                verdict = self._admit(policy.name, camera, frame, label, now, day)
                if verdict == "taken":
                    policy.taken(camera, label, now)
                    return policy.name
                if verdict == "stop":
                    return None
            return None

    def on_rules(
        self, camera: str, frame: int, scores: Sequence[RuleScoreLike], now: float, day: str
    ) -> RuleScoreLike | None:
        """The rule that almost started an event on this frame, when the frame is taken."""
        if self.near_threshold is None:
            return None
        with self._lock:
            pick = self.near_threshold.pick(scores)
            if pick is None or self._last_frame.get(camera) == frame:
                return None
            verdict = self._admit(self.near_threshold.name, camera, frame, pick.label, now, day)
            return pick if verdict == "taken" else None

    def on_event(
        self, policy: str, camera: str, frame: int, label: str | None, now: float, day: str
    ) -> bool:
        """An alert event's start or best frame (``policy`` alert_start / alert_best)."""
        alerts = self.cfg.alerts
        if not alerts.enabled or not (alerts.start if policy == "alert_start" else alerts.best):
            return False
        with self._lock:
            if self._last_frame.get(camera) == frame:
                return False
            return self._admit(policy, camera, frame, label, now, day) == "taken"

    def _admit(
        self, policy: str, camera: str, frame: int, label: str | None, now: float, day: str
    ) -> str:
        """ "taken" (limits charged), "next" (this policy's limit: another may take the frame)
        or "stop" (a limit no policy can pass)."""
        counts = self.counts[policy]
        if self.budget.exhausted(day):
            counts.budget_exhausted += 1
            return "stop"
        own = self.limits.policy[policy][camera]
        if not own.allows(now):
            counts.rate_limited += 1
            return "next"
        assert self.limits.camera is not None and self.limits.label is not None
        per_camera = self.limits.camera[camera]
        if not per_camera.allows(now):
            counts.rate_limited += 1
            return "stop"
        per_label = self.limits.label[(camera, label)]
        if not per_label.allows(now):
            counts.label_limited += 1
            return "stop"
        own.take(now)
        per_camera.take(now)
        per_label.take(now)
        counts.taken += 1
        self._last_frame[camera] = frame
        return "taken"

    # -- the writer thread -----------------------------------------------------------------------
    def spend(self, policy: str, day: str, size: int, primary: bool = True) -> bool:
        """Charge a JPEG about to be written to the day's budget; False when it does not fit
        (counted as budget_exhausted, and the frame no longer as taken when it was the
        ``primary`` image of its sample rather than an extra roi crop)."""
        with self._lock:
            if self.budget.spend(day, size):
                return True
            counts = self.counts[policy]
            counts.budget_exhausted += 1
            if primary:
                counts.taken -= 1
            return False

    def budget_state(self) -> tuple[str, int]:
        with self._lock:
            return self.budget.day, self.budget.used

    def count_dropped(self, policy: str) -> None:
        with self._lock:
            self.counts[policy].queue_dropped += 1

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            return {
                "policies": {name: c.as_dict() for name, c in self.counts.items()},
                "day": self.budget.day,
                "bytes_today": self.budget.used,
                "daily_budget_bytes": self.budget.max_bytes,
            }
