"""Runtime metrics: rates, latency percentiles, drops, CPU temperature, memory."""

from __future__ import annotations

import collections
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def percentiles(values: list[float] | np.ndarray, qs: tuple[float, ...] = (50, 95)) -> list[float]:
    if len(values) == 0:
        return [0.0 for _ in qs]
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), qs)]


def cpu_temperature() -> float | None:
    """SoC temperature in °C on a Pi (and most Linux boards); None where unknown."""
    try:
        return int(THERMAL_ZONE.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rss_mb() -> float:
    """Current resident memory in MB (from /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


class CameraStats:
    """Per-camera counters, updated by the inference thread, read by the metrics thread."""

    WINDOW = 500  # latest results kept for percentiles

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.results = 0
        self.started_mono = time.monotonic()
        self.first_result_mono: float | None = None
        self._inference: collections.deque[float] = collections.deque(maxlen=self.WINDOW)
        self._latency: collections.deque[float] = collections.deque(maxlen=self.WINDOW)
        self._times: collections.deque[float] = collections.deque(maxlen=self.WINDOW)

    def record(self, inference_ms: float, latency_ms: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.results += 1
            if self.first_result_mono is None:
                self.first_result_mono = now
            self._inference.append(inference_ms)
            self._latency.append(latency_ms)
            self._times.append(now)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            inference = list(self._inference)
            latency = list(self._latency)
            times = list(self._times)
            results = self.results
        fps = (
            (len(times) - 1) / (times[-1] - times[0])
            if len(times) > 1 and times[-1] > times[0]
            else 0.0
        )
        i50, i95 = percentiles(inference)
        l50, l95 = percentiles(latency)
        return {
            "results": results,
            "fps": round(fps, 2),
            "inference_ms": {
                "p50": round(i50, 2),
                "p95": round(i95, 2),
                "mean": round(float(np.mean(inference)), 2) if inference else 0.0,
            },
            "latency_ms": {"p50": round(l50, 2), "p95": round(l95, 2)},
        }
