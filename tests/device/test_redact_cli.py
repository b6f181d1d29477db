"""`edgecam-device redact` through a subprocess: the loop's own redaction on image files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from device.preprocess import load_image

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "device.cli", "redact"]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def redact(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=ENV
    )


def test_redact_writes_redacted_jpegs_and_prints_the_faces(tmp_path: Path, test_data: Path) -> None:
    face, cat = test_data / "coral" / "face.jpg", test_data / "coral" / "cat.bmp"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((face.read_bytes())[:600])
    config = tmp_path / "device.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cameras": [{"name": "door"}],
                "privacy": {
                    "cameras": {"door": {"masks": [[[0, 0.8], [0.3, 0.8], [0.3, 1], [0, 1]]]}}
                },
            }
        )
    )
    model = test_data / "mediapipe" / "face_detection_full_range_sparse.tflite"
    out = tmp_path / "out"
    args = [str(face), str(cat), str(broken), "--out", str(out), "--json", "--model", str(model)]
    proc = redact(*args, "--config", str(config), "--camera", "door", "--method", "pixelate")
    assert proc.returncode == 1, proc.stderr  # one of three images could not be read
    assert f"error: {broken}" in proc.stderr and "Traceback" not in proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(r["image"]).name for r in records] == ["face.jpg", "cat.bmp"]
    found, none = records
    assert none["faces"] == [] and Path(none["output"]) == out / "cat.jpg"
    assert len(found["faces"]) == 4 and all(f["score"] >= 0.5 for f in found["faces"])
    assert found["redaction"]["method"] == "pixelate" and found["redaction"]["masks"] == 1
    # the output: faces changed, the mask black, everything else as it was (JPEG noise)
    before = load_image(face).astype(int)
    after = load_image(found["output"]).astype(int)
    diff = np.abs(after - before).mean(axis=2)
    away = np.ones(diff.shape, bool)
    for f in found["faces"]:
        x0, y0, x1, y1 = f["box"]
        assert diff[y0:y1, x0:x1].mean() > 8, f
        w, h = x1 - x0, y1 - y0
        away[max(0, y0 - h // 2) : y1 + h // 2, max(0, x0 - w // 2) : x1 + w // 2] = False
    away[int(0.8 * 355) - 8 :, : int(0.3 * 512) + 8] = False  # the mask's corner
    assert diff[away].mean() < 2.0
    assert after[int(0.8 * 355) + 8 : -8, 8 : int(0.3 * 512) - 8].max() <= 6  # inside the mask

    # plain text, the short range model, a threshold: the two faces in front
    short = test_data / "mediapipe" / "face_detection_short_range.tflite"
    text = redact(str(face), "--out", str(out), "--model", str(short), "--min-score", "0.6")
    assert text.returncode == 0, text.stderr
    assert "face.jpg -> " in text.stdout and ": 2 faces (face_detection_short_range@" in text.stdout
    assert text.stdout.count("  box ") == 2


def test_redact_without_a_detector_says_how_to_get_one(tmp_path: Path, test_data: Path) -> None:
    proc = redact(str(test_data / "coral" / "face.jpg"), "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: face detector not found: models/face_detection_full_range_sparse.tflite" in (
        proc.stderr
    )
    assert "fix: run `make models`" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.jpg"))
