"""The pure rule engine and the alerts config: hysteresis, confirmation, cooldown, schedule."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from device.alerts.config import AlertsConfig, RuleConfig
from device.alerts.rules import (
    ActiveHours,
    LabelMatcher,
    Observation,
    RuleEngine,
    RuleTracker,
    UnknownLabelError,
    resolve_labels,
)
from device.config import parse_config
from device.errors import ConfigError
from device.postprocess import Class

LABELS = {0: "background", 1: "red fox", 2: "kit fox, Vulpes macrotis", 3: "tabby, tabby cat"}


def run(rule: RuleConfig, scores: list[float], fps: float = 10.0) -> list[tuple[str, int]]:
    tracker = RuleTracker(rule)
    out = []
    for i, s in enumerate(scores):
        tr = tracker.step(Observation(i / fps, 1.7e9 + i / fps, i, s, "red fox"))
        if tr is not None:
            out.append((tr.kind, i))
    return out


def test_start_needs_consecutive_frames_and_end_needs_hysteresis():
    rule = RuleConfig(
        name="fox", labels=["red fox"], start_score=0.5, end_score=0.3, start_frames=3, end_frames=3
    )
    # two frames over the threshold are not enough; a dip to 0.4 (between end and start) keeps
    # the event alive; three frames under 0.3 end it
    scores = [0.9, 0.9, 0.1, 0.6, 0.7, 0.8, 0.4, 0.4, 0.2, 0.6, 0.1, 0.1, 0.1, 0.0]
    assert run(rule, scores) == [("start", 5), ("end", 12)]


def test_cooldown_blocks_a_restart_and_then_lets_it_start():
    rule = RuleConfig(
        name="fox", labels=["red fox"], start_frames=1, end_frames=1, cooldown_s=1.0
    )  # 10 frames at 10 fps
    scores = [0.9, 0.0] + [0.9] * 12
    events = run(rule, scores)
    assert events[:2] == [("start", 0), ("end", 1)]
    # ends at t=0.1 s: blocked until t=1.1 s (frame 11), then one frame confirms
    assert events[2] == ("start", 11)


def test_average_confirmation_rides_out_single_frame_dips():
    rule = RuleConfig(
        name="fox",
        labels=["red fox"],
        confirm="average",
        start_score=0.5,
        end_score=0.3,
        start_frames=4,
        end_frames=4,
    )
    noisy = [0.7, 0.1, 0.8, 0.6, 0.9, 0.0, 0.7, 0.8, 0.1, 0.9] + [0.0] * 6
    events = run(rule, noisy)
    assert [k for k, _ in events] == ["start", "end"]
    # the consecutive mode would have flapped or never started on the same scores
    strict = RuleConfig(name="f", labels=["red fox"], start_frames=4, end_frames=4)
    assert run(strict, noisy) == []


def test_update_when_the_peak_rises_rate_limited():
    rule = RuleConfig(
        name="fox",
        labels=["red fox"],
        start_frames=1,
        end_frames=2,
        update_delta=0.1,
        update_interval_s=0.25,
    )
    scores = [0.5, 0.55, 0.62, 0.63, 0.64, 0.9, 0.95, 0.0, 0.0]
    assert run(rule, scores) == [("start", 0), ("update", 3), ("update", 6), ("end", 8)]


def test_default_rule_suppresses_flapping():
    rule = RuleConfig(name="fox", labels=["red fox"])  # defaults only
    flapping = [0.9, 0.0] * 30  # over / under every other frame
    assert run(rule, flapping) == []
    assert rule.end_threshold == pytest.approx(0.3)


def test_forced_end_and_schedule():
    rule = RuleConfig(name="fox", labels=["red fox"], start_frames=1)
    tracker = RuleTracker(rule)
    assert tracker.step(Observation(0, 1.7e9, 0, 0.9, "red fox")).kind == "start"
    tr = tracker.force_end(Observation(1, 1.7e9 + 1, 1, 0.0, None), "paused")
    assert tr.kind == "end" and tr.reason == "paused" and tr.peak.score == 0.9
    assert tracker.force_end(Observation(2, 1.7e9 + 2, 2, 0.0, None), "paused") is None

    now = time.localtime()
    minute = now.tm_hour * 60 + now.tm_min
    outside = f"{(minute + 120) // 60 % 24:02d}:00-{(minute + 180) // 60 % 24:02d}:00"
    hours = ActiveHours([outside])
    assert not hours.armed(time.time())
    assert ActiveHours(["22:00-06:00"]).armed(time.mktime((2026, 1, 1, 23, 30, 0, 0, 0, -1)))
    assert ActiveHours(["22:00-06:00"]).armed(time.mktime((2026, 1, 1, 5, 59, 0, 0, 0, -1)))
    assert not ActiveHours(["22:00-06:00"]).armed(time.mktime((2026, 1, 1, 12, 0, 0, 0, 0, -1)))
    scheduled = RuleTracker(
        RuleConfig(name="f", labels=["x"], start_frames=1, active_hours=[outside])
    )
    assert scheduled.step(Observation(0, time.time(), 0, 1.0, "x")) is None


def test_labels_resolve_by_synonym_and_unknown_labels_are_named():
    assert resolve_labels(["Red Fox", "kit fox"], LABELS) == {1, 2}
    assert resolve_labels(["Vulpes macrotis"], LABELS) == {2}
    with pytest.raises(UnknownLabelError, match="did you mean: red fox"):
        resolve_labels(["red fx"], LABELS)
    matcher = LabelMatcher(frozenset({1, 2}))
    top = [Class(3, "tabby, tabby cat", 0.6), Class(2, "kit fox", 0.3), Class(1, "red fox", 0.1)]
    assert matcher.match(top) == (0.3, "kit fox")
    assert matcher.match([Class(3, "tabby", 0.9)]) == (0.0, None)


def test_engine_keeps_unchanged_rules_across_a_reload():
    fox = RuleConfig(name="fox", labels=["red fox"], start_frames=1)
    cat = RuleConfig(name="cat", labels=["tabby"], start_frames=1)
    m = {"fox": LabelMatcher(frozenset({1})), "cat": LabelMatcher(frozenset({3}))}
    engine = RuleEngine([fox, cat], m, ["cam0", "cam1"])
    out = engine.step("cam0", 0.0, 1.7e9, 0, {None: [Class(1, "red fox", 0.9)]})
    assert [(n, t.kind) for n, t in out] == [("fox", "start")]
    changed_cat = cat.model_copy(update={"start_score": 0.9})
    new = RuleEngine([fox, changed_cat], m, ["cam0", "cam1"], previous=engine)
    assert new.trackers[("cam0", "fox")] is engine.trackers[("cam0", "fox")]  # still active
    assert new.trackers[("cam0", "cat")] is not engine.trackers[("cam0", "cat")]
    assert new.trackers[("cam0", "fox")].active


def test_alerts_config_errors_name_the_problem():
    with pytest.raises(ValidationError, match="end_score"):
        RuleConfig(name="r", labels=["x"], start_score=0.3, end_score=0.5)
    with pytest.raises(ValidationError, match="no labels and no groups"):
        RuleConfig(name="r")
    with pytest.raises(ValidationError, match="HH:MM-HH:MM"):
        RuleConfig(name="r", labels=["x"], active_hours=["25:00-26:00"])
    with pytest.raises(ValidationError, match="unknown label group"):
        AlertsConfig(rules=[RuleConfig(name="r", groups=["canines"])])
    with pytest.raises(ValidationError, match="repeated: r"):
        AlertsConfig(rules=[RuleConfig(name="r", labels=["x"]), RuleConfig(name="r", labels=["y"])])
    # through the device config loader: field path and line number
    text = "alerts:\n  rules:\n    - name: fox\n      labels: [red fox]\n      start_scor: 0.5\n"
    with pytest.raises(ConfigError, match=r"line 5: alerts\.rules\.0\.start_scor: unknown key"):
        parse_config(text, "device.yaml")
    assert parse_config("", "x").alerts.rules == []


@pytest.mark.parametrize("name", [".", "..", "../fox", "fox/den", "fox+", "fox#", "red fox", ""])
def test_rule_names_that_cannot_be_topic_levels_or_file_names_are_refused(name):
    text = f"alerts:\n  rules:\n    - name: {name!r}\n      labels: [red fox]\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "device.yaml")
    message = str(err.value)
    assert "alerts.rules.0.name" in message and "line 3" in message, message
    assert "is not allowed: use letters, digits, '_', '.' and '-'" in message, message
    assert parse_config(text.replace(repr(name), "fox.den-2_b"), "x").alerts.rules[0].name
