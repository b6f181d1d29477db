"""``make bench-ingest``: uploads per second the ingest server sustains, and its peak memory.

A real ``edgecam-train serve`` runs in its own process on a loopback port with a real tokens
file (one token per simulated device) and a local inbox in a temporary folder. N simulated
devices (default 50) each keep one HTTP/1.1 keep-alive connection and upload distinct samples
(a ~50 KB JPEG made distinct by a comment segment, and its sidecar) back to back. The load
client is lean on purpose (asyncio streams, requests assembled from bytes) so that on a small
machine the server, not the client, gets the CPU. Reported: uploads/s over the measured window
(after a warm-up), client-side latency p50/p95, the server's peak RSS (VmHWM) and CPU time per
upload; at the end the inbox is counted against the 201 answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from training.ingest.synthetic import make_jpeg, make_meta, variant
from training.ingest.tokens import add_token

BOUNDARY = "edgecam-bench"


@dataclass
class Load:
    measuring: bool = False
    stop: bool = False
    ok: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    counter: int = 0


def _request(host: str, token: str, jpeg: bytes, meta: dict) -> bytes:
    body = b"".join(
        [
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="s.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode(),
            jpeg,
            f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="meta"; filename="s.json"\r\n'
            "Content-Type: application/json\r\n\r\n".encode(),
            json.dumps(meta).encode(),
            f"\r\n--{BOUNDARY}--\r\n".encode(),
        ]
    )
    head = (
        f"POST /api/v1/samples HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _device(name: str, token: str, port: int, base: bytes, load: Load) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not load.stop:
            load.counter += 1
            jpeg = variant(base, load.counter)
            request = _request(f"127.0.0.1:{port}", token, jpeg, make_meta(jpeg, device=name))
            start = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if not load.measuring:
                continue
            if status == 201:
                load.ok += 1
                load.latencies.append(time.perf_counter() - start)
            else:
                load.errors[status] = load.errors.get(status, 0) + 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _run_load(
    devices: dict[str, str], port: int, base: bytes, warmup: float, seconds: float
) -> tuple[Load, float]:
    load = Load()
    tasks = [
        asyncio.create_task(_device(name, token, port, base, load), name=f"bench-{name}")
        for name, token in devices.items()
    ]
    await asyncio.sleep(warmup)
    load.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    load.measuring = False
    elapsed = time.perf_counter() - started
    load.stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return load, elapsed


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the ingest server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the ingest server did not become healthy in time")


def run(devices: int, seconds: float, warmup: float, size: int, workdir: Path) -> dict:
    tokens = workdir / "tokens.txt"
    names = {f"bench-{i:03d}": "" for i in range(devices)}
    for name in names:
        names[name] = add_token(tokens, name)
    inbox = workdir / "inbox"
    port = _free_port()
    base = make_jpeg(640, 480, target_bytes=size)
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "serve", str(inbox), "--tokens", str(tokens),
         "--port", str(port), "--log-interval", "5", "--max-connections", str(devices + 16)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        rss_idle = _proc_status(proc.pid, "VmRSS")
        cpu_before = _cpu_seconds(proc.pid)
        load, elapsed = asyncio.run(_run_load(names, port, base, warmup, seconds))
        cpu = _cpu_seconds(proc.pid) - cpu_before
        peak = _proc_status(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    stored = sum(1 for _ in inbox.rglob("*.json"))
    lat = sorted(load.latencies) or [0.0]
    return {
        "devices": devices,
        "sample_bytes": len(base),
        "seconds": round(elapsed, 2),
        "uploads_per_s": round(load.ok / elapsed, 1),
        "uploads_ok": load.ok,
        "errors": load.errors,
        "latency_ms_p50": round(lat[len(lat) // 2] * 1000, 1),
        "latency_ms_p95": round(lat[int(len(lat) * 0.95)] * 1000, 1),
        "server_rss_idle_mb": round(rss_idle / 2**20, 1),
        "server_rss_peak_mb": round(peak / 2**20, 1),
        "server_cpu_ms_per_upload": round(cpu * 1000 / max(load.ok, 1), 2),
        "inbox_samples": stored,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ingest.bench", description=__doc__)
    parser.add_argument("--devices", type=int, default=50, help="simulated devices (50)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window (15)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured start (2)")
    parser.add_argument("--size", type=int, default=50_000, help="JPEG bytes, about (50000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgecam-bench-ingest-") as tmp:
        result = run(args.devices, args.seconds, args.warmup, args.size, Path(tmp))
    sys.stdout.write(
        f"ingest: {result['uploads_per_s']} uploads/s from {result['devices']} devices "
        f"({result['sample_bytes'] / 1000:.0f} KB JPEGs, {result['seconds']} s, "
        f"{result['cpus']} CPUs); latency p50 {result['latency_ms_p50']} ms, "
        f"p95 {result['latency_ms_p95']} ms; server RSS peak {result['server_rss_peak_mb']} MB "
        f"(idle {result['server_rss_idle_mb']} MB), {result['server_cpu_ms_per_upload']} ms CPU "
        f"per upload; errors {result['errors'] or 'none'}; inbox {result['inbox_samples']} samples\n"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
