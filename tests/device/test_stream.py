"""A network stream source (HTTP, served locally): live semantics and reconnect at stream end."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "device.cli"]


@pytest.fixture
def http_video(test_data: Path):
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(test_data / "opencv")
    )
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="http-video", daemon=True)
    thread.start()
    yield f"http://user:secret@127.0.0.1:{server.server_address[1]}/vtest.avi"
    server.shutdown()


def test_http_stream_reconnects_after_the_stream_ends(
    tmp_path, test_data, write_config, http_video
):
    coral = test_data / "coral"
    config = write_config(
        model={"path": str(coral / "mobilenet_v1_0.25_128_quant.tflite")},
        cameras=[{"name": "door", "source": http_video, "reconnect_max_s": 1}],
        console={"jsonl_path": str(tmp_path / "r.jsonl")},
        metrics={"interval": 1},
    )
    # The clip has 795 frames: 820 results are only reachable after a reconnect.
    proc = subprocess.run(
        [*CLI, "run", "--config", str(config), "--frames", "820"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped delivering frames; reconnecting" in proc.stderr
    assert "reconnected" in proc.stderr
    assert "secret" not in proc.stderr  # credentials in stream URLs are never logged
    assert "stream http://***@127.0.0.1" in proc.stderr
    results = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(results) == 820
    frames = [r["frame"] for r in results]
    assert frames == sorted(frames)  # frame counter keeps growing across the reconnect
