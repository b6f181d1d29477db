"""Sampling policies, limits and budget as pure code: no model, no camera, no clock."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from device.postprocess import Class
from device.sampling.config import SamplingConfig
from device.sampling.policies import (
    ClassBalancedRandom,
    DailyBudget,
    Flip,
    LowConfidence,
    NearThreshold,
    RateLimit,
    Sampler,
    SmallMargin,
)

DAY = "2026-11-29"


def top(*pairs: tuple[str, float]) -> list[Class]:
    return [Class(i, label, score) for i, (label, score) in enumerate(pairs)]


@dataclass(frozen=True)
class Score:
    rule: str
    score: float
    label: str | None
    start_score: float = 0.5
    active: bool = False
    roi: tuple | None = None


def only(**policies) -> SamplingConfig:
    """A config with every policy off except those given (as their sections), no global
    limits in the way unless given."""
    sections = {
        name: {"enabled": False}
        for name in (
            "low_confidence",
            "small_margin",
            "flip",
            "alerts",
            "near_threshold",
            "random",
        )
    }
    base = {"enabled": True, "max_per_hour": 1000, "max_per_label_per_hour": 1000}
    for name, section in policies.items():
        if name in sections:
            sections[name] = {"enabled": True, **section}
        else:
            base[name] = section
    return SamplingConfig.model_validate({**base, **sections})


def test_rate_limit_per_rolling_hour_and_min_interval() -> None:
    limit = RateLimit(per_hour=3, min_interval_s=10)
    taken = []
    for t in range(0, 7200, 5):  # a candidate every 5 s for two hours
        if limit.allows(t):
            limit.take(t)
            taken.append(t)
    assert taken[:3] == [0, 10, 20]  # spaced by min_interval_s
    for t in taken:  # never more than 3 in any rolling hour
        assert sum(t <= u < t + 3600 for u in taken) <= 3
    assert taken[3] == 3600  # the first one left the window


def test_daily_budget_is_hard_and_starts_again_each_day() -> None:
    budget = DailyBudget(max_bytes=1000)
    assert budget.spend(DAY, 300) and budget.spend(DAY, 300)
    assert not budget.exhausted(DAY)  # another 300 would fit
    assert not budget.spend(DAY, 500)  # would overshoot: refused, not counted
    assert budget.used == 600
    assert budget.exhausted(DAY)  # the next JPEG, expected as large, would not fit either
    assert budget.spend(DAY, 400) and budget.used == 1000  # a smaller one still does
    assert not budget.exhausted("2026-11-30") and budget.used == 0


def test_frame_policies() -> None:
    assert LowConfidence(0.4).wants("c", top(("cat", 0.39)), 0)
    assert not LowConfidence(0.4).wants("c", top(("cat", 0.41)), 0)
    assert LowConfidence(0.4).wants("c", [], 0)  # every class under min_score
    assert SmallMargin(0.1).wants("c", top(("cat", 0.45), ("dog", 0.40)), 0)
    assert not SmallMargin(0.1).wants("c", top(("cat", 0.6), ("dog", 0.2)), 0)
    assert not SmallMargin(0.1).wants("c", top(("cat", 0.45)), 0)  # top_k 1: no margin

    flip = Flip()
    seq = ["cat", "cat", "dog", "dog", "cat"]
    assert [flip.wants("a", top((label, 0.9)), i) for i, label in enumerate(seq)] == [
        False,
        False,
        True,
        False,
        True,
    ]
    assert not flip.wants("b", top(("dog", 0.9)), 9)  # each camera has its own previous frame


def test_near_threshold_picks_the_idle_rule_closest_to_starting() -> None:
    near = NearThreshold(band=0.15)
    scores = [
        Score("fox", 0.30, "red fox"),  # under the band (0.35..0.5)
        Score("cat", 0.40, "tabby"),
        Score("dog", 0.48, "beagle", active=True),  # an event is on: not "almost"
        Score("car", 0.49, "cab", start_score=0.5),
        Score("bus", 0.55, "bus"),  # over start_score: it fires, not near
    ]
    assert near.pick(scores).rule == "car"
    assert near.pick(scores[:2]).rule == "cat"
    assert near.pick([scores[0], scores[2], scores[4]]) is None


def test_random_sample_is_class_balanced() -> None:
    """A common label (95 % of frames) and a rare one (5 %) get the same number of samples."""
    policy = ClassBalancedRandom(per_label_interval_s=600, probability=0.5, rng=random.Random(1))
    rng = random.Random(2)
    got = {"street": 0, "fox": 0}
    for second in range(6 * 3600):  # one frame a second for six hours
        label = "fox" if rng.random() < 0.05 else "street"
        if policy.wants("cam", top((label, 0.9)), second):
            policy.taken("cam", label, second)
            got[label] += 1
    assert 30 <= got["street"] <= 36  # at most one per label per 10 minutes
    assert got["fox"] >= 0.8 * got["street"]  # rare, yet nearly as many (uniform: 5 %)


def test_sampler_policy_limits_and_precedence() -> None:
    cfg = only(
        low_confidence={"below": 0.5, "max_per_hour": 2, "min_interval_s": 0},
        flip={"max_per_hour": 100, "min_interval_s": 0},
    )
    sampler = Sampler(cfg)
    taken = []
    labels = ["cat", "dog"] * 10
    for i, label in enumerate(labels):  # every frame low-confidence, every frame a flip
        taken.append(sampler.on_frame("cam", i, top((label, 0.3)), float(i), DAY))
    assert taken[:2] == ["low_confidence"] * 2  # the first in the order, while it may
    assert set(taken[2:]) == {"flip"}  # then the next policy takes the frame
    counts = sampler.counts
    assert counts["low_confidence"].taken == 2
    assert counts["low_confidence"].rate_limited == 18
    assert counts["flip"].taken == 18


def test_sampler_camera_and_label_limits() -> None:
    cfg = only(
        low_confidence={"below": 0.5, "max_per_hour": 1000, "min_interval_s": 0},
        max_per_hour=10,
        max_per_label_per_hour=3,
    )
    sampler = Sampler(cfg)
    for i in range(100):
        sampler.on_frame("a", i, top(("cat", 0.3)), float(i), DAY)
        sampler.on_frame("b", i, top(("cat" if i % 2 else f"label{i}", 0.3)), float(i), DAY)
    counts = sampler.counts["low_confidence"]
    # camera a: one label, 3 an hour; camera b: many labels, 10 an hour in all
    assert counts.taken == 3 + 10
    assert counts.label_limited >= 97 - 10
    assert counts.rate_limited > 0


def test_sampler_budget_and_a_frame_taken_once() -> None:
    cfg = only(
        low_confidence={"below": 0.5, "max_per_hour": 1000, "min_interval_s": 0},
        near_threshold={"band": 0.2, "max_per_hour": 1000, "min_interval_s": 0},
        alerts={"max_per_hour": 1000},
        daily_mb=1.0,
    )
    sampler = Sampler(cfg)
    # the alert stepper offers a frame before the sink sees it: one sample per frame
    assert sampler.on_rules("cam", 1, [Score("fox", 0.4, "red fox")], 1.0, DAY) is not None
    assert sampler.on_frame("cam", 1, top(("red fox", 0.4)), 1.0, DAY) is None
    assert sampler.on_event("alert_start", "cam", 2, "red fox", 2.0, DAY)
    assert not sampler.on_event("alert_best", "cam", 2, "red fox", 2.0, DAY)
    # the writer charges the JPEGs to the day's budget
    counts = sampler.counts["low_confidence"]
    assert sampler.on_frame("cam", 3, top(("cat", 0.1)), 3.0, DAY) == "low_confidence"
    assert sampler.spend("low_confidence", DAY, 400_000)  # of 1 MiB
    assert sampler.on_frame("cam", 4, top(("cat", 0.1)), 4.0, DAY) == "low_confidence"
    assert not sampler.spend("low_confidence", DAY, 700_000)  # does not fit: not written
    assert (counts.taken, counts.budget_exhausted) == (1, 1)
    # nothing more is taken today (the next JPEG is expected as large) ...
    assert sampler.on_frame("cam", 5, top(("cat", 0.1)), 5.0, DAY) is None
    assert counts.budget_exhausted == 2
    # ... and tomorrow is a new budget
    assert sampler.on_frame("cam", 6, top(("cat", 0.1)), 6.0, "2026-11-30") == "low_confidence"


@pytest.mark.parametrize("which", ["start", "best"])
def test_alert_frames_can_be_turned_off(which: str) -> None:
    sampler = Sampler(only(alerts={which: False}))
    assert not sampler.on_event(f"alert_{which}", "cam", 1, "fox", 1.0, DAY)
    other = "best" if which == "start" else "start"
    assert sampler.on_event(f"alert_{other}", "cam", 1, "fox", 1.0, DAY)


def test_sampling_is_off_by_default() -> None:
    from device.config import parse_config

    assert not parse_config("").sampling.enabled
    assert not parse_config("").upload.enabled
