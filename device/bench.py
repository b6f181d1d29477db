"""``edgecam-device bench``: the loop's figures, measured in one run on one machine.

Phases, on the same model, threads and source:
1. the full loop (capture thread + inference thread + result serialisation), started cold, so
   the time from process start to the first result and the peak memory are real;
2. the raw interpreter invoke rate on a fixed input (the ceiling);
3. a plain sequential loop (read -> resize -> invoke -> publish in one thread), for comparison.
"""

from __future__ import annotations

import json
import logging
import platform
import threading
import time
from pathlib import Path
from typing import Any

from device.capture import CaptureThread
from device.classifier import Classifier, InferenceOptions
from device.metrics import peak_rss_mb, percentiles
from device.preprocess import limit_opencv_threads
from device.sinks import Result
from device.sources import open_source
from device.sources.base import Frame

log = logging.getLogger(__name__)


def process_start_wall() -> float:
    """Wall-clock time this process started (psutil; falls back to /proc)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except ImportError:
        import os

        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")


def _serialise(result: Result) -> int:
    """What publishing costs on the inference thread: build and encode the payload."""
    return len(json.dumps(result.payload(), separators=(",", ":")))


def _loop_phase(
    classifier: Classifier, source_spec: str, frames: int, k: int, realtime: bool = False
) -> dict[str, Any]:
    source = open_source(source_spec)
    source.open()
    stop = threading.Event()
    capture = CaptureThread(
        "bench",
        source,
        classifier.prepare,
        classifier.preprocessor.new_buffer,
        realtime=realtime,
        loop=True,
        stop=stop,
    )
    times: list[float] = []
    latencies: list[float] = []
    inference: list[float] = []
    capture.start()
    try:
        while len(times) < frames:
            item = capture.slot.get(timeout=1.0)
            if item is None:
                if capture.finished.is_set():
                    break
                continue
            try:
                top, ms = classifier.classify_tensor(item.tensor, k)
            finally:
                capture.release(item)
            now = time.monotonic()
            _serialise(
                Result(
                    "bench",
                    item.frame,
                    top,
                    ms,
                    (now - item.frame.ts_mono) * 1000,
                    classifier.bundle.ref,
                )
            )
            times.append(now)
            latencies.append((now - item.frame.ts_mono) * 1000.0)
            inference.append(ms)
    finally:
        stop.set()
        capture.stop()
        capture.join(5)
    first_wall = time.time() - (time.monotonic() - times[0]) if times else None
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    p50, p95 = percentiles(latencies)
    return {
        "results": len(times),
        "rate_fps": rate,
        "latency_ms": {"p50": p50, "p95": p95},
        "inference_ms_p50": percentiles(inference)[0],
        "dropped": capture.dropped,
        "first_result_wall": first_wall,
    }


def _raw_phase(classifier: Classifier, source_spec: str, frames: int) -> dict[str, Any]:
    with open_source(source_spec) as source:
        pixels = source.read()
    tensor = classifier.prepare(pixels)
    backend = classifier.backend
    backend.set_input(tensor)
    backend.invoke()  # warm-up
    durations = []
    start = time.perf_counter()
    for _ in range(frames):
        durations.append(backend.invoke())
    elapsed = time.perf_counter() - start
    return {
        "invokes": frames,
        "rate_fps": frames / elapsed,
        "invoke_ms_p50": percentiles(durations)[0],
    }


def _sequential_phase(
    classifier: Classifier, source_spec: str, frames: int, k: int
) -> dict[str, Any]:
    source = open_source(source_spec)
    source.open()
    times: list[float] = []
    latencies: list[float] = []
    index = 0
    try:
        while len(times) < frames:
            t0 = time.monotonic()
            pixels = source.read()
            if pixels is None:
                if not source.rewind():
                    break
                continue
            frame = Frame(pixels, t0, time.time(), index)
            index += 1
            top, ms = classifier.classify(pixels, k)
            now = time.monotonic()
            _serialise(Result("bench", frame, top, ms, (now - t0) * 1000, classifier.bundle.ref))
            times.append(now)
            latencies.append((now - t0) * 1000.0)
    finally:
        source.close()
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    p50, p95 = percentiles(latencies)
    return {"results": len(times), "rate_fps": rate, "latency_ms": {"p50": p50, "p95": p95}}


def run_bench(
    *,
    model: str | Path,
    source: str,
    frames: int = 300,
    labels: str | Path | None = None,
    threads: int | None = None,
    xnnpack: bool = True,
    edgetpu: bool = False,
    edgetpu_device: str = "usb",
    input_overrides: dict[str, Any] | None = None,
    k: int = 3,
    realtime: bool = False,
) -> dict[str, Any]:
    started = process_start_wall()
    limit_opencv_threads()
    options = InferenceOptions(
        threads=threads, xnnpack=xnnpack, edgetpu=edgetpu, edgetpu_device=edgetpu_device
    )
    overrides = {k2: v for k2, v in (input_overrides or {}).items() if v is not None}
    classifier = Classifier.open(model, labels, options=options, **overrides)
    loop = _loop_phase(classifier, source, frames, k, realtime)
    rss = peak_rss_mb()
    raw = _raw_phase(classifier, source, frames)
    seq = _sequential_phase(classifier, source, frames, k)
    first = loop.pop("first_result_wall")
    return {
        "model": str(model),
        "model_ref": classifier.bundle.ref,
        "backend": classifier.backend_name,
        "source": str(source),
        "threads": threads,
        "frames": frames,
        "realtime": realtime,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "raw_invoke": raw,
        "loop": loop,
        "sequential": seq,
        "ratio_loop_to_raw": loop["rate_fps"] / raw["rate_fps"] if raw["rate_fps"] else 0.0,
        "ratio_sequential_to_raw": seq["rate_fps"] / raw["rate_fps"] if raw["rate_fps"] else 0.0,
        "gain_loop_vs_sequential": loop["rate_fps"] / seq["rate_fps"] if seq["rate_fps"] else 0.0,
        "first_result_s": (first - started) if first else None,
        "peak_rss_mb": rss,
    }


def format_report(r: dict[str, Any]) -> str:
    loop, seq, raw = r["loop"], r["sequential"], r["raw_invoke"]
    lines = [
        f"edgecam bench: {r['model_ref']} on {r['backend']}, threads={r['threads']}, "
        f"{r['frames']} frames of {r['source']}"
        f"{' paced in real time' if r.get('realtime') else ''} ({r['machine']})",
        f"  raw invoke rate          {raw['rate_fps']:8.1f} /s   (invoke p50 {raw['invoke_ms_p50']:.1f} ms)",
        f"  loop rate (threaded)     {loop['rate_fps']:8.1f} /s   ratio to raw {r['ratio_loop_to_raw']:.3f}",
        f"  loop latency p50 / p95   {loop['latency_ms']['p50']:8.1f} / {loop['latency_ms']['p95']:.1f} ms "
        f"(capture -> result), dropped {loop['dropped']}",
        f"  sequential loop rate     {seq['rate_fps']:8.1f} /s   ratio to raw {r['ratio_sequential_to_raw']:.3f}",
        f"  sequential latency p50/p95 {seq['latency_ms']['p50']:6.1f} / {seq['latency_ms']['p95']:.1f} ms",
        f"  threaded / sequential    {r['gain_loop_vs_sequential']:8.3f}x",
        f"  first result after start {r['first_result_s']:8.2f} s",
        f"  peak RSS                 {r['peak_rss_mb']:8.1f} MB",
    ]
    return "\n".join(lines)


__all__ = ["format_report", "run_bench"]
