"""The ingest server, for real: ``edgecam-train serve`` (uvicorn) in a subprocess, a real tokens
file, real HTTP requests; the inbox on disk (and on a real S3-protocol server) is checked."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import struct
from pathlib import Path

import pytest

from device.samples import SampleMeta
from training.ingest.synthetic import make_jpeg, make_meta, variant

MAX_BODY = 300_000
MAX_PIXELS = 1_000_000
JPEG = make_jpeg(320, 240, target_bytes=20_000)
BOUNDARY = "edgecam-test-7d1f"


# -- helpers -------------------------------------------------------------------------------------
def multipart(parts: list[tuple], boundary: str = BOUNDARY) -> bytes:
    """``parts``: (name, bytes, content type or None[, extra header lines])."""
    out = b""
    for name, data, ctype, *extra in parts:
        out += f"--{boundary}\r\n".encode()
        out += f'Content-Disposition: form-data; name="{name}"; filename="{name}"\r\n'.encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        for line in extra:
            out += line + b"\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def upload_body(jpeg: bytes, meta: dict | bytes) -> bytes:
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return multipart([("image", jpeg, "image/jpeg"), ("meta", raw, "application/json")])


def request(server, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """(status, JSON body or raw text) of one real HTTP request."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data.decode(errors="replace")


def post(
    server, token: str | None, body: bytes, ctype: str = f"multipart/form-data; boundary={BOUNDARY}"
):
    headers = {"Content-Type": ctype}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return request(server, "POST", "/api/v1/samples", body, headers)


def raw(server, data: bytes) -> bytes:
    """Send raw bytes, half-close, and return whatever the server answers before closing."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before taking it all
            pass
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


def files(root: Path) -> set[str]:
    """Every file under the inbox, temporary ones too."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header (SOF0) claiming another size: a decompression bomb."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


# -- the server shared by this module ------------------------------------------------------------
@pytest.fixture(scope="module")
def server(module_ingest_server_factory):
    srv = module_ingest_server_factory(
        args=("--max-body", str(MAX_BODY), "--max-pixels", str(MAX_PIXELS))
    )
    srv.device_a = srv.add_token("pi-a")
    srv.device_b = srv.add_token("pi-b")
    srv.admin = srv.add_token("ops", admin=True)
    srv.root = Path(srv.inbox)
    return srv.start()


@pytest.fixture
def unchanged(server):
    """Asserts at the end of the test that the inbox did not change and the server is healthy."""
    server.root.mkdir(parents=True, exist_ok=True)
    before = files(server.root)
    yield
    assert files(server.root) == before
    assert server.healthy()


_counter = iter(range(1000, 10**6))


def fresh(device: str = "pi-a", **fields) -> tuple[bytes, dict]:
    jpeg = variant(JPEG, next(_counter))
    return jpeg, make_meta(jpeg, device=device, **fields)


# -- accepted uploads ----------------------------------------------------------------------------
def test_upload_is_stored_in_the_layout_with_a_valid_sidecar_and_once(server):
    jpeg, meta = fresh(ts="2026-11-29T08:26:11.123Z")
    status, answer = post(server, server.device_a, upload_body(jpeg, meta))
    assert (status, answer) == (201, {"sample_id": meta["sample_id"], "stored": True})
    folder = server.root / "pi-a" / "2026-11-29"
    assert (folder / f"{meta['sample_id']}.jpg").read_bytes() == jpeg
    sidecar = json.loads((folder / f"{meta['sample_id']}.json").read_text())
    assert SampleMeta.model_validate(sidecar).to_json() == meta
    before = files(server.root)

    status, answer = post(server, server.device_a, upload_body(jpeg, meta))
    assert (status, answer) == (200, {"sample_id": meta["sample_id"], "duplicate": True})
    assert files(server.root) == before


def test_meta_as_a_plain_form_field_and_generic_part_types_are_accepted(server):
    jpeg, meta = fresh()
    body = multipart(
        [("image", jpeg, "application/octet-stream"), ("meta", json.dumps(meta).encode(), None)]
    )
    assert post(server, server.device_a, body)[0] == 201


def test_stats_a_device_sees_its_own_and_an_admin_sees_all(server):
    jpeg, meta = fresh("pi-b")
    assert post(server, server.device_b, upload_body(jpeg, meta))[0] == 201
    assert post(server, server.device_b, upload_body(jpeg, meta))[0] == 200
    assert post(server, server.device_b, upload_body(b"not a jpeg", meta))[0] == 422
    auth = {"Authorization": f"Bearer {server.device_b}"}
    status, own = request(server, "GET", "/api/v1/stats", headers=auth)
    assert status == 200 and list(own["devices"]) == ["pi-b"]
    counters = own["devices"]["pi-b"]
    assert counters["stored"] >= 1 and counters["duplicates"] >= 1
    assert counters["rejected"].get("hash_mismatch", 0) >= 1
    assert counters["bytes"] >= len(jpeg)
    assert counters["received"] == (
        counters["stored"] + counters["duplicates"] + sum(counters["rejected"].values())
    )
    assert "unauthenticated" not in own

    status, everything = request(
        server, "GET", "/api/v1/stats", headers={"Authorization": f"Bearer {server.admin}"}
    )
    assert status == 200 and {"pi-b"} <= set(everything["devices"])
    assert "unauthenticated" in everything
    assert request(server, "GET", "/api/v1/stats")[0] == 401


def test_the_batch_log_line_counts_per_device(server, wait_until):
    token = server.add_token("pi-log")
    jpeg, meta = fresh("pi-log")
    wait_until(lambda: post(server, token, upload_body(jpeg, meta))[0] == 201, timeout=10)
    wait_until(lambda: "pi-log 1 stored" in server.log(), timeout=10, what="a batch log line")


# -- refusals: nothing stored --------------------------------------------------------------------
def test_no_token_or_a_wrong_token_is_401_and_nothing_stored(server, unchanged):
    jpeg, meta = fresh()
    for token in (None, "ecs_" + "x" * 43, server.device_a + "x", ""):
        status, answer = post(server, token, upload_body(jpeg, meta))
        assert status == 401, token
        assert answer["error"] and answer["fix"]


def test_a_token_of_device_a_cannot_upload_as_device_b(server, unchanged):
    jpeg, meta = fresh("pi-b")
    status, answer = post(server, server.device_a, upload_body(jpeg, meta))
    assert status == 403
    assert "pi-a" in answer["error"] and "pi-b" in answer["error"]


def test_an_admin_token_uploads_nothing(server, unchanged):
    jpeg, meta = fresh("ops")
    assert post(server, server.admin, upload_body(jpeg, meta))[0] == 403


def test_an_oversized_body_is_413_by_content_length_and_while_streaming(server, unchanged):
    big = variant(JPEG, 1) + b"\0" * MAX_BODY
    jpeg, meta = big, make_meta(big, device="pi-a")
    status, answer = post(server, server.device_a, upload_body(jpeg, meta))
    assert status == 413 and "limit" in answer["error"]

    # chunked: no Content-Length, the server counts while it reads
    body = upload_body(jpeg, meta)
    head = (
        "POST /api/v1/samples HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"Authorization: Bearer {server.device_a}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    ).encode()
    chunks = b"".join(
        f"{len(body[i : i + 8192]):x}\r\n".encode() + body[i : i + 8192] + b"\r\n"
        for i in range(0, len(body), 8192)
    )
    answer = raw(server, head + chunks + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_file_that_is_not_a_jpeg_is_refused(server, unchanged):
    import cv2

    png = cv2.imencode(".png", cv2.imdecode(__import__("numpy").frombuffer(JPEG, "uint8"), 1))[1]
    for data in (b"hello, world", png.tobytes(), JPEG[: len(JPEG) // 2]):
        meta = make_meta(data, device="pi-a")
        status, answer = post(server, server.device_a, upload_body(data, meta))
        assert status == 422 and "JPEG" in answer["error"], answer


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(server, unchanged):
    for jpeg in (with_size(JPEG, 30000, 30000), make_jpeg(1200, 1000, target_bytes=30_000)):
        status, answer = post(
            server, server.device_a, upload_body(jpeg, make_meta(jpeg, device="pi-a"))
        )
        assert status == 422 and "pixels" in answer["error"], answer


PATH_FIELDS = [
    ("device", None),
    ("camera", None),
    ("model", "name"),
    ("model", "version"),
    ("model", "variant"),
    ("model", "sha256"),
    ("top", "label"),
    ("event_id", None),
    ("ts", None),
    ("sample_id", None),
    ("policy", None),
    ("schema", None),
]


@pytest.mark.parametrize(("key", "sub"), PATH_FIELDS)
def test_dot_dot_slash_in_any_field_is_refused(server, unchanged, key, sub):
    jpeg, meta = fresh()
    if sub is None:
        meta[key] = "../../etc/" + str(meta.get(key, "x"))
    elif key == "top":
        meta["top"][0][sub] = "../cat"
    else:
        meta[key][sub] = "..\\" + meta[key][sub]
    status, answer = post(server, server.device_a, upload_body(jpeg, meta))
    assert status == 422, answer
    assert key in answer["error"]


@pytest.mark.parametrize("where", ["top-level", "model", "top"])
def test_unknown_fields_are_refused_at_every_level(server, unchanged, where):
    jpeg, meta = fresh()
    target = {"top-level": meta, "model": meta["model"], "top": meta["top"][0]}[where]
    target["path"] = "x.jpg"
    status, answer = post(server, server.device_a, upload_body(jpeg, meta))
    assert status == 422 and "path" in answer["error"], answer


def test_thirty_odd_malformed_requests_leave_the_server_healthy_and_the_inbox_unchanged(
    server, unchanged
):
    a = server.device_a
    jpeg, meta = fresh()
    good = json.dumps(meta).encode()
    mp = f"multipart/form-data; boundary={BOUNDARY}"
    # (what, token, Content-Type, body, statuses)
    cases = [
        ("no Content-Type", a, "", upload_body(jpeg, meta), {415}),
        ("JSON instead of multipart", a, "application/json", good, {415}),
        ("form-urlencoded", a, "application/x-www-form-urlencoded", b"image=1&meta=2", {415}),
        (
            "multipart/mixed",
            a,
            f"multipart/mixed; boundary={BOUNDARY}",
            upload_body(jpeg, meta),
            {415},
        ),
        ("no boundary", a, "multipart/form-data", upload_body(jpeg, meta), {400}),
        ("boundary too long", a, "multipart/form-data; boundary=" + "b" * 100, b"x", {400}),
        (
            "wrong boundary",
            a,
            "multipart/form-data; boundary=other",
            upload_body(jpeg, meta),
            {400},
        ),
        ("empty body", a, mp, b"", {400}),
        ("garbage body", a, mp, b"\x00\xff" * 500, {400}),
        ("cut short", a, mp, upload_body(jpeg, meta)[:-40], {400}),
        ("no image part", a, mp, multipart([("meta", good, "application/json")]), {400}),
        ("no meta part", a, mp, multipart([("image", jpeg, "image/jpeg")]), {400}),
        (
            "extra part",
            a,
            mp,
            multipart([("image", jpeg, None), ("meta", good, None), ("x", b"1", None)]),
            {400},
        ),
        (
            "image twice",
            a,
            mp,
            multipart([("image", jpeg, None), ("image", jpeg, None), ("meta", good, None)]),
            {400},
        ),
        (
            "part without a name",
            a,
            mp,
            f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
            {400},
        ),
        (
            "image as text/html",
            a,
            mp,
            multipart([("image", jpeg, "text/html"), ("meta", good, None)]),
            {415},
        ),
        (
            "meta as image/png",
            a,
            mp,
            multipart([("image", jpeg, None), ("meta", good, "image/png")]),
            {415},
        ),
        (
            "many part headers",
            a,
            mp,
            multipart([("image", jpeg, None, *[b"X-A: b"] * 20), ("meta", good, None)]),
            {400},
        ),
        ("meta bad UTF-8", a, mp, upload_body(jpeg, b'{"schema": "\xff\xfe"}'), {400}),
        ("meta not JSON", a, mp, upload_body(jpeg, b"{'schema': 1"), {400}),
        ("meta a JSON list", a, mp, upload_body(jpeg, b"[1, 2]"), {422}),
        ("meta duplicate key", a, mp, upload_body(jpeg, good[:-1] + b', "device": "pi-b"}'), {400}),
        ("meta NaN", a, mp, upload_body(jpeg, good.replace(b"0.41", b"NaN")), {400}),
        ("meta too large", a, mp, upload_body(jpeg, b" " * 70_000 + good), {413}),
        ("meta nested deeply", a, mp, upload_body(jpeg, b"[" * 30_000 + b"]" * 30_000), {400}),
        ("meta missing fields", a, mp, upload_body(jpeg, {"schema": "edgecam.sample/1"}), {422}),
        ("meta schema v2", a, mp, upload_body(jpeg, {**meta, "schema": "edgecam.sample/2"}), {422}),
        (
            "score above 1",
            a,
            mp,
            upload_body(jpeg, {**meta, "top": [{"label": "a", "index": 0, "score": 7}]}),
            {422},
        ),
        ("wrong sample_id", a, mp, upload_body(jpeg, {**meta, "sample_id": "0" * 64}), {422}),
        ("sample_id of another image", a, mp, upload_body(variant(jpeg, 9), meta), {422}),
        ("empty image", a, mp, upload_body(b"", make_meta(b"", device="pi-a")), {422}),
        ("bad UTF-8 token", None, mp, upload_body(jpeg, meta), {401}),
        ("Basic auth", None, mp, upload_body(jpeg, meta), {401}),
    ]
    answers = []
    for what, token, ctype, body, statuses in cases:
        headers = {"Content-Type": ctype} if ctype else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif what == "bad UTF-8 token":
            headers["Authorization"] = b"Bearer \xff\xfe\xfd"  # type: ignore[assignment]
        elif what == "Basic auth":
            headers["Authorization"] = "Basic cGktYTpzZWNyZXQ="
        status, answer = request(server, "POST", "/api/v1/samples", body, headers)
        assert status in statuses, (what, status, answer)
        assert isinstance(answer, dict) and answer["error"] and answer["fix"], (what, answer)
        answers.append((what, status))

    routes = [
        ("GET", "/api/v1/samples", {405}),
        ("PUT", "/healthz", {405}),
        ("POST", "/api/v2/samples", {404}),
        ("GET", "/api/v1/../../../etc/passwd", {404}),
        ("DELETE", "/api/v1/stats", {405}),
    ]
    for method, path, statuses in routes:
        status, answer = request(server, method, path, headers={"Authorization": f"Bearer {a}"})
        assert status in statuses and answer["error"], (method, path, answer)

    auth = f"Authorization: Bearer {a}\r\n"
    protocol = [
        ("huge header", f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * 1_000_000}\r\n\r\n"),
        ("garbage request line", "BLAH\r\n\r\n"),
        ("Content-Length not a number", f"POST /api/v1/samples HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: ten\r\n\r\n"),
        ("bad chunk size", f"POST /api/v1/samples HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {mp}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n"),
        ("declares 10 GB", f"POST /api/v1/samples HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {mp}\r\nContent-Length: 10000000000\r\n\r\n--"),
        ("body shorter than declared", f"POST /api/v1/samples HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {mp}\r\nContent-Length: 5000\r\n\r\n--{BOUNDARY}\r\n"),
    ]  # fmt: skip
    for what, data in protocol:
        answer = raw(server, data.encode())
        assert not answer or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), (what, answer[:100])
    assert len(answers) + len(routes) + len(protocol) >= 30

    # still serving: a good upload goes through (and is then removed from the "unchanged" check)
    status, _ = post(server, a, upload_body(jpeg, meta))
    assert status == 201
    for path in (server.root / "pi-a").rglob(f"{meta['sample_id']}.*"):
        path.unlink()


def test_an_inbox_that_cannot_store_answers_503_and_stays_up(server, wait_until):
    token = server.add_token("pi-broken")
    (server.root / "pi-broken").write_text("a file where the device folder should be")
    jpeg, meta = fresh("pi-broken")
    answer = wait_until(
        lambda: (r := post(server, token, upload_body(jpeg, meta)))[0] != 401 and r,
        timeout=10,
        what="the new token to work",
    )
    assert answer[0] == 503 and "could not store" in answer[1]["error"], answer
    assert "cannot store samples" in server.log()
    jpeg, meta = fresh()
    assert post(server, server.device_a, upload_body(jpeg, meta))[0] == 201


def test_a_revoked_token_stops_working_without_a_restart(server, wait_until):
    from training.cli import main

    token = server.add_token("pi-c")
    jpeg, meta = fresh("pi-c")
    wait_until(
        lambda: post(server, token, upload_body(jpeg, meta))[0] == 201,
        timeout=10,
        what="a new token to work",
    )
    assert main(["token", "revoke", "pi-c", "--tokens", str(server.tokens), "-q"]) == 0
    jpeg, meta = fresh("pi-c")
    wait_until(
        lambda: post(server, token, upload_body(jpeg, meta))[0] == 401,
        timeout=10,
        what="the revoked token to fail",
    )


# -- TLS and S3 ----------------------------------------------------------------------------------
def test_https_upload_verified_against_the_ca(ingest_server_factory, tls_certs):
    srv = ingest_server_factory(tls=tls_certs)
    token = srv.add_token("pi-a")
    srv.start()
    jpeg, meta = fresh()
    context = ssl.create_default_context(cafile=str(tls_certs / "ca.crt"))
    conn = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=10, context=context)
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }
    conn.request("POST", "/api/v1/samples", body=upload_body(jpeg, meta), headers=headers)
    assert conn.getresponse().status == 201
    conn.close()
    with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust the CA
        http.client.HTTPSConnection(
            "127.0.0.1", srv.port, timeout=10, context=ssl.create_default_context()
        ).request("GET", "/healthz")


def test_s3_inbox_stores_the_same_keys(ingest_server_factory, s3_server):
    bucket = s3_server.new_bucket()
    srv = ingest_server_factory(inbox=f"s3://{bucket}/inbox", env=s3_server.env)
    token = srv.add_token("pi-a")
    srv.start()
    jpeg, meta = fresh(ts="2026-11-29T08:26:11.123Z")
    assert post(srv, token, upload_body(jpeg, meta)) == (
        201,
        {"sample_id": meta["sample_id"], "stored": True},
    )
    assert post(srv, token, upload_body(jpeg, meta))[0] == 200
    assert post(srv, token, upload_body(b"junk", make_meta(b"junk", device="pi-a")))[0] == 422
    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    base = f"inbox/pi-a/2026-11-29/{meta['sample_id']}"
    assert sorted(o["Key"] for o in listed) == [f"{base}.jpg", f"{base}.json"]
    body = s3_server.client().get_object(Bucket=bucket, Key=f"{base}.jpg")["Body"].read()
    assert body == jpeg
