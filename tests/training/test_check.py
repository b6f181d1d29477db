"""`edgecam-train check` on a copy of the digits with planted problems, and `--fix`."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import pytest


def _plant(data: Path) -> dict[str, str]:
    """Plant one of each problem; return {what: relative path}."""
    planted = {}
    # a truncated JPEG (a real digit, cut off halfway)
    img = cv2.imread(str(data / "train/3/r15c000.png"))
    ok, jpg = cv2.imencode(".jpg", cv2.resize(img, (80, 80)), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    (data / "train/3/truncated.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    planted["truncated"] = "train/3/truncated.jpg"
    # a text file with an image extension
    (data / "train/5/notes.png").write_text("shopping list: milk, eggs\n")
    planted["not_an_image"] = "train/5/notes.png"
    # an exact duplicate within a class
    shutil.copyfile(data / "train/1/r05c010.png", data / "train/1/r05c010 copy.png")
    planted["duplicate"] = "train/1/r05c010 copy.png"
    # a near-duplicate under another class: resized 2x and re-encoded as JPEG
    two = cv2.imread(str(data / "train/2/r12c020.png"))
    ok, jpg = cv2.imencode(".jpg", cv2.resize(two, (40, 40)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    (data / "train/8/scan_0001.jpg").write_bytes(jpg.tobytes())
    planted["near_duplicate"] = "train/8/scan_0001.jpg"
    # a test image leaked into train
    shutil.copyfile(data / "test/4/r22c077.png", data / "train/4/r22c077_leak.png")
    planted["leak"] = "train/4/r22c077_leak.png"
    return planted


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_check_finds_planted_problems_and_fix_quarantines_them(
    digits_copy: Path, tmp_path: Path, capsys
) -> None:
    from training.cli import main

    planted = _plant(digits_copy)
    before = _files(digits_copy)
    out = tmp_path / "check.json"
    assert main(["check", str(digits_copy), "--json", str(out), "-q"]) == 1  # errors found
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["images"] == 5005 and report["presplit"] is True
    assert report["counts"]["test"]["4"] == 250 and report["counts"]["train"]["4"] == 251

    def finding(kind: str, path: str) -> dict:
        hits = [f for f in report["findings"] if f["kind"] == kind and path in f["paths"]]
        assert hits, f"no {kind} finding for {path}; summary {report['summary']}"
        return hits[0]

    f = finding("unreadable", planted["truncated"])
    assert f["severity"] == "error" and "truncated" in f["message"]
    f = finding("unreadable", planted["not_an_image"])
    assert "not an image" in f["message"]
    f = finding("exact_duplicate", planted["duplicate"])
    assert set(f["paths"]) == {"train/1/r05c010.png", planted["duplicate"]}
    f = finding("label_conflict", planted["near_duplicate"])
    assert set(f["paths"]) == {"train/2/r12c020.png", planted["near_duplicate"]}
    f = finding("leak", planted["leak"])
    assert set(f["paths"]) == {"test/4/r22c077.png", planted["leak"]}
    assert f["fix_moves"] == [planted["leak"]]  # the test copy stays
    assert "[error] leak" in text and "[error] label_conflict" in text

    quarantine = tmp_path / "quarantine"
    assert main(["check", str(digits_copy), "--fix", "--quarantine", str(quarantine), "-q"]) == 0
    after = _files(digits_copy)
    moved = _files(quarantine)
    for rel in (
        planted["truncated"],
        planted["not_an_image"],
        planted["leak"],
        planted["near_duplicate"],
        "train/2/r12c020.png",
    ):
        assert rel not in after and rel in moved
        reason = (quarantine / (rel + ".reason.txt")).read_text()
        assert "problem:" in reason and "to restore:" in reason
    assert len({"train/1/r05c010.png", planted["duplicate"]} & after) == 1  # one copy kept
    assert "test/4/r22c077.png" in after
    # never deletes: every file is either still in the data or in the quarantine
    images_moved = {m for m in moved if not m.endswith(".reason.txt") and m != "quarantine.jsonl"}
    assert before == after | images_moved
    # what is left has no errors
    assert main(["check", str(digits_copy), "--json", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["errors"] == 0


def test_check_reports_formats_sizes_and_colour_modes(tmp_path: Path) -> None:
    from PIL import Image

    from training.check import run_check

    data = tmp_path / "data"
    for label in ("cat", "dog"):
        (data / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (64, 48), (40 * i, 10, 200 if label == "cat" else 20)).save(
                data / label / f"{i}.jpg"
            )
    Image.new("RGB", (64, 48), (1, 2, 3)).save(data / "cat" / "really_png.jpg", format="PNG")
    Image.new("RGB", (8, 8), (9, 99, 199)).save(data / "dog" / "tiny.png")
    Image.new("RGBA", (64, 48), (5, 6, 7, 100)).save(data / "dog" / "alpha.png")
    (data / "dog" / "readme.txt").write_text("not an image")
    (data / "empty").mkdir()
    # a decompression bomb: a PNG whose header declares 30000 x 30000 (refused before decoding)
    bomb = data / "cat" / "bomb.png"
    Image.new("RGB", (64, 48)).save(bomb)
    header = bytearray(bomb.read_bytes())
    header[16:24] = struct.pack(">II", 30000, 30000)
    header[29:33] = struct.pack(">I", zlib.crc32(bytes(header[12:29])))
    bomb.write_bytes(bytes(header))
    report = run_check(data)
    kinds = {f.kind: f for f in report.findings}
    assert kinds["unreadable"].paths == ["cat/bomb.png"]
    assert "too large: 30000 x 30000 pixels (900.0 MP; the limit is 50 MP)" in (
        kinds["unreadable"].message
    )
    assert "cat/really_png.jpg" in kinds["wrong_format"].paths
    assert kinds["too_small"].paths == ["dog/tiny.png"]
    assert any("alpha" in f.message for f in report.findings if f.kind == "color_mode")
    assert kinds["ignored_file"].paths == ["dog/readme.txt"]
    assert kinds["empty_class"].severity == "error"
    assert report.counts["all"] == {"cat": 8, "dog": 8, "empty": 0}


@pytest.mark.parametrize("argv", [["check", "{missing}"], ["split", "{missing}"]])
def test_missing_data_folder_is_one_line(argv: list[str], tmp_path: Path, capsys) -> None:
    from training.cli import main

    missing = tmp_path / "nope"
    assert main([a.format(missing=missing) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"edgecam-train: error: data folder not found: {missing}"]
