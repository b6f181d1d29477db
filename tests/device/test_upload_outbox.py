"""The sample outbox on disk: bounds drop the oldest and count, restarts keep what waits,
incomplete samples are cleaned up, refused ones are moved aside (bounded)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from device.upload.outbox import SampleOutbox


def sample(n: int, size: int = 1000) -> tuple[str, bytes, bytes]:
    jpeg = n.to_bytes(4, "big") * (size // 4)
    sid = hashlib.sha256(jpeg).hexdigest()
    return sid, jpeg, json.dumps({"sample_id": sid}).encode()


def fill(box: SampleOutbox, ns: range, size: int = 1000) -> list[str]:
    ids = []
    for n in ns:
        sid, jpeg, meta = sample(n, size)
        box.put(sid, jpeg, meta)
        ids.append(sid)
    return ids


def files(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_file()}


def test_count_bound_drops_oldest_first_and_counts(tmp_path: Path) -> None:
    box = SampleOutbox(tmp_path / "samples", max_samples=5, max_mb=100)
    ids = fill(box, range(8))
    assert box.stats()["pending"] == 5 and box.dropped == 3
    assert box.oldest().sample_id == ids[3]
    assert files(tmp_path / "samples") == {f"{i}.{e}" for i in ids[3:] for e in ("jpg", "json")}


def test_size_bound_drops_oldest_first_and_counts(tmp_path: Path) -> None:
    box = SampleOutbox(tmp_path / "s", max_samples=1000, max_mb=10_000 / 1048576)
    ids = fill(box, range(12), size=2000)  # each about 2.1 kB
    stats = box.stats()
    assert stats["pending"] == 4 and box.dropped == 8
    assert stats["pending_kb"] * 1024 <= 10_000
    assert [p for p in ids if (tmp_path / "s" / f"{p}.json").exists()] == ids[8:]


def test_restart_keeps_order_and_cleans_incomplete_samples(tmp_path: Path) -> None:
    root = tmp_path / "samples"
    box = SampleOutbox(root)
    ids = fill(box, range(3))
    for n, sid in enumerate(ids):  # distinct, ordered times, as after minutes of sampling
        os.utime(root / f"{sid}.json", (1000 + n, 1000 + n))
    # a crash while writing: a JPEG without its sidecar, and half-written temporary files
    cut, jpeg, _ = sample(99)
    (root / f"{cut}.jpg").write_bytes(jpeg)
    (root / f"{cut}.json.tmp").write_bytes(b'{"sample')
    (root / "notes.txt").write_text("left alone")
    again = SampleOutbox(root)
    assert again.stats()["pending"] == 3
    assert again.oldest().sample_id == ids[0]
    assert again.cleaned == 2
    assert not (root / f"{cut}.jpg").exists() and not (root / f"{cut}.json.tmp").exists()
    assert (root / "notes.txt").exists()
    assert again.read(ids[0]) == (sample(0)[1], sample(0)[2])
    again.remove(ids[0])
    assert again.oldest().sample_id == ids[1] and again.delivered == 1
    assert SampleOutbox(root, max_samples=1).stats()["pending"] == 1  # smaller bounds apply


def test_the_same_jpeg_is_one_sample(tmp_path: Path) -> None:
    box = SampleOutbox(tmp_path / "s")
    sid, jpeg, meta = sample(1)
    assert box.put(sid, jpeg, meta)
    assert not box.put(sid, jpeg, meta)
    assert box.stats()["pending"] == 1


def test_rejected_samples_are_moved_aside_with_the_answer_and_bounded(tmp_path: Path) -> None:
    root = tmp_path / "s"
    box = SampleOutbox(root, max_rejected=2)
    ids = fill(box, range(4))
    for n, sid in enumerate(ids[:3]):
        box.reject(sid, {"status": 400, "error": f"bad sidecar {n}", "fix": "..."})
        os.utime(root / "rejected" / f"{sid}.answer.json", (1000 + n, 1000 + n))
    assert box.rejected == 3 and box.stats()["pending"] == 1
    aside = root / "rejected"
    kept = sorted(p.name for p in aside.iterdir())
    assert kept == sorted(f"{i}.{e}" for i in ids[1:3] for e in ("jpg", "json", "answer.json"))
    assert json.loads((aside / f"{ids[2]}.answer.json").read_text())["error"] == "bad sidecar 2"
    assert SampleOutbox(root).stats()["pending"] == 1  # rejected/ is not waiting
