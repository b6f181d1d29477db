"""``edgecam-train merge``: accepted field samples into an ImageFolder, a field test split of
their own, and the leaks and conflicts it refuses (real inbox, real review database, real
data checks; no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CLASSES = ("0", "1", "2")


def _cells(digits_png: Path) -> np.ndarray:
    import cv2

    grid = cv2.imread(str(digits_png), cv2.IMREAD_GRAYSCALE)
    return grid.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3)


@pytest.fixture
def small_data(digits_png: Path, tmp_path: Path) -> Path:
    """DATA/<digit>/*.jpg, 30 per class (columns 0-29), and its split manifest (10 % test)."""
    import cv2

    from training.dataset import scan_dataset
    from training.splits import default_manifest_path, resolve_split

    cells = _cells(digits_png)
    data = tmp_path / "data"
    for label in CLASSES:
        folder = data / label
        folder.mkdir(parents=True)
        for col in range(30):
            cv2.imwrite(str(folder / f"c{col:02d}.jpg"), cells[int(label) * 5, col])
    resolve_split(scan_dataset(data), default_manifest_path(data))
    return data


def _review(inbox: Path, decisions: list[tuple[list[str], str, str | None]]) -> None:
    from training.ingest.store import open_store
    from training.review.db import ReviewDB
    from training.review.index import index_new

    with ReviewDB(inbox / "review.sqlite") as db:
        index_new(open_store(str(inbox)), db)
        for keys, action, label in decisions:
            db.decide(keys, action, "tester", label, via="test")


def _field(put, inbox: Path, cells: np.ndarray, label: str, columns: range) -> list[str]:
    other = CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)]
    return [
        put(inbox, cells[int(label) * 5 + 1, col], [(label, 0.7), (other, 0.2)]) for col in columns
    ]


def _manifest(data: Path) -> dict[str, dict]:
    items = json.loads((data / "edgecam-split.json").read_text())["items"]
    return {it["path"]: it for it in items}


def test_merge_copies_accepted_samples_and_keeps_a_field_test_split(
    small_data: Path, digits_png: Path, tmp_path: Path, put_field_sample, capsys
) -> None:
    from training.cli import main

    cells = _cells(digits_png)
    inbox = tmp_path / "inbox"
    keys = {
        label: _field(put_field_sample, inbox, cells, label, range(40, 56)) for label in CLASSES
    }
    test_before = {p: it for p, it in _manifest(small_data).items() if it["split"] == "test"}
    _review(
        inbox,
        [
            (keys["0"][:12] + keys["1"][:12], "accept", None),
            (keys["2"][:12], "relabel", "2"),  # the guess was right: recorded as accept
            (keys["2"][12:14], "relabel", "bird"),  # a new class
            (keys["0"][12:], "reject", None),
        ],
    )
    assert main(["merge", str(inbox), str(small_data), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["accepted"] == 12 * 3 + 2 and not report["refused"]
    counts = report["counts"]
    field_test = counts["field_test"]
    assert (
        sum(field_test.values())
        + sum(counts.get("train", {}).values())
        + sum(counts.get("val", {}).values())
        == 38
    )
    assert field_test["0"] == field_test["1"] == field_test["2"] == 3  # 25 % of 12
    assert "into the field test set" in out

    manifest = _manifest(small_data)
    field_items = {p: it for p, it in manifest.items() if "/field-" in p}
    assert len(field_items) == 38 - sum(field_test.values())
    assert {it["split"] for it in field_items.values()} <= {"train", "val"}
    assert any(it["split"] == "val" for it in field_items.values())
    assert {p: it for p, it in manifest.items() if it["split"] == "test"} == test_before
    for path, it in field_items.items():
        assert (small_data / path).is_file() and path.split("/")[0] == it["label"]
    assert sorted(p.name for p in (small_data / "bird").iterdir())[0].startswith("field-")
    rejected = {k.rsplit("/", 1)[1][:16] for k in keys["0"][12:]}
    copied = {p.name for p in small_data.rglob("field-*.jpg")}
    assert not any(r in name for r in rejected for name in copied)

    ft_dir = small_data.parent / "data.field-test"
    ft = json.loads((ft_dir / "edgecam-field-test.json").read_text())["items"]
    assert len(ft) == sum(field_test.values())
    assert all((ft_dir / it["path"]).is_file() for it in ft)
    assert not {it["sha256"] for it in ft} & {it["sha256"] for it in manifest.values()}

    # a second merge copies nothing; a new acceptance is added alone
    _review(inbox, [(keys["0"][12:13], "accept", None)])
    assert main(["merge", str(inbox), str(small_data), "--json", str(tmp_path / "m2.json")]) == 0
    again = json.loads((tmp_path / "m2.json").read_text())
    assert len(again["placed"]) == 1 and len(again["skipped"]) == 38


def test_merge_refuses_a_sample_whose_image_is_in_the_test_split(
    small_data: Path, digits_png: Path, tmp_path: Path, put_field_sample, capsys
) -> None:
    import cv2

    from training.cli import main

    inbox = tmp_path / "inbox"
    manifest = _manifest(small_data)
    test_path = next(
        p for p, it in manifest.items() if it["split"] == "test" and it["label"] == "1"
    )
    leaked = put_field_sample(inbox, (small_data / test_path).read_bytes(), [("1", 0.9)])
    # the same test picture re-encoded (other bytes): the data checks catch it as a near copy
    gray = cv2.imread(str(small_data / test_path), cv2.IMREAD_GRAYSCALE)
    near = put_field_sample(inbox, gray, [("1", 0.8)], quality=80)
    train_path = next(
        p for p, it in manifest.items() if it["split"] == "train" and it["label"] == "2"
    )
    conflict = put_field_sample(inbox, (small_data / train_path).read_bytes(), [("2", 0.6)])
    fine = _field(put_field_sample, inbox, _cells(digits_png), "0", range(60, 64))
    _review(inbox, [([leaked, near, *fine], "accept", None), ([conflict], "relabel", "0")])

    code = main(["merge", str(inbox), str(small_data), "--field-test-fraction", "0",
                 "--json", str(tmp_path / "m.json")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1  # something was refused
    report = json.loads((tmp_path / "m.json").read_text())
    refused = {r["key"]: r for r in report["refused"]}
    assert refused[leaked]["reason"] == "leak"
    assert f"already in the test split as {test_path}" in refused[leaked]["message"]
    assert f"REFUSED {leaked} (1): its image is already in the test split" in out
    assert refused[near]["reason"] == "leak" and "test" in refused[near]["message"]
    assert refused[conflict]["reason"] == "label_conflict"
    assert train_path in refused[conflict]["message"]
    copied = sorted(p.name for p in small_data.rglob("field-*.jpg"))
    assert len(copied) == len(fine) and all(
        f"-{k.rsplit('/', 1)[1][:16]}.jpg" in " ".join(copied) for k in fine
    )
    assert not any(leaked.rsplit("/", 1)[1][:16] in name for name in copied)
    assert not any(near.rsplit("/", 1)[1][:16] in name for name in copied)
    paths = _manifest(small_data)
    assert sum("/field-" in p for p in paths) == len(fine)  # the manifest agrees with the disk


def test_merge_dry_run_changes_nothing(
    small_data: Path, digits_png: Path, tmp_path: Path, put_field_sample, capsys
) -> None:
    from training.cli import main

    inbox = tmp_path / "inbox"
    keys = _field(put_field_sample, inbox, _cells(digits_png), "2", range(70, 78))
    _review(inbox, [(keys, "accept", None)])
    before = (small_data / "edgecam-split.json").read_text()
    assert main(["merge", str(inbox), str(small_data), "--dry-run"]) == 0
    assert "would copy 6 into" in capsys.readouterr().out
    assert not list(small_data.rglob("field-*")) and not (tmp_path / "data.field-test").exists()
    assert (small_data / "edgecam-split.json").read_text() == before
