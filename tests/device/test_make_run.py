"""`make run` works on a checkout: fetches the reference model (from EDGECAM_TEST_DATA here),
picks a camera or the sample clip, and prints results with no broker listening."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_make_run_prints_results_without_a_broker(test_data: Path) -> None:
    if shutil.which("make") is None or not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("needs make and the project venv (.venv, from `make install`)")
    env = dict(os.environ, EDGECAM_TEST_DATA=str(test_data))
    proc = subprocess.run(
        ["make", "-s", "run", "EXTRA_ARGS=--frames 3 --mqtt-port 1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[cam0 #" in proc.stdout  # results printed
    assert "not reachable" in proc.stderr  # no broker on port 1: logged, and it went on
    assert (REPO / "models" / "mobilenet_v2_1.0_224_quant.tflite").is_file()
