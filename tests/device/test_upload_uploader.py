"""The uploader against a real HTTP(S) server (http.server, in this test): what each answer does
to a waiting sample, backoff, a wrong token, a lost network, a private CA, a stop mid-request."""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hashlib
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from device.alerts.snapshots import encode_jpeg
from device.samples import SampleMeta, sample_id
from device.upload.config import UploadConfig
from device.upload.outbox import SampleOutbox
from device.upload.uploader import Uploader

TOKEN = "tok-" + "a1" * 20


def make_sample(n: int) -> tuple[str, bytes, bytes]:
    pixels = np.random.default_rng(n).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    jpeg = encode_jpeg(pixels)
    sid = sample_id(jpeg)
    meta = SampleMeta.model_validate(
        {
            "sample_id": sid,
            "device": "test-pi",
            "camera": "street",
            "ts": "2026-11-29T08:26:11.123Z",
            "model": {"name": "m", "version": "1", "sha256": "0" * 64, "variant": "int8"},
            "top": [{"label": "cat", "index": 1, "score": 0.3}],
            "policy": "low_confidence",
        }
    )
    return sid, jpeg, json.dumps(meta.to_json()).encode()


class IngestStub(ThreadingHTTPServer):
    """A minimal ingest server: the v1 upload API, strict about the request, plus a script of
    canned answers (status, JSON body) given before the real handling."""

    daemon_threads = True

    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", port), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.token = TOKEN
        self.stored: dict[str, tuple[bytes, dict]] = {}
        self.script: list[tuple[int, dict]] = []
        self.requests = 0
        self.hold: threading.Event | None = None  # a request waits on it when set
        self.close_quietly = False  # close each connection after answering, unannounced
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def __enter__(self) -> IngestStub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.hold is not None:
            self.hold.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: IngestStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        # like a keep-alive timeout: the client learns it on its next request
        self.close_connection = self.server.close_quietly

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        srv = self.server
        srv.requests += 1
        if srv.hold is not None:
            srv.hold.wait(30)
        if srv.script:
            return self.answer(*srv.script.pop(0))
        if self.path != "/api/v1/samples":
            return self.answer(404, {"error": "not found"})
        if self.headers.get("Authorization") != f"Bearer {srv.token}":
            return self.answer(401, {"error": "invalid token", "fix": "check the token"})
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        parts = {p.get_param("name", header="content-disposition"): p for p in form.iter_parts()}
        image, meta_part = parts["image"], parts["meta"]
        assert image.get_content_type() == "image/jpeg"
        assert meta_part.get_content_type() == "application/json"
        jpeg = image.get_payload(decode=True)
        meta = SampleMeta.model_validate_json(meta_part.get_payload(decode=True)).to_json()
        assert image.get_filename() == f"{meta['sample_id']}.jpg"
        if hashlib.sha256(jpeg).hexdigest() != meta["sample_id"]:
            return self.answer(400, {"error": "sample_id is not the sha256 of the image"})
        if meta["sample_id"] in srv.stored:
            return self.answer(200, {"sample_id": meta["sample_id"], "duplicate": True})
        srv.stored[meta["sample_id"]] = (jpeg, meta)
        return self.answer(201, {"sample_id": meta["sample_id"], "stored": True})


@pytest.fixture
def stub() -> Iterator[IngestStub]:
    with IngestStub() as server:
        yield server


def config(url: str, **kw) -> UploadConfig:
    return UploadConfig(
        **{"enabled": True, "url": url, "retry_min_s": 0.05, "retry_max_s": 0.2, "timeout_s": 5}
        | kw
    )


def uploader_for(box: SampleOutbox, url: str, token: str = TOKEN, **kw) -> Uploader:
    from pydantic import SecretStr

    return Uploader(config(url, **kw), box, SecretStr(token))


@contextlib.contextmanager
def running(box: SampleOutbox, url: str, **kw) -> Iterator[Uploader]:
    """An uploader thread for the block, stopped at its end."""
    up = uploader_for(box, url, **kw)
    up.start()
    try:
        yield up
    finally:
        up.stop()


def outbox_with(tmp_path: Path, n: int) -> tuple[SampleOutbox, list[str]]:
    box = SampleOutbox(tmp_path / "samples")
    ids = []
    for i in range(n):
        sid, jpeg, meta = make_sample(i)
        box.put(sid, jpeg, meta)
        ids.append(sid)
    return box, ids


def test_delivers_oldest_first_and_deletes_only_what_the_server_confirmed(
    tmp_path, stub, wait_until
) -> None:
    box, ids = outbox_with(tmp_path, 4)
    sid, jpeg, meta = make_sample(0)
    stub.stored[sid] = (jpeg, json.loads(meta))  # an earlier answer was lost: a duplicate
    stub.script = [(500, {"error": "disk full"}), (503, {"error": "busy"})]
    with running(box, f"http://127.0.0.1:{stub.port}") as up:
        wait_until(lambda: len(box) == 0, 20, what="the outbox to empty")
    assert set(stub.stored) == set(ids)
    for sid in ids:
        jpeg, meta = stub.stored[sid]
        assert jpeg == make_sample(ids.index(sid))[1] and meta["sample_id"] == sid
    m = up.metrics()
    assert (m["uploaded"], m["duplicates"], m["failures"]) == (3, 1, 2)
    assert "503" in m["last_error"] and m["rejected_by_error"] == {}
    assert not any((tmp_path / "samples").glob("*.json"))


def test_a_sample_the_server_refuses_for_good_is_moved_aside(tmp_path, stub, wait_until) -> None:
    box, ids = outbox_with(tmp_path, 2)
    stub.script = [(400, {"error": "sidecar: unknown key 'x'", "fix": "update the device"})]
    with running(box, f"http://127.0.0.1:{stub.port}") as up:
        wait_until(lambda: len(box) == 0, 20, what="the outbox to empty")
    assert list(stub.stored) == [ids[1]]
    aside = tmp_path / "samples" / "rejected"
    assert (aside / f"{ids[0]}.jpg").exists()
    assert json.loads((aside / f"{ids[0]}.answer.json").read_text())["status"] == 400
    assert up.metrics()["rejected_by_error"] == {"sidecar: unknown key 'x'": 1}
    assert box.stats()["rejected"] == 1


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_keeps_the_samples_is_logged_once_and_never_shown(
    tmp_path, stub, wait_until, caplog, status
) -> None:
    box, ids = outbox_with(tmp_path, 2)
    if status == 401:
        stub.token = "the-servers-other-token"
    else:
        stub.script = [(403, {"error": "token of device other-pi"})] * 6
    url = f"http://127.0.0.1:{stub.port}"
    with caplog.at_level(logging.DEBUG), running(box, url) as up:
        wait_until(lambda: up.failures >= 4, 20, what="four refused tries")
        assert len(box) == 2 and not stub.stored  # nothing deleted, nothing moved aside
        stub.token = TOKEN  # the operator fixes it
        wait_until(lambda: len(box) == 0, 20, what="delivery with the right token")
    assert set(stub.stored) == set(ids)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "token" in errors[0].getMessage()
    assert f"{status}" in errors[0].getMessage()
    assert TOKEN not in caplog.text
    assert any("takes samples again" in r.getMessage() for r in caplog.records)


def test_a_kept_alive_connection_the_server_closed_is_not_a_failure(
    tmp_path, stub, wait_until
) -> None:
    box, ids = outbox_with(tmp_path, 3)
    stub.close_quietly = True
    with running(box, f"http://127.0.0.1:{stub.port}") as up:
        wait_until(lambda: len(box) == 0, 20, what="the outbox to empty")
    assert set(stub.stored) == set(ids)
    assert (up.metrics()["uploaded"], up.metrics()["failures"]) == (3, 0)


def test_a_wrong_url_keeps_the_samples(tmp_path, stub, wait_until) -> None:
    box, _ = outbox_with(tmp_path, 1)
    with running(box, f"http://127.0.0.1:{stub.port}/not-here") as up:
        wait_until(lambda: up.failures >= 2, 20, what="two tries")
    assert len(box) == 1 and box.rejected == 0
    assert "Check upload.url" in up.metrics()["last_error"]


def test_network_loss_and_a_restart_lose_nothing(tmp_path, wait_until) -> None:
    with IngestStub() as probe:  # a free port, then nothing listens on it
        port = probe.port
    box, ids = outbox_with(tmp_path, 3)
    up = uploader_for(box, f"http://127.0.0.1:{port}")
    up.start()
    wait_until(lambda: up.failures >= 3, 20, what="failed tries while the server is down")
    assert up.metrics()["state"] in ("backoff", "uploading")
    assert "no answer" in up.metrics()["last_error"]
    up.stop()  # the device restarts
    box = SampleOutbox(tmp_path / "samples")
    assert len(box) == 3
    with IngestStub(port) as server, running(box, f"http://127.0.0.1:{port}") as up:
        wait_until(lambda: len(box) == 0, 20, what="delivery after the outage")
    assert set(server.stored) == set(ids)


def test_https_with_a_private_ca(tmp_path, tls_certs, wait_until) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tls_certs / "server.crt", tls_certs / "server.key")
    with IngestStub(tls=tls) as server:
        url = f"https://localhost:{server.port}"
        box, ids = outbox_with(tmp_path, 2)
        with running(box, url) as untrusted:  # the system CAs do not know the test CA
            wait_until(lambda: untrusted.failures >= 1, 20, what="a refused certificate")
        assert "set upload.ca_file" in untrusted.metrics()["last_error"]
        assert len(box) == 2 and not server.stored
        with running(box, url, ca_file=str(tls_certs / "ca.crt")):
            wait_until(lambda: len(box) == 0, 20, what="delivery over verified TLS")
        assert set(server.stored) == set(ids)


def test_stop_cuts_a_request_in_progress_and_keeps_its_sample(tmp_path, stub, wait_until) -> None:
    box, ids = outbox_with(tmp_path, 1)
    stub.hold = threading.Event()  # the server takes the request and never answers
    up = uploader_for(box, f"http://127.0.0.1:{stub.port}", timeout_s=60)
    up.start()
    wait_until(lambda: stub.requests == 1, 20, what="the request to arrive")
    up.stop(timeout=10)  # well before the 60 s timeout and the server's 30 s hold
    assert not up.alive and len(box) == 1 and box.oldest().sample_id == ids[0]
