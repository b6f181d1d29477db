"""The field loop end to end, with real parts (issue 9): the device loop classifies the real
clip with sampling on, its uploader delivers to a real ingest server (``edgecam-train serve``,
uvicorn, in a subprocess: the ``ingest_server_factory`` fixture), and the inbox, on the local
disk or on a real S3-protocol server (moto), holds exactly the samples the device took, with
valid sidecars. Then an outage: the server killed mid-upload and the device restarted while it
is down; when it is back every sample arrives, none is stored twice, the device outbox ends
empty.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from device.samples import SampleMeta

DEVICE = "test-pi"
WALKER = ["unicycle", "crutch", "ski"]
RULE = {"name": "people", "groups": ["walker"], "start_score": 0.2, "cooldown_s": 0.0}
CLOSED = {"enabled": False}


def device_config(
    write_config,
    tmp_path: Path,
    test_data: Path,
    url: str,
    sampling: dict,
    camera: dict | None = None,
    upload: dict | None = None,
    **sections,
) -> Path:
    """The clip looping as fast as inference allows (a file source drops no frame) unless
    ``camera`` says otherwise, sampling as given, upload to ``url`` with quick retries; state
    in tmp_path."""
    clip = {"name": "street", "source": str(test_data / "opencv" / "vtest.avi"), "loop": True}
    open_limits = {"enabled": True, "max_per_hour": 1000, "max_per_label_per_hour": 1000}
    return write_config(
        cameras=[{**clip, **(camera or {})}],
        sampling={**open_limits, **sampling},
        upload={
            "enabled": True,
            "url": url,
            "retry_min_s": 0.2,
            "retry_max_s": 1.0,
            "timeout_s": 10,
            "outbox": {"dir": str(tmp_path / "samples")},
            **(upload or {}),
        },
        **sections,
    )


class Device:
    """The real Runner in a thread, stopped like SIGTERM would (request_stop)."""

    def __init__(self, config: Path):
        from device.config import load_config
        from device.runner import Runner

        self.runner = Runner(load_config(config))
        self.status: int | None = None
        self.thread = threading.Thread(target=self._run, name="test-device", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.status = self.runner.run()

    def metrics(self) -> dict[str, Any]:
        return self.runner.metrics()

    def stop(self) -> None:
        self.runner.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive() and self.status == 0


def written(device: Device) -> int:
    return device.metrics()["sampling"]["written"]


def pending(device: Device) -> int:
    return device.metrics()["upload"]["pending"]


def open_inbox(kind: str, server, s3) -> Any:
    """The ingest server's own store over its inbox, to read what it holds."""
    if kind == "s3":
        from training.ingest.store_s3 import S3Store

        bucket, _, prefix = server.inbox.removeprefix("s3://").partition("/")
        return S3Store(bucket, prefix, client=s3.client())
    from training.ingest.store_local import LocalStore

    return LocalStore(Path(server.inbox))


def inbox_samples(store) -> dict[str, tuple[SampleMeta, bytes]]:
    """sample_id -> (sidecar, JPEG) of every sample in the inbox; each checked: the sidecar
    validates (the store reads it through SampleMeta) and the JPEG's sha256 is its id."""
    out = {}
    for ref, meta in store.samples():
        jpeg = store.read_image(ref)
        assert hashlib.sha256(jpeg).hexdigest() == meta.sample_id == ref.sample_id
        assert (ref.device, ref.date) == (meta.device, meta.ts[:10])
        out[meta.sample_id] = (meta, jpeg)
    return out


@pytest.mark.parametrize("kind", ["local", "s3", "https"])
def test_device_samples_reach_the_inbox(
    kind, ingest_server_factory, write_config, tmp_path, test_data, wait_until, request
) -> None:
    """The local and the S3 inbox, and HTTPS verified against a private CA."""
    s3 = request.getfixturevalue("s3_server") if kind == "s3" else None
    tls = request.getfixturevalue("tls_certs") if kind == "https" else None
    if s3 is not None:
        server = ingest_server_factory(
            inbox=f"s3://{s3.new_bucket()}/inbox",
            env=s3.env,
            args=("--review-db", str(tmp_path / "review.sqlite")),  # kept on a local disk
        )
    else:
        server = ingest_server_factory(tls=tls)
    token_file = tmp_path / "upload.token"
    token_file.write_text(server.add_token(DEVICE) + "\n")
    token_file.chmod(0o600)
    server.start()
    sampling = {
        "low_confidence": {"below": 0.3, "max_per_hour": 4, "min_interval_s": 0},
        "flip": {"max_per_hour": 2, "min_interval_s": 0},
        "alerts": {"max_per_hour": 2},
        "small_margin": CLOSED,
        "near_threshold": CLOSED,
        "random": CLOSED,
    }
    alerts = {"label_groups": {"walker": WALKER}, "rules": [RULE], "snapshots": {"enabled": False}}
    upload = {"token_file": str(token_file)}
    if tls is not None:
        upload["ca_file"] = str(tls / "ca.crt")
    path = device_config(
        write_config, tmp_path, test_data, server.url, sampling, upload=upload, alerts=alerts
    )

    device = Device(path)
    try:
        wait_until(
            lambda: written(device) == 8 and pending(device) == 0, 60, what="8 samples delivered"
        )
        metrics = device.metrics()
    finally:
        device.stop()

    upload, policies = metrics["upload"], metrics["sampling"]["policies"]
    assert (upload["uploaded"], upload["duplicates"], upload["failures"]) == (8, 0, 0)
    assert upload["rejected"] == 0 and upload["state"] in ("idle", "uploading")
    inbox = inbox_samples(open_inbox(kind, server, s3))
    assert len(inbox) == 8
    taken = Counter({name: c["taken"] for name, c in policies.items() if c["taken"]})
    assert Counter(meta.policy for meta, _ in inbox.values()) == taken
    assert taken["low_confidence"] == 4 and taken["flip"] == 2
    assert taken["alert_start"] + taken["alert_best"] == 2
    for meta, _ in inbox.values():
        assert (meta.device, meta.camera) == (DEVICE, "street")
        assert meta.model.name == "mobilenet_v2_1.0_224_quant"
        assert (meta.event_id is not None) == meta.policy.startswith("alert_")
    if kind != "s3":  # the documented layout: INBOX/<device>/<date>/<sample_id>.jpg|.json
        root = Path(server.inbox)
        # (the server keeps its own files beside the device folders, e.g. review decisions)
        names = {p.relative_to(root).as_posix() for p in (root / DEVICE).rglob("*") if p.is_file()}
        layout = {f"{DEVICE}/{m.ts[:10]}/{m.sample_id}" for m, _ in inbox.values()}
        assert names == {f"{base}.{ext}" for base in layout for ext in ("jpg", "json")}
    assert not list((tmp_path / "samples").glob("*.jpg"))  # the device outbox is empty


def test_server_outage_and_device_restart_lose_nothing_and_store_nothing_twice(
    ingest_server_factory, write_config, tmp_path, test_data, wait_until, monkeypatch
) -> None:
    server = ingest_server_factory()
    monkeypatch.setenv("EDGECAM_UPLOAD_TOKEN", server.add_token(DEVICE))
    server.start()
    sampling = {  # 8 frames, at least 0.25 s apart: the uploads are spread out
        "low_confidence": {"below": 1.0, "max_per_hour": 8, "min_interval_s": 0.25},
        "small_margin": CLOSED,
        "flip": CLOSED,
        "random": CLOSED,
    }
    camera = {"realtime": True, "fps": 20}  # like a camera (and light on the CPU)
    path = device_config(write_config, tmp_path, test_data, server.url, sampling, camera)
    outbox = tmp_path / "samples"
    inbox = Path(server.inbox)

    def stored() -> set[str]:
        return {p.stem for p in (inbox / DEVICE).rglob("*.json")}

    def waiting() -> set[str]:
        return {p.stem for p in outbox.glob("*.json")} - {"sampling-budget"}

    first = Device(path)
    try:
        wait_until(lambda: stored(), 60, what="the first upload")
        server.stop(kill=True)  # mid-upload: the server dies, answers are lost
        wait_until(lambda: written(first) == 8, 60, what="all 8 samples taken")
        wait_until(lambda: first.metrics()["upload"]["failures"] >= 2, 30, what="failed tries")
        before = stored()
        expected = before | waiting()
        assert len(expected) == 8 and waiting()  # some delivered, the rest wait
        assert len(before) < 8
    finally:
        first.stop()

    second = Device(path)  # restarted while the server is down; it samples 8 frames more
    try:
        wait_until(lambda: second.metrics()["upload"]["failures"] >= 1, 30, what="a failed try")
        wait_until(
            lambda: written(second) + second.metrics()["sampling"]["duplicates"] == 8,
            60,
            what="the restarted device's 8 samples",
        )
        assert expected <= before | waiting()  # nothing waiting was lost in the restart
        expected = before | waiting()
        resent = waiting() & before  # the same JPEG again: stored once, answered "duplicate"
        server.start()
        wait_until(lambda: pending(second) == 0, 60, what="the outbox to empty")
        upload = second.metrics()["upload"]
    finally:
        second.stop()

    assert stored() == expected  # every sample arrived
    files = [p for p in (inbox / DEVICE).rglob("*") if p.is_file()]
    assert len(files) == 2 * len(expected)  # each once: a JPEG and a sidecar, no temporary file
    assert upload["duplicates"] == len(resent)
    assert upload["uploaded"] == len(expected - before)
    assert upload["rejected"] == 0 and not waiting()
    assert "no answer" in upload["last_error"]
    assert os.listdir(outbox) == ["sampling-budget.json"]
