"""``edgecam-device bench --privacy`` (``make bench-privacy``): what face redaction costs.

1. Per image, at the snapshot size (the source's first frame scaled to 1280 pixels wide, the
   default ``snapshots.max_width``): the detector alone, and ``PrivacyGuard.protect`` (copy,
   masks, detector, redaction), for the short range model, the full range model, and the full
   range model with tiles; plus the JPEG encoding every snapshot costs anyway.
2. The shipped camera loop's rate (device.bench's loop phase) while a "snapshot" thread, like
   the alerts worker, takes a copy of the newest frame and turns it into a JPEG: with no
   snapshots, with plain snapshots, and with redacted ones, at ``RATE`` snapshots a second (a
   start and a best snapshot, and a field sample, of an event every second or so: far above a
   real alert rate); redaction should not move the loop's rate. Then back to back (the thread
   never idle), a stress figure.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from device.alerts.snapshots import encode_jpeg
from device.bench import _loop_phase
from device.classifier import Classifier
from device.config import InferenceConfig, ModelConfig
from device.metrics import percentiles
from device.preprocess import limit_opencv_threads
from device.privacy.config import PrivacyConfig
from device.privacy.detector import FaceDetector
from device.privacy.guard import PrivacyGuard, Withheld
from device.sinks import Result, Sink
from device.sources import open_source

log = logging.getLogger(__name__)

SNAPSHOT_WIDTH = 1280  # alerts.snapshots.max_width's default
TILE_PX = 192
RATE = 2.0  # snapshots a second in the paced runs
MASK = [[0.0, 0.0], [0.3, 0.0], [0.3, 0.2], [0.0, 0.2]]  # one mask, as a user might have
DETECTORS = {
    "short_range": "face_detection_short_range.tflite",
    "full_range": "face_detection_full_range_sparse.tflite",
}


def _guard(detectors: Path, kind: str, tile_px: int | None = None) -> PrivacyGuard:
    model = detectors / DETECTORS[kind]
    cfg = PrivacyConfig.model_validate(
        {
            "faces": {"enabled": True, "model": str(model), "tile_px": tile_px},
            "cameras": {"bench": {"masks": [MASK]}},
        }
    )
    detector = FaceDetector(model, tile_px=tile_px)  # errors (a missing file) stop the bench
    return PrivacyGuard(cfg, detector=detector)


def _timed(fn: Any, repeats: int) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    p50, p95 = percentiles(times)
    return {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2)}


def _cost_phase(detectors: Path, image: np.ndarray, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"jpeg_encode": _timed(lambda: encode_jpeg(image), repeats)}
    for name, kind, tile in (
        ("short_range", "short_range", None),
        ("full_range", "full_range", None),
        (f"full_range_tiles_{TILE_PX}", "full_range", TILE_PX),
    ):
        guard = _guard(detectors, kind, tile)
        detector = guard.detector
        assert detector is not None
        out[name] = {
            "detect": _timed(lambda d=detector: d.detect(image), repeats),
            "protect": _timed(lambda g=guard: g.protect("bench", image, "snapshot"), repeats),
            "invokes": 1 + len(_tiles(image, tile)),
        }
    return out


def _tiles(image: np.ndarray, tile: int | None) -> list[Any]:
    from device.privacy.blazeface import tiles

    height, width = image.shape[:2]
    return tiles(width, height, tile) if tile else []


class SnapshotSink(Sink):
    """Hands a copy of the newest frame to a "bench-snapshots" thread every ``interval_s``
    (0: whenever it is idle), which does what the alerts worker does with it: protect
    (optional) + JPEG."""

    name = "bench-snapshots"

    def __init__(self, guard: PrivacyGuard | None, interval_s: float = 0.0):
        self.guard = guard
        self.interval_s = interval_s
        self._due = 0.0
        self.done = 0
        self.withheld = 0
        self._pending: np.ndarray | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="bench-snapshots", daemon=True)
        self._thread.start()

    def handle(self, result: Result) -> None:
        now = time.monotonic()
        if now < self._due:
            return
        with self._cond:
            if self._pending is None:
                self._pending = result.frame.pixels.copy()  # what the alert stepper copies
                self._due = now + self.interval_s
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                pixels = self._pending
            assert pixels is not None
            try:
                if self.guard is not None:
                    pixels = self.guard.protect("bench", pixels, "snapshot").pixels
                encode_jpeg(pixels, 85, SNAPSHOT_WIDTH)
                self.done += 1
            except Withheld:
                self.withheld += 1
            with self._cond:
                self._pending = None

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(10)


def _loop_rates(
    classifier: Classifier, detectors: Path, source: str, frames: int, k: int, rounds: int
) -> dict[str, Any]:
    """Each mode's loop figures: the median of ``rounds`` runs (all runs' rates listed)."""
    short, full = _guard(detectors, "short_range"), _guard(detectors, "full_range")
    tiled = _guard(detectors, "full_range", TILE_PX)
    paced = 1.0 / RATE
    modes: list[tuple[str, PrivacyGuard | None, float | None]] = [
        ("no snapshots", None, None),
        (f"{RATE:g}/s plain", None, paced),
        (f"{RATE:g}/s short_range", short, paced),
        (f"{RATE:g}/s full_range", full, paced),
        (f"{RATE:g}/s full_range tiles {TILE_PX}", tiled, paced),
        ("back to back plain", None, 0.0),
        ("back to back full_range", full, 0.0),
    ]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in modes}
    for _ in range(rounds):  # interleaved, so that a busy moment of the machine hits all modes
        for name, guard, interval in modes:
            sink = None if interval is None else SnapshotSink(guard, interval)
            started = time.monotonic()
            try:
                loop = _loop_phase(classifier, source, frames, k, extra=[sink] if sink else [])
            finally:
                if sink is not None:
                    sink.close()
            elapsed = time.monotonic() - started
            runs[name].append(
                {
                    "rate_fps": loop["rate_fps"],
                    "inference_ms_p50": loop["inference_ms_p50"],
                    "snapshots_per_s": sink.done / elapsed if sink else 0.0,
                }
            )
    return {
        name: {key: round(float(np.median([r[key] for r in results])), 2) for key in results[0]}
        | {"rates_fps": [round(r["rate_fps"], 1) for r in results]}
        for name, results in runs.items()
    }


def run_privacy_bench(
    *,
    model: ModelConfig,
    source: str,
    detectors: Path,
    inference: InferenceConfig | None = None,
    frames: int = 300,
    repeats: int = 30,
    rounds: int = 3,
) -> dict[str, Any]:
    limit_opencv_threads()
    inference = inference or InferenceConfig()
    with open_source(source) as src:
        frame = src.read()
    if frame is None:
        raise ValueError(f"{source} delivered no frame")
    height = round(frame.shape[0] * SNAPSHOT_WIDTH / frame.shape[1])
    snapshot = cv2.resize(frame, (SNAPSHOT_WIDTH, height), interpolation=cv2.INTER_LINEAR)
    costs = _cost_phase(detectors, snapshot, repeats)
    costs_native = _cost_phase(detectors, frame, repeats)
    classifier = Classifier.from_config(model, inference)
    loop = _loop_rates(classifier, detectors, source, frames, inference.top_k, rounds)
    base = loop["no snapshots"]["rate_fps"]
    return {
        "model_ref": classifier.bundle.ref,
        "source": source,
        "threads": inference.threads,
        "frames": frames,
        "rounds": rounds,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "snapshot_size": [SNAPSHOT_WIDTH, height],
        "native_size": [frame.shape[1], frame.shape[0]],
        "cost_per_image": costs,
        "cost_per_image_native": costs_native,
        "loop": loop,
        "loop_ratio_to_no_snapshots": {
            name: round(v["rate_fps"] / base, 3) if base else 0.0 for name, v in loop.items()
        },
    }


def format_privacy_report(r: dict[str, Any]) -> str:
    w, h = r["snapshot_size"]
    nw, nh = r["native_size"]
    lines = [
        f"edgecam privacy bench: {r['model_ref']}, threads={r['threads']}, {r['frames']} frames "
        f"of {r['source']} ({r['machine']})",
        f"  redaction cost per image, p50 / p95 ms: {w}x{h} (snapshot size) | {nw}x{nh} (native)",
    ]
    for name, native in r["cost_per_image_native"].items():
        snap = r["cost_per_image"][name]
        if name == "jpeg_encode":
            lines.append(
                f"    {'JPEG encode (any snapshot)':40} {snap['p50_ms']:7.1f} / {snap['p95_ms']:<7.1f}"
                f" | {native['p50_ms']:7.1f} / {native['p95_ms']:.1f}"
            )
            continue
        for part in ("detect", "protect"):
            runs = snap["invokes"]
            label = f"{name} {part}" + (f" ({runs} runs)" if part == "detect" and runs > 1 else "")
            lines.append(
                f"    {label:40} {snap[part]['p50_ms']:7.1f} / {snap[part]['p95_ms']:<7.1f}"
                f" | {native[part]['p50_ms']:7.1f} / {native[part]['p95_ms']:.1f}"
            )
    lines.append(
        "  loop rate while a thread makes snapshots (JPEG, redacted or not) beside it "
        f"(median of {r['rounds']} interleaved runs):"
    )
    for name, v in r["loop"].items():
        ratio = r["loop_ratio_to_no_snapshots"][name]
        lines.append(
            f"    {name:28} {v['rate_fps']:7.1f} fps  x{ratio:.3f}  (runs "
            f"{', '.join(f'{x:.0f}' for x in v['rates_fps'])}; inference p50 "
            f"{v['inference_ms_p50']:.1f} ms; {v['snapshots_per_s']:.1f} snapshots/s made)"
        )
    return "\n".join(lines)
