"""``edgecam-device bench``: the loop's figures, measured in one run on one machine.

Phases, on the same model, threads and source:
1. the shipped camera loop (device.pipeline.CameraPipeline: capture thread + inference thread,
   supervised) with a measuring sink that also serialises each result like the MQTT sink
   does, started cold, so the time from process start to the first result and the peak
   memory are real;
2. the raw interpreter invoke rate on a fixed input (the ceiling);
3. a plain sequential loop (read -> resize -> invoke -> publish in one thread), for comparison.

The three phases run ``rounds`` times, one after the other, and each reports its best round: on
a machine shared with other work, the best of a few short rounds is the rate the loop can
reach, not whichever moment another process took a core.

With ``thread_counts`` (``--thread-counts 1 2``) the three phases run once per interpreter
thread count, side by side in one report: on a 2-core Pi, 1 thread leaves a core to capture
(the loop should keep >= 0.95 of the raw invoke rate), 2 threads share both (>= 0.85).
``edgecam-device bench --motion`` (device.motion_bench) measures motion gating instead.
"""

from __future__ import annotations

import json
import logging
import platform
import threading
import time
from collections.abc import Sequence
from typing import Any

from device.classifier import Classifier
from device.config import CameraConfig, InferenceConfig, ModelConfig
from device.memory import breakdown, tune_malloc
from device.metrics import peak_rss_mb, percentiles
from device.pipeline import CameraPipeline
from device.preprocess import limit_opencv_threads
from device.sinks import Result, Sink, SinkSet
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


class MeasuringSink(Sink):
    """Records when each result arrived, its latency and inference time; serialises it."""

    name = "bench"

    def __init__(self) -> None:
        self.times: list[float] = []
        self.latencies: list[float] = []
        self.inference: list[float] = []

    def handle(self, result: Result) -> None:
        _serialise(result)
        self.times.append(time.monotonic())
        self.latencies.append(result.total_ms)
        self.inference.append(result.inference_ms)


def _loop_phase(
    classifier: Classifier,
    source_spec: str,
    frames: int,
    k: int,
    realtime: bool = False,
    extra: Sequence[Sink] = (),
) -> dict[str, Any]:
    """The shipped loop's figures; ``extra`` sinks run beside the measuring one (the privacy
    benchmark hands frames to a redacting thread from one)."""
    sink = MeasuringSink()
    camera = CameraConfig(name="bench", source=source_spec, loop=True, realtime=realtime)
    stop = threading.Event()
    pipeline = CameraPipeline(
        camera, classifier, SinkSet([sink, *extra]), stop, top_k=k, max_results=frames
    )
    pipeline.start()
    try:
        pipeline.done.wait()
    finally:
        stop.set()
        pipeline.join()
    times = sink.times
    first_wall = time.time() - (time.monotonic() - times[0]) if times else None
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    p50, p95 = percentiles(sink.latencies)
    return {
        "results": len(times),
        "rate_fps": rate,
        "latency_ms": {"p50": p50, "p95": p95},
        "inference_ms_p50": percentiles(sink.inference)[0],
        "dropped": pipeline.metrics()["dropped"],
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
    model: ModelConfig,
    source: str,
    inference: InferenceConfig | None = None,
    frames: int = 300,
    realtime: bool = False,
    thread_counts: Sequence[int] | None = None,
    rounds: int = 1,
) -> dict[str, Any]:
    """The figures of one run; ``model`` and ``inference`` are the config sections the
    runner gets (the CLI builds them from its flags). With ``thread_counts``, the figures for
    the first count, and ``by_threads``: the three rates for each count."""
    started = process_start_wall()
    limit_opencv_threads()
    tune_malloc()  # as the device does
    inference = inference or InferenceConfig()
    counts = list(thread_counts or [])
    if counts:
        inference = inference.model_copy(update={"threads": counts[0]})
    report = _one_run(model, inference, source, frames, realtime, rounds, started)
    if counts:
        report["by_threads"] = [_rates(report)]
        for n in counts[1:]:
            more = inference.model_copy(update={"threads": n})
            again = _one_run(model, more, source, frames, realtime, rounds)
            report["by_threads"].append(_rates(again))
    return report


def _rates(r: dict[str, Any]) -> dict[str, Any]:
    """One row of the thread-count table."""
    return {
        "threads": r["threads"],
        "raw_invoke_fps": round(r["raw_invoke"]["rate_fps"], 2),
        "invoke_ms_p50": round(r["raw_invoke"]["invoke_ms_p50"], 2),
        "loop_fps": round(r["loop"]["rate_fps"], 2),
        "ratio_loop_to_raw": round(r["ratio_loop_to_raw"], 3),
        "loop_latency_ms_p50": round(r["loop"]["latency_ms"]["p50"], 2),
        "sequential_fps": round(r["sequential"]["rate_fps"], 2),
        "ratio_sequential_to_raw": round(r["ratio_sequential_to_raw"], 3),
    }


def _one_run(
    model: ModelConfig,
    inference: InferenceConfig,
    source: str,
    frames: int,
    realtime: bool,
    rounds: int = 1,
    started: float | None = None,
) -> dict[str, Any]:
    k = inference.top_k
    classifier = Classifier.from_config(model, inference)
    loops, raws, seqs = [], [], []
    for _ in range(max(1, rounds)):
        loops.append(_loop_phase(classifier, source, frames, k, realtime))
        raws.append(_raw_phase(classifier, source, frames))
        seqs.append(_sequential_phase(classifier, source, frames, k))
    rss = peak_rss_mb()
    memory = breakdown()
    first = loops[0]["first_result_wall"]  # the cold start
    loop, raw, seq = (max(runs, key=lambda r: r["rate_fps"]) for runs in (loops, raws, seqs))
    loop = {key: value for key, value in loop.items() if key != "first_result_wall"}
    return {
        "model": model.path,
        "model_ref": classifier.bundle.ref,
        "backend": classifier.backend_name,
        "source": str(source),
        "threads": inference.threads,
        "frames": frames,
        "rounds": max(1, rounds),
        "realtime": realtime,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "raw_invoke": raw,
        "loop": loop,
        "sequential": seq,
        "ratio_loop_to_raw": loop["rate_fps"] / raw["rate_fps"] if raw["rate_fps"] else 0.0,
        "ratio_sequential_to_raw": seq["rate_fps"] / raw["rate_fps"] if raw["rate_fps"] else 0.0,
        "gain_loop_vs_sequential": loop["rate_fps"] / seq["rate_fps"] if seq["rate_fps"] else 0.0,
        "first_result_s": (first - started) if first and started else None,
        "peak_rss_mb": rss,
        "memory_mb": memory,
    }


def format_report(r: dict[str, Any]) -> str:
    loop, seq, raw = r["loop"], r["sequential"], r["raw_invoke"]
    lines = [
        f"edgecam bench: {r['model_ref']} on {r['backend']}, threads={r['threads']}, "
        f"{r['frames']} frames of {r['source']}"
        f"{' paced in real time' if r.get('realtime') else ''} ({r['machine']})"
        + (f", best of {r['rounds']} rounds" if r.get("rounds", 1) > 1 else ""),
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
    if r.get("memory_mb"):
        parts = ", ".join(f"{k} {v:g}" for k, v in r["memory_mb"].items() if k != "total")
        lines.append(f"  resident MB by library   {parts}")
    if r.get("by_threads"):
        lines += [
            "  by interpreter threads (the same source and frames, one after the other):",
            "    threads  raw invoke/s  loop/s  loop/raw  sequential/s  sequential/raw",
        ]
        lines += [
            f"    {t['threads']:7d}  {t['raw_invoke_fps']:12.1f}  {t['loop_fps']:6.1f}"
            f"  {t['ratio_loop_to_raw']:8.3f}  {t['sequential_fps']:12.1f}"
            f"  {t['ratio_sequential_to_raw']:14.3f}"
            for t in r["by_threads"]
        ]
    return "\n".join(lines)


__all__ = ["format_report", "run_bench"]
