"""The inbox stores: the same tests on the local disk and on a real S3-protocol server (moto)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from device.samples import SampleMeta
from training.ingest.errors import IngestError, SampleNotFound
from training.ingest.store import SampleRef, open_store
from training.ingest.store_local import LocalStore
from training.ingest.synthetic import make_jpeg, make_meta, variant

JPEG = make_jpeg(160, 120, target_bytes=8000)


def sample(n: int, device: str = "pi-a", ts: str = "2026-11-29T08:26:11.123Z"):
    jpeg = variant(JPEG, n)
    return SampleMeta.model_validate(make_meta(jpeg, device=device, ts=ts)), jpeg


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path):
    if request.param == "local":
        yield LocalStore(tmp_path / "inbox")
        return
    from training.ingest.store_s3 import S3Store

    s3 = request.getfixturevalue("s3_server")
    s = S3Store(s3.new_bucket(), "inbox", client=s3.client())
    yield s
    s.close()


def keys(store) -> set[str]:
    """Every key in the store (all files, temporary ones too)."""
    if isinstance(store, LocalStore):
        return {p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file()}
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket)
    return {o["Key"][len(store.prefix) :] for page in pages for o in page.get("Contents", [])}


def test_put_writes_the_documented_layout_once(store):
    store.check()
    meta, jpeg = sample(1)
    assert store.put(meta, jpeg) is True
    assert store.put(meta, jpeg) is False  # the same sample again: a duplicate, nothing written
    base = f"pi-a/2026-11-29/{meta.sample_id}"
    assert keys(store) == {f"{base}.jpg", f"{base}.json"}
    ref = SampleRef("pi-a", "2026-11-29", meta.sample_id)
    assert store.read_image(ref) == jpeg
    assert store.read_meta(ref) == meta
    assert store.contains(ref)


def test_listing_filters_by_device_and_date(store):
    stored = [
        sample(1, "pi-a", "2026-11-28T23:59:59.999Z"),
        sample(2, "pi-a", "2026-11-29T00:00:00.000Z"),
        sample(3, "pi-b", "2026-11-29T10:00:00.000Z"),
    ]
    for meta, jpeg in stored:
        assert store.put(meta, jpeg)
    assert store.devices() == ["pi-a", "pi-b"]
    assert store.dates("pi-a") == ["2026-11-28", "2026-11-29"]
    assert [r.sample_id for r in store.refs(device="pi-a", date="2026-11-29")] == [
        stored[1][0].sample_id
    ]
    assert {r.device for r in store.refs(date="2026-11-29")} == {"pi-a", "pi-b"}
    everything = dict(store.samples())
    assert len(everything) == 3
    assert {m.sample_id for m in everything.values()} == {m.sample_id for m, _ in stored}


def test_an_image_without_its_sidecar_is_not_a_sample_and_is_completed(store):
    meta, jpeg = sample(4)
    ref = SampleRef.of(meta)
    store._write(ref.key("jpg"), jpeg)  # a crash between the JPEG and the sidecar
    assert list(store.refs()) == []
    assert store.put(meta, jpeg) is True  # the device's retry completes it
    assert list(store.refs()) == [ref]


def test_racing_uploads_of_one_sample_store_it_once(store):
    meta, jpeg = sample(5)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def put() -> None:
        barrier.wait()
        results.append(store.put(meta, jpeg))

    threads = [threading.Thread(target=put, name=f"put-{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len(keys(store)) == 2


@pytest.mark.parametrize(
    ("device", "date", "sample_id"),
    [
        ("..", "2026-11-29", "a" * 64),
        ("pi-a/..", "2026-11-29", "a" * 64),
        ("pi-a", "../2026", "a" * 64),
        ("pi-a", "2026-02-30", "a" * 64),
        ("pi-a", "2026-11-29", "../../etc/passwd"),
        ("pi-a", "2026-11-29", "A" * 64),
    ],
)
def test_reads_refuse_names_that_could_walk_out(store, device, date, sample_id):
    with pytest.raises(ValueError):
        store.read_image(SampleRef(device, date, sample_id))
    if sample_id == "a" * 64:  # the listing filters are checked too
        with pytest.raises(ValueError):
            list(store.refs(device=device, date=date))


def test_missing_sample_is_a_clear_error(store):
    with pytest.raises(SampleNotFound):
        store.read_meta(SampleRef("pi-a", "2026-11-29", "b" * 64))


def test_local_files_are_written_whole_and_the_sidecar_is_canonical(tmp_path: Path):
    store = LocalStore(tmp_path / "inbox")
    meta, jpeg = sample(6)
    store.put(meta, jpeg)
    folder = tmp_path / "inbox" / "pi-a" / "2026-11-29"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{meta.sample_id}.jpg", f"{meta.sample_id}.json"]
    )  # no temporary files left behind
    assert SampleMeta.model_validate(json.loads((folder / f"{meta.sample_id}.json").read_text()))


def test_open_store_picks_the_backend_and_refuses_other_urls(tmp_path: Path):
    assert isinstance(open_store(str(tmp_path / "x")), LocalStore)
    with pytest.raises(IngestError, match="only local folders and s3://"):
        open_store("ftp://host/inbox")
    with pytest.raises(IngestError, match="not s3://bucket"):
        open_store("s3://")


def test_s3_store_reports_a_missing_bucket(s3_server):
    from training.ingest.errors import StoreError
    from training.ingest.store_s3 import S3Store

    store = S3Store("no-such-bucket", client=s3_server.client())
    with pytest.raises(StoreError, match="no-such-bucket") as info:
        store.check()
    assert "create the bucket" in (info.value.hint or "")
