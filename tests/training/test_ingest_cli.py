"""``edgecam-train token add|list|revoke`` and ``serve``'s start-up errors, through the real CLI."""

from __future__ import annotations

import hashlib
import socket
import stat
from pathlib import Path

import pytest

from training.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_token_add_prints_the_token_once_and_stores_only_its_hash(tmp_path: Path, capsys):
    tokens = tmp_path / "tokens.txt"
    code, out, err = run(capsys, "token", "add", "pi-kitchen", "--tokens", str(tokens))
    assert code == 0
    token = out.strip()
    assert token.startswith("ecs_") and len(token) >= 40 and "\n" not in token
    text = tokens.read_text()
    assert token not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert "shown only now" in err

    code, out, _ = run(capsys, "token", "add", "ops", "--admin", "--tokens", str(tokens))
    assert code == 0
    code, out, _ = run(capsys, "token", "list", "--tokens", str(tokens))
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [["pi-kitchen", "device"], ["ops", "admin"]]
    assert token not in out


def test_token_add_twice_needs_replace_and_replace_rotates(tmp_path: Path, capsys):
    tokens = tmp_path / "tokens.txt"
    first = run(capsys, "token", "add", "pi-a", "--tokens", str(tokens))[1].strip()
    code, _, err = run(capsys, "token", "add", "pi-a", "--tokens", str(tokens))
    assert code == 2
    assert "already has a token" in err and "--replace" in err
    second = run(capsys, "token", "add", "pi-a", "--replace", "--tokens", str(tokens))[1].strip()
    assert second != first
    text = tokens.read_text()
    assert hashlib.sha256(first.encode()).hexdigest() not in text
    assert hashlib.sha256(second.encode()).hexdigest() in text


def test_token_revoke_removes_the_name(tmp_path: Path, capsys):
    tokens = tmp_path / "tokens.txt"
    run(capsys, "token", "add", "pi-a", "--tokens", str(tokens))
    run(capsys, "token", "add", "pi-b", "--tokens", str(tokens))
    assert run(capsys, "token", "revoke", "pi-a", "--tokens", str(tokens))[0] == 0
    assert [
        line.split()[0]
        for line in run(capsys, "token", "list", "--tokens", str(tokens))[1].splitlines()
    ] == ["pi-b"]
    code, _, err = run(capsys, "token", "revoke", "pi-a", "--tokens", str(tokens))
    assert code == 2 and "has no token" in err


def test_token_names_and_files_are_checked(tmp_path: Path, capsys):
    tokens = tmp_path / "tokens.txt"
    code, _, err = run(capsys, "token", "add", "../pi", "--tokens", str(tokens))
    assert code == 2 and "not allowed" in err
    assert not tokens.exists()
    tokens.write_text("pi-a device not-a-hash 2026-01-01T00:00:00Z\n")
    code, _, err = run(capsys, "token", "list", "--tokens", str(tokens))
    assert code == 2 and f"{tokens}:1" in err and "fix:" in err
    code, _, err = run(capsys, "token", "list", "--tokens", str(tmp_path / "missing.txt"))
    assert code == 2 and "token add" in err


def test_tokens_file_from_the_environment(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("EDGECAM_INGEST_TOKENS", str(tmp_path / "env-tokens.txt"))
    assert run(capsys, "token", "add", "pi-a")[0] == 0
    assert (tmp_path / "env-tokens.txt").is_file()


@pytest.fixture
def tokens(tmp_path: Path, capsys) -> Path:
    path = tmp_path / "tokens.txt"
    run(capsys, "token", "add", "pi-a", "--tokens", str(path))
    return path


def test_serve_start_errors_are_one_line_with_a_fix(tmp_path: Path, capsys, tokens: Path):
    inbox = str(tmp_path / "inbox")
    cases = [
        (["--tokens", str(tmp_path / "nope.txt")], "does not exist"),
        (["--tokens", str(tokens), "--tls-cert", str(tokens)], "both --tls-cert and --tls-key"),
        (["--tokens", str(tokens), "--tls-cert", str(tokens), "--tls-key", str(tokens)], "TLS"),
        (["--tokens", str(tokens), "--host", "no-such-host.invalid"], "cannot listen"),
    ]
    for extra, expected in cases:
        code, _, err = run(capsys, "serve", inbox, *extra)
        assert code == 2, (extra, err)
        assert expected in err and "Traceback" not in err, err
    code, _, err = run(capsys, "serve", "ftp://host/x", "--tokens", str(tokens))
    assert code == 2 and "s3://" in err


def test_serve_on_a_port_in_use(tmp_path: Path, capsys, tokens: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run(
            capsys, "serve", str(tmp_path / "inbox"), "--tokens", str(tokens), "--port", str(port)
        )
    assert code == 2
    assert "cannot listen" in err and "--port" in err
