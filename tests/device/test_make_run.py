"""`make run` works on a fresh checkout: fetches the reference model (from EDGECAM_TEST_DATA
here), picks a camera or the sample clip, and prints results with no broker listening.

It runs in a scratch folder that stands in for the checkout (the Makefile linked there, the
project's venv and example config named), so the test writes nothing into the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_make_run_prints_results_without_a_broker(tmp_path: Path, test_data: Path) -> None:
    if shutil.which("make") is None or not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("needs make and the project venv (.venv, from `make install`)")
    (tmp_path / "Makefile").symlink_to(REPO / "Makefile")
    env = dict(os.environ, EDGECAM_TEST_DATA=str(test_data))
    proc = subprocess.run(
        [
            "make",
            "-s",
            "run",
            f"VENV={REPO / '.venv'}",
            f"CONFIG={REPO / 'config' / 'device.example.yaml'}",
            "EXTRA_ARGS=--frames 3 --mqtt-port 1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[cam0 #" in proc.stdout  # results printed
    assert "not reachable" in proc.stderr  # no broker on port 1: logged, and it went on
    assert (tmp_path / "models" / "mobilenet_v2_1.0_224_quant.tflite").is_file()  # fetched
