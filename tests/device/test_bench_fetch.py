"""`edgecam-device bench` reports its figures; `make models` fetching is sha256-checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device.bench import format_report
from device.errors import EdgecamError
from device.fetch import ASSETS, fetch, sha256_file

CLI = [sys.executable, "-m", "device.cli"]


def bench(test_data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`edgecam-device bench --json` with the small Coral model on the sample clip, 1 thread."""
    model = test_data / "coral" / "mobilenet_v1_0.25_128_quant.tflite"
    clip = test_data / "opencv" / "vtest.avi"
    cmd = [
        *CLI,
        "bench",
        "--model",
        str(model),
        "--source",
        str(clip),
        "--threads",
        "1",
        "--json",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_bench_json_reports_all_figures(test_data: Path) -> None:
    proc = bench(test_data, "--frames", "40")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert (
        r["loop"]["results"] == 40
        and r["sequential"]["results"] == 40
        and r["raw_invoke"]["invokes"] == 40
    )
    for rate in (r["raw_invoke"]["rate_fps"], r["loop"]["rate_fps"], r["sequential"]["rate_fps"]):
        assert rate > 0
    assert r["ratio_loop_to_raw"] == pytest.approx(
        r["loop"]["rate_fps"] / r["raw_invoke"]["rate_fps"]
    )
    assert r["loop"]["latency_ms"]["p95"] >= r["loop"]["latency_ms"]["p50"] > 0
    assert r["first_result_s"] > 0
    assert r["peak_rss_mb"] > 10 and r["memory_mb"]["total"] > 10
    assert r["loop"]["dropped"] == 0  # a file at full speed loses no frame


def test_fetch_copies_and_checks(tmp_path: Path, test_data: Path) -> None:
    dest = tmp_path / "models"
    fetch(dest, test_data)
    for asset in ASSETS:
        assert sha256_file(dest / asset.name) == asset.sha256
    fetch(dest, test_data)  # idempotent: already present


def test_fetch_rejects_corrupt_copy(tmp_path: Path, test_data: Path) -> None:
    fake = tmp_path / "data"
    shutil.copytree(test_data / "coral", fake / "coral")
    shutil.copytree(test_data / "opencv", fake / "opencv")
    (fake / "coral" / "imagenet_labels.txt").chmod(0o644)
    (fake / "coral" / "imagenet_labels.txt").write_text("tampered\n")
    with pytest.raises(EdgecamError, match=r"imagenet_labels\.txt .* has sha256"):
        fetch(tmp_path / "models", fake)
    assert not (tmp_path / "models" / "imagenet_labels.txt").exists()  # nothing half-written kept
    assert not list((tmp_path / "models").glob(".*"))


def test_bench_realtime_paces_the_shipped_loop_like_a_camera(test_data: Path) -> None:
    # --realtime: the loop phase runs the camera pipeline with the file paced at its frame
    # rate (latest-frame slot); its rate is a figure for `make bench`, not asserted here.
    proc = bench(test_data, "--frames", "12", "--realtime")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["realtime"] is True
    assert r["loop"]["results"] == 12 and r["loop"]["dropped"] >= 0
    assert "paced in real time" in format_report(r)


def test_bench_reports_thread_counts_side_by_side(test_data: Path) -> None:
    proc = bench(test_data, "--frames", "20", "--rounds", "2", "--thread-counts", "1", "2")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["rounds"] == 2 and "best of 2 rounds" in format_report(r)
    rows = r["by_threads"]
    assert [row["threads"] for row in rows] == [1, 2] and r["threads"] == 1
    for row in rows:
        assert row["raw_invoke_fps"] > 0 and row["loop_fps"] > 0 and row["sequential_fps"] > 0
        assert row["ratio_loop_to_raw"] == pytest.approx(
            row["loop_fps"] / row["raw_invoke_fps"], rel=0.01
        )
    assert "by interpreter threads" in format_report(r)


def test_bench_motion_reports_cpu_with_and_without_gating(test_data: Path) -> None:
    # a short clip (3 s still, 30 frames of people, 3 s still) and the small model: the
    # figures are for `make bench-motion`; here the report's shape and counts
    labels = str(test_data / "coral" / "imagenet_labels.txt")
    proc = bench(
        test_data, "--motion", "--still-s", "3", "--moving-frames", "30", "--labels", labels
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["clip"]["frames"] == 90 and r["clip"]["parts"]["moving"] == [30, 60]
    ungated, gated = r["ungated"], r["gated"]
    assert ungated["classified"] == ungated["frames"] == gated["frames"] == 90
    assert gated["classified"] < 70 and gated["motion"]["skipped"] == 90 - gated["classified"]
    assert gated["motion"]["heartbeats"] >= 0 and r["events_lost"] == []
    for run in (ungated, gated):
        assert run["cpu_s"] > 0 and set(run["cpu_s_per_video_min_by_part"]) == {
            "still_1",
            "moving",
            "still_2",
        }
    from device.motion_bench import format_motion_report

    assert "every ungated alert event also raised with gating: yes" in format_motion_report(r)
