"""``edgecam-device bench --motion``: what motion gating saves, and that it loses no alert.

A mostly static clip is built from a real one (``build_clip``: its first frame held for
``still_s`` seconds, the clip itself, then a still frame again: the first one by default, the
clip's last one with ``end_still="last"``), written with the mp4v codec to a temporary folder.
(vtest.avi ends on people the rule sees: held, that keeps an alert event active, and every
frame of an active event is classified, gated or not.) The shipped camera loop (device.pipeline) classifies it twice, as fast as it
can, with the same alert rules (device.alerts.stepper on the real results): once classifying
every frame, once with motion gating (device.motion). Reported for each run: CPU seconds per
minute of video (process CPU time, all threads) over the whole clip and per part (still,
moving, still), frames classified, skipped and heartbeats, the alert events; and whether every
event of the ungated run is also raised with gating (same rule, overlapping frames).
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from device.alerts.config import AlertsConfig
from device.alerts.jobs import Job, TransitionJob
from device.alerts.rules import check_rules
from device.alerts.stepper import RuleStepper
from device.classifier import Classifier
from device.config import CameraConfig, InferenceConfig, ModelConfig
from device.errors import ConfigError, SourceError
from device.motion import MotionConfig
from device.pipeline import CameraPipeline
from device.preprocess import limit_opencv_threads
from device.sinks import Result, Sink, SinkSet

log = logging.getLogger(__name__)

# people walking in vtest.avi show up as these ImageNet labels (tests/device/test_alerts_clip.py)
DEFAULT_LABELS = ("unicycle", "crutch", "ski")


@dataclass(frozen=True)
class Clip:
    """A built clip: its path, frame rate and the (first, end) frames of its parts."""

    path: Path
    fps: float
    parts: dict[str, tuple[int, int]]

    @property
    def frames(self) -> int:
        return max(end for _, end in self.parts.values())


def build_clip(
    source: str | Path,
    dest: Path,
    still_s: float = 60.0,
    moving_frames: int | None = None,
    end_still: str = "first",
) -> Clip:
    """Write ``dest`` (mp4v): the first frame of ``source`` held ``still_s`` seconds, then
    ``moving_frames`` of it (all by default), then its ``end_still`` frame (first or last)
    held ``still_s`` seconds."""
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise SourceError(f"cannot read the clip {source}", "give a video file OpenCV decodes")
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    ok, frame = cap.read()
    if not ok:
        cap.release()
        raise SourceError(f"{source} has no decodable frames")
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(str(dest), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        cap.release()
        raise SourceError(f"cannot write {dest} with the mp4v codec")
    held = round(still_s * fps)
    try:
        for _ in range(held):
            writer.write(frame)
        moving = 0
        last = frame
        while moving_frames is None or moving < moving_frames:
            writer.write(last)
            moving += 1
            ok, nxt = cap.read()
            if not ok:
                break
            last = nxt
        still = frame if end_still == "first" else last
        for _ in range(held):
            writer.write(still)
    finally:
        writer.release()
        cap.release()
    parts = {
        "still_1": (0, held),
        "moving": (held, held + moving),
        "still_2": (held + moving, 2 * held + moving),
    }
    return Clip(dest, fps, parts)


class _Rules(Sink):
    """The alert rules on every result (no outbox, no snapshots: only the transitions)."""

    name = "rules"

    def __init__(self, stepper: RuleStepper):
        self.stepper = stepper

    def handle(self, result: Result) -> None:
        self.stepper.handle(result.camera, result.frame, result.top)


class _Counter(Sink):
    name = "count"

    def __init__(self) -> None:
        self.results = 0

    def handle(self, result: Result) -> None:
        self.results += 1


def _rules(labels: tuple[str, ...]) -> AlertsConfig:
    return AlertsConfig.model_validate(
        {
            "label_groups": {"walker": list(labels)},
            "rules": [
                {
                    "name": "people",
                    "groups": ["walker"],
                    "start_score": 0.2,
                    "end_score": 0.1,
                    "start_frames": 3,
                    "end_frames": 10,
                    "cooldown_s": 0.0,  # the clip runs faster than real time: no wall-clock rule
                }
            ],
            "snapshots": {"enabled": False},
        }
    )


def _run(
    clip: Clip,
    classifier: Classifier,
    alerts: AlertsConfig,
    motion: MotionConfig,
    top_k: int,
) -> dict[str, Any]:
    jobs: list[Job] = []
    matchers = check_rules(alerts, ["bench"], classifier.bundle.labels)
    stepper = RuleStepper(alerts, ["bench"], matchers, jobs.append, None, top_k)
    counter = _Counter()
    camera = CameraConfig(name="bench", source=str(clip.path), motion=motion)
    stop = threading.Event()
    pipeline = CameraPipeline(
        camera,
        classifier,
        SinkSet([counter, _Rules(stepper)]),
        stop,
        top_k=top_k,
        event_active=stepper.event_active,
    )
    samples: list[tuple[int, float]] = [(0, time.process_time())]

    def sample() -> None:  # (frames read, process CPU seconds), 20 times a second
        while not pipeline.done.wait(0.05):
            samples.append((pipeline.frames_read, time.process_time()))

    sampler = threading.Thread(target=sample, name="bench-cpu", daemon=True)
    wall = time.monotonic()
    pipeline.start()
    sampler.start()
    pipeline.done.wait()
    wall = time.monotonic() - wall
    stop.set()
    pipeline.join()
    sampler.join()
    samples.append((clip.frames, time.process_time()))
    cpu = samples[-1][1] - samples[0][1]
    minutes = clip.frames / clip.fps / 60.0
    parts = {}
    for name, (first, end) in clip.parts.items():
        part_cpu = _cpu_at(samples, end) - _cpu_at(samples, first)
        part_min = (end - first) / clip.fps / 60.0
        parts[name] = round(part_cpu / part_min, 3) if part_min else 0.0
    metrics = pipeline.metrics()
    events = [
        {
            "rule": j.rule,
            "type": j.transition.kind,
            "frame": j.transition.obs.frame,
            "event_id": j.event.event_id,
        }
        for j in jobs
        if isinstance(j, TransitionJob) and j.transition.kind in ("start", "end")
    ]
    return {
        "gated": motion.enabled,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_s_per_video_min": round(cpu / minutes, 3),
        "cpu_s_per_video_min_by_part": parts,
        "frames": metrics["frames"],
        "classified": counter.results,
        "motion": metrics.get("motion"),
        "events": _spans(events, clip.frames),
    }


def _cpu_at(samples: list[tuple[int, float]], frame: int) -> float:
    """Process CPU time when the capture thread had read ``frame`` frames (interpolated)."""
    for (f0, c0), (f1, c1) in itertools.pairwise(samples):
        if f0 <= frame <= f1:
            return c0 if f1 == f0 else c0 + (c1 - c0) * (frame - f0) / (f1 - f0)
    return samples[-1][1]


def _spans(events: list[dict[str, Any]], frames: int) -> list[dict[str, Any]]:
    """Start/end messages -> one record per event: rule, first and last frame."""
    spans: dict[str, dict[str, Any]] = {}
    for e in events:
        span = spans.setdefault(e["event_id"], {"rule": e["rule"], "start": None, "end": None})
        span[e["type"]] = e["frame"]
    out = []
    for span in spans.values():
        end = span["end"] if span["end"] is not None and span["end"] >= 0 else frames
        out.append({"rule": span["rule"], "start": span["start"], "end": end})
    return sorted(out, key=lambda s: s["start"])


def lost_events(ungated: list[dict[str, Any]], gated: list[dict[str, Any]]) -> list[dict]:
    """The ungated run's events that no gated event of the same rule overlaps."""
    return [
        e
        for e in ungated
        if not any(
            g["rule"] == e["rule"] and g["start"] <= e["end"] and e["start"] <= g["end"]
            for g in gated
        )
    ]


def run_motion_bench(
    *,
    model: ModelConfig,
    source: str,
    inference: InferenceConfig | None = None,
    still_s: float = 60.0,
    moving_frames: int | None = None,
    labels: tuple[str, ...] = DEFAULT_LABELS,
    motion: MotionConfig | None = None,
    end_still: str = "first",
) -> dict[str, Any]:
    """Build the clip, run it without and with gating; the figures (module docstring)."""
    limit_opencv_threads()
    inference = inference or InferenceConfig()
    motion = (motion or MotionConfig()).model_copy(update={"enabled": True})
    classifier = Classifier.from_config(model, inference)
    try:
        alerts = _rules(labels)
        check_rules(alerts, ["bench"], classifier.bundle.labels)
    except ConfigError as exc:
        raise ConfigError(
            f"bench --motion: {exc.message}", "name the model's labels with --motion-labels"
        ) from None
    with tempfile.TemporaryDirectory(prefix="edgecam-motion-") as tmp:
        clip = build_clip(source, Path(tmp) / "clip.mp4", still_s, moving_frames, end_still)
        runs = [
            _run(clip, classifier, alerts, motion.model_copy(update={"enabled": False}), 5),
            _run(clip, classifier, alerts, motion, 5),
        ]
    ungated, gated = runs
    lost = lost_events(ungated["events"], gated["events"])

    def saving(part: str) -> float | None:
        a = ungated["cpu_s_per_video_min_by_part"][part]
        b = gated["cpu_s_per_video_min_by_part"][part]
        return round(a / b, 2) if b else None

    return {
        "model_ref": classifier.bundle.ref,
        "backend": classifier.backend_name,
        "threads": inference.threads,
        "source": str(source),
        "clip": {
            "frames": clip.frames,
            "fps": clip.fps,
            "parts": clip.parts,
            "end_still": end_still,
        },
        "motion": motion.model_dump(mode="json"),
        "ungated": ungated,
        "gated": gated,
        "cpu_saving": {
            "total": round(ungated["cpu_s"] / gated["cpu_s"], 2) if gated["cpu_s"] else None,
            "still": saving("still_1"),
            "still_2": saving("still_2"),
            "moving": saving("moving"),
        },
        "events_lost": lost,
    }


def format_motion_report(r: dict[str, Any]) -> str:
    clip, u, g = r["clip"], r["ungated"], r["gated"]
    seconds = clip["frames"] / clip["fps"]
    parts = ", ".join(f"{k} {b - a}" for k, (a, b) in clip["parts"].items())
    lines = [
        f"edgecam bench --motion: {r['model_ref']} on {r['backend']}, threads={r['threads']}; "
        f"clip of {clip['frames']} frames ({seconds:.0f} s at {clip['fps']:g} fps; {parts}) "
        f"from {r['source']}",
        f"  {'':24s} {'ungated':>10s} {'gated':>10s} {'saving':>8s}",
    ]

    def row(name: str, a: Any, b: Any, saving: Any = None) -> None:
        tail = f"{saving:7.1f}x" if isinstance(saving, float) else ""
        lines.append(f"  {name:24s} {a!s:>10s} {b!s:>10s} {tail}")

    row("CPU s per video minute", u["cpu_s_per_video_min"], g["cpu_s_per_video_min"])
    for part in ("still_1", "moving", "still_2"):
        key = {"still_1": "still", "moving": "moving", "still_2": "still_2"}[part]
        row(
            f"  {part}",
            u["cpu_s_per_video_min_by_part"][part],
            g["cpu_s_per_video_min_by_part"][part],
            r["cpu_saving"][key],
        )
    row("CPU s in all", u["cpu_s"], g["cpu_s"], r["cpu_saving"]["total"])
    row("frames classified", u["classified"], g["classified"])
    motion = g["motion"] or {}
    row("frames skipped", 0, motion.get("skipped", 0))
    row("heartbeats", 0, motion.get("heartbeats", 0))
    row("alert events", len(u["events"]), len(g["events"]))
    lost = r["events_lost"]
    lines.append(
        "  every ungated alert event also raised with gating: "
        + ("yes" if not lost else f"NO, {len(lost)} lost: {lost}")
    )
    return "\n".join(lines)


__all__ = ["build_clip", "format_motion_report", "lost_events", "run_motion_bench"]
