"""Split manifests: stratified, deterministic, stable when images are added."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import pytest

from training.dataset import scan_dataset
from training.errors import DatasetError
from training.splits import hash_images, load_split, make_split, read_manifest, resolve_split


def _flat_digits(digits_dir: Path, dest: Path, columns: range) -> Path:
    """An unsplit ImageFolder (DATA/<digit>/) from some columns of the digits grid."""
    for src in sorted((digits_dir / "train").rglob("*.png")) + sorted(
        (digits_dir / "test").rglob("*.png")
    ):
        if int(src.stem.split("c")[1]) in columns:
            (dest / src.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / src.parent.name / src.name)
    return dest


def _assignments(manifest_path: Path) -> dict[str, str]:
    return {i["path"]: i["split"] for i in json.loads(manifest_path.read_text())["items"]}


def test_adding_images_never_moves_earlier_ones(digits_dir: Path, tmp_path: Path, capsys) -> None:
    from training.cli import main

    data = _flat_digits(digits_dir, tmp_path / "data", range(0, 100, 5))  # 100 per class
    assert main(["split", str(data), "-q"]) == 0
    manifest = data / "edgecam-split.json"
    first = _assignments(manifest)
    assert len(first) == 1000
    per_split = Counter(first.values())
    assert per_split == {"train": 800, "val": 100, "test": 100}
    for digit in range(10):  # stratified: exactly 10 % test and val in every class
        c = Counter(s for p, s in first.items() if p.startswith(f"{digit}/"))
        assert c == {"train": 80, "val": 10, "test": 10}

    assert main(["split", str(data), "-q"]) == 0  # idempotent
    assert _assignments(manifest) == first

    _flat_digits(digits_dir, data, range(1, 100, 5))  # 1,000 more images
    (data / "0" / "r00c000.png").unlink()  # and one removed
    assert main(["split", str(data), "-q"]) == 0
    second = _assignments(manifest)
    assert len(second) == 1999
    for path, split in first.items():
        if path != "0/r00c000.png":
            assert second[path] == split, path
    new = Counter(s for p, s in second.items() if p not in first)
    assert new["test"] == pytest.approx(100, abs=10) and new["val"] == pytest.approx(100, abs=10)
    out = capsys.readouterr().out
    assert "manifest:" in out and "train" in out


def test_assignment_follows_content_not_names(digits_dir: Path, tmp_path: Path) -> None:
    data = _flat_digits(digits_dir, tmp_path / "data", range(0, 100, 10))
    scan = scan_dataset(data)
    m1 = make_split(scan, hash_images(scan), seed=3)
    # rename every file: the content hashes, hence the splits, stay
    for p in sorted(data.rglob("*.png")):
        p.rename(p.with_name("renamed_" + p.name))
    scan2 = scan_dataset(data)
    m2 = make_split(scan2, hash_images(scan2), previous=m1)
    by_hash1 = {i.sha256: i.split for i in m1.items}
    assert {i.sha256: i.split for i in m2.items} == by_hash1
    # and a fresh split with the same seed is identical (deterministic)
    m3 = make_split(scan2, hash_images(scan2), seed=3)
    assert {i.sha256: i.split for i in m3.items} == by_hash1


def test_presplit_dataset_keeps_its_folders_and_carves_val(
    digits_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "digits"
    shutil.copytree(digits_dir, data, ignore=shutil.ignore_patterns("edgecam-split.json"))
    manifest_path = tmp_path / "split.json"
    scan = scan_dataset(data)
    assert scan.presplit and scan.labels == [str(d) for d in range(10)]
    m = resolve_split(scan, manifest_path)
    split = load_split(manifest_path)
    assert all(p.parent.parent.name == "test" for p, _ in split["test"])
    assert len(split["test"]) == 2500 and len(split["val"]) == 250 and len(split["train"]) == 2250
    assert m.presplit and read_manifest(manifest_path).dataset_hash == m.dataset_hash
    first = _assignments(manifest_path)
    # new images in train/ and test/: old ones stay where they were, test stays test
    for d in range(3):
        for split_name in ("train", "test"):
            src = data / split_name / str(d)
            for i, p in enumerate(sorted(src.glob("*.png"))[:20]):
                img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
                img[0, 0] = 255 - img[0, 0]  # a new image (new content hash)
                cv2.imwrite(str(src / f"new{i}.png"), img)
    shutil.copyfile(data / "test/9/r45c050.png", data / "train/9/r45c050_again.png")
    resolve_split(scan_dataset(data), manifest_path)
    second = _assignments(manifest_path)
    assert all(second[p] == s for p, s in first.items())
    assert second["train/9/r45c050_again.png"] in ("train", "val")  # the folder decides
    new = [p for p in second if "/new" in p]
    assert len(new) == 120
    assert all(second[p] == "test" for p in new if p.startswith("test/"))
    assert all(second[p] in ("train", "val") for p in new if p.startswith("train/"))


def test_split_errors_are_clear(tmp_path: Path, capsys) -> None:
    from training.cli import main

    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "dog").mkdir()
    (tmp_path / "data" / "dog" / "a.png").write_bytes(b"x")
    assert main(["split", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'cat'" in err[0] and "no images" in err[0]
    assert "Traceback" not in err[0]

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_split(bad)
    with pytest.raises(DatasetError, match="not found"):
        load_split(tmp_path / "missing.json")
