"""The review page's security and API against a real `edgecam-train serve` (no browser).

Logins with argon2id-hashed passwords, server-side sessions in the review database, CSRF on
every state change, device tokens refused, decisions append-only with who and when, purge.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="httpx is in the [dev] extra")

PASSWORD = "correct horse battery"


def _digitish(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((40, 40), np.uint8)
    img[8:32, 8 + seed % 10 : 14 + seed % 10] = 200 + rng.integers(0, 50)
    return img


@pytest.fixture
def served(ingest_server_factory, put_field_sample):
    from training.review.users import add_reviewer

    server = ingest_server_factory()
    inbox = Path(server.inbox)
    keys = [
        put_field_sample(
            inbox, _digitish(i), [("1", 0.6), ("7", 0.3)], device="pi-a" if i < 3 else "pi-b"
        )
        for i in range(5)
    ]
    add_reviewer(server.workdir / "edgecam-reviewers.txt", "ana", PASSWORD)
    server.device_token = server.add_token("pi-a")
    server.start()
    server.keys = keys
    yield server


def _login(server, name: str = "ana", password: str = PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=20)
    page = client.get("/review/login")
    assert page.status_code == 200
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = client.post(
        "/review/login",
        data={"csrf_token": token, "name": name, "password": password, "next": "/review/"},
    )
    client.last_login = r
    return client


def _csrf(client: httpx.Client) -> str:
    page = client.get("/review/")
    assert page.status_code == 200, page.text[:300]
    return page.text.split('<meta name="csrf-token" content="')[1].split('"')[0]


def _decisions(server) -> list[tuple]:
    with sqlite3.connect(Path(server.inbox) / "review.sqlite") as conn:
        return conn.execute(
            "SELECT key, action, label, reviewer FROM decisions ORDER BY id"
        ).fetchall()


def test_refusals_without_session_csrf_or_with_a_device_token(served) -> None:
    key = served.keys[0]
    anon = httpx.Client(base_url=served.url, timeout=20)
    r = anon.get("/review/")
    assert r.status_code == 303 and r.headers["location"].startswith("/review/login")
    assert anon.get("/review/api/samples").status_code == 401
    assert anon.get(f"/review/image/{key}.jpg").status_code == 401
    r = anon.post("/review/api/decisions", json={"keys": [key], "action": "accept"})
    assert r.status_code == 401 and r.json()["fix"]

    bearer = {"Authorization": f"Bearer {served.device_token}"}
    r = anon.get("/review/api/samples", headers=bearer)
    assert r.status_code == 401 and "device tokens" in r.json()["error"]
    r = anon.post("/review/api/decisions", json={"keys": [key], "action": "reject"}, headers=bearer)
    assert r.status_code == 401

    client = _login(served)
    assert client.last_login.status_code == 303
    cookie = client.last_login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/review" in cookie and "Secure" not in cookie  # plain HTTP on loopback
    csrf = _csrf(client)
    # a logged-in browser that carries a device token too is still refused
    r = client.get("/review/api/samples", headers=bearer)
    assert r.status_code == 401
    r = client.post("/review/api/decisions", json={"keys": [key], "action": "reject"})
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = client.post(
        "/review/api/decisions",
        json={"keys": [key], "action": "reject"},
        headers={"X-CSRF-Token": "x" * 43},
    )
    assert r.status_code == 403
    r = client.post(
        "/review/api/decisions",
        json={"keys": [key], "action": "reject"},
        headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
    )
    assert r.status_code == 403
    r = client.post("/review/decide", data={"key": key, "action": "reject"})
    assert r.status_code == 403  # the form without its csrf_token field
    assert _decisions(served) == []  # nothing of the above was recorded

    r = client.post(
        "/review/api/decisions",
        json={"keys": [key], "action": "reject"},
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status_code == 200, r.text
    assert _decisions(served) == [(key, "reject", None, "ana")]

    r = client.post("/review/logout", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert client.get("/review/api/samples").status_code == 401  # the session is gone


def test_wrong_password_and_throttling(served) -> None:
    for _ in range(5):
        assert _login(served, password="wrong password!").last_login.status_code == 401
    # the right password is refused too while the name is throttled
    assert _login(served).last_login.status_code == 429
    assert _login(served, name="nobody").last_login.status_code in (401, 429)


def test_decisions_filters_groups_and_history(served) -> None:
    client = _login(served)
    csrf = _csrf(client)
    headers = {"X-CSRF-Token": csrf}
    listing = client.get("/review/api/samples", params={"device": "pi-a"}).json()
    assert listing["total"] == 3 and {s["device"] for s in listing["samples"]} == {"pi-a"}
    assert listing["grouped_by"] == "thumbnail"
    assert client.get("/review/api/samples", params={"score_min": "2"}).status_code == 400
    assert client.get("/review/api/samples", params={"date_from": "2026-13-01"}).status_code == 400

    a, b, c = served.keys[:3]
    r = client.post(
        "/review/api/decisions", headers=headers, json={"keys": [a, b], "action": "accept"}
    )
    assert [d["label"] for d in r.json()["decisions"]] == ["1", "1"]
    r = client.post(
        "/review/api/decisions",
        headers=headers,
        json={"keys": [c], "action": "relabel", "label": "7"},
    )
    assert r.json()["decisions"][0]["label"] == "7"
    r = client.post(
        "/review/api/decisions",
        headers=headers,
        json={"keys": [c], "action": "relabel", "label": "../etc"},
    )
    assert r.status_code == 400  # a label becomes a folder name: refused
    r = client.post(
        "/review/api/decisions",
        headers=headers,
        json={"keys": ["pi-a/2026-11-21/" + "0" * 64], "action": "accept"},
    )
    assert r.status_code == 404
    assert client.get("/review/api/samples").json()["total"] == 2  # pending only
    reviewed = client.get("/review/api/samples", params={"status": "accepted"}).json()["samples"]
    assert {(s["key"], s["final_label"], s["reviewer"]) for s in reviewed} == {
        (a, "1", "ana"), (b, "1", "ana"), (c, "7", "ana"),
    }  # fmt: skip
    page = client.get(f"/review/sample/{c}")
    assert page.status_code == 200 and "relabel" in page.text and "ana" in page.text
    assert client.get(f"/review/image/{c}.jpg").headers["content-type"] == "image/jpeg"
    assert client.get(f"/review/explain/{c}.png").status_code == 409  # no --run given

    with sqlite3.connect(Path(served.inbox) / "review.sqlite") as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE decisions SET label = 'x'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM decisions")


def test_purge_deletes_only_rejected_samples_and_records_it(served, capsys) -> None:
    from training.cli import main

    client = _login(served)
    headers = {"X-CSRF-Token": _csrf(client)}
    rejected, accepted = served.keys[0], served.keys[1]
    client.post(
        "/review/api/decisions", headers=headers, json={"keys": [rejected], "action": "reject"}
    )
    client.post(
        "/review/api/decisions", headers=headers, json={"keys": [accepted], "action": "accept"}
    )
    served.stop()
    inbox = Path(served.inbox)
    assert main(["purge", str(inbox), "-q"]) == 0  # lists only
    assert (inbox / f"{rejected}.jpg").is_file()
    assert main(["purge", str(inbox), "--yes", "--by", "ops", "-q"]) == 0
    assert not (inbox / f"{rejected}.jpg").exists() and not (inbox / f"{rejected}.json").exists()
    assert (inbox / f"{accepted}.jpg").is_file()
    actions = [(k, a, who) for k, a, _, who in _decisions(served)]
    assert (rejected, "purge", "ops") in actions and (rejected, "reject", "ana") in actions


def test_reviewer_commands(tmp_path, monkeypatch, capsys) -> None:
    import io

    from training.cli import main
    from training.review.users import ReviewerRegistry

    path = tmp_path / "reviewers.txt"
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["reviewer", "add", "bo", "--reviewers", str(path), "--password-stdin"]) == 0
    text = path.read_text()
    assert "$argon2id$" in text and PASSWORD not in text
    assert path.stat().st_mode & 0o777 == 0o600
    registry = ReviewerRegistry(path)
    assert registry.verify("bo", PASSWORD) and not registry.verify("bo", PASSWORD + "x")
    assert not registry.verify("nobody", PASSWORD)
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["reviewer", "add", "cy", "--reviewers", str(path), "--password-stdin"]) == 2
    assert "too short" in capsys.readouterr().err
    assert main(["reviewer", "list", "--reviewers", str(path)]) == 0
    assert capsys.readouterr().out.startswith("bo ")
    assert main(["reviewer", "remove", "bo", "--reviewers", str(path)]) == 0
    assert main(["reviewer", "remove", "bo", "--reviewers", str(path)]) == 2


def test_s3_inbox_with_a_local_review_db(
    s3_server, ingest_server_factory, put_field_sample, monkeypatch, tmp_path
) -> None:
    from training.review.users import add_reviewer

    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    inbox = f"s3://{s3_server.new_bucket()}/inbox"
    keys = [put_field_sample(inbox, _digitish(i), [("1", 0.5)]) for i in range(3)]
    review_db = tmp_path / "review.sqlite"
    server = ingest_server_factory(
        inbox=inbox, env=s3_server.env, args=("--review-db", str(review_db))
    )
    add_reviewer(server.workdir / "edgecam-reviewers.txt", "ana", PASSWORD)
    server.start()
    client = _login(server)
    listing = client.get("/review/api/samples").json()
    assert sorted(s["key"] for s in listing["samples"]) == sorted(keys)
    assert client.get(f"/review/image/{keys[0]}.jpg").status_code == 200
    r = client.post(
        "/review/api/decisions",
        headers={"X-CSRF-Token": _csrf(client)},
        json={"keys": keys[:1], "action": "reject"},
    )
    assert r.status_code == 200
    with sqlite3.connect(review_db) as conn:
        assert conn.execute("SELECT key, action FROM current").fetchall() == [(keys[0], "reject")]
