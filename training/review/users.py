"""Reviewers: people who log in to the review page, each with their own password.

The reviewers file (mode 600, default ``edgecam-reviewers.txt`` beside the tokens file) keeps
one line per reviewer: ``name  <argon2id hash>  created``. Unlike device tokens (256 random
bits, see :mod:`training.ingest.tokens`), passwords are chosen by people and can be guessed, so
they are stored as salted, slow, memory-hard argon2id hashes (argon2-cffi, its RFC 9106 "low
memory" profile); a stolen file costs an attacker 64 MiB and tens of milliseconds per guess.
Reviewers are separate from device tokens: a device token never opens the review page, and a
reviewer's password never uploads a sample.

The server re-reads the file when it changes (``reviewer add``/``remove`` need no restart).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from device.names import check_safe_name
from training.ingest.errors import IngestError
from training.ingest.watched import WatchedFile, write_private

log = logging.getLogger(__name__)

DEFAULT_REVIEWERS_FILE = "edgecam-reviewers.txt"
REVIEWERS_ENV = "EDGECAM_REVIEWERS"
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
RELOAD_CHECK_S = 1.0
_HEADER = (
    "# edgecam reviewers: edgecam-train reviewer add/list/remove. Passwords are kept as\n"
    "# argon2id hashes only.\n"
    "# name  argon2id-hash  created\n"
)
_HASHER = PasswordHasher()  # argon2id, t=3, m=64 MiB, p=4 (RFC 9106 low-memory profile)
# Verifying against this when the name is unknown makes a wrong name cost as much as a wrong
# password, so response times do not tell which reviewer names exist.
_DUMMY_HASH = _HASHER.hash("edgecam-no-such-reviewer")


class ReviewerError(IngestError):
    """A reviewers file or a reviewer command cannot be used."""


def default_reviewers_path(tokens: Path | None = None) -> Path:
    """``$EDGECAM_REVIEWERS``, else ``edgecam-reviewers.txt`` beside the tokens file."""
    env = os.environ.get(REVIEWERS_ENV)
    if env:
        return Path(env)
    folder = tokens.parent if tokens is not None else Path()
    return folder / DEFAULT_REVIEWERS_FILE


@dataclass(frozen=True)
class Reviewer:
    name: str
    password_hash: str
    created: str

    def line(self) -> str:
        return f"{self.name}  {self.password_hash}  {self.created}\n"


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ReviewerError(
            f"the password is too short ({len(password)} characters)",
            f"use at least {MIN_PASSWORD} characters (a few random words are easy to type)",
        )
    if len(password) > MAX_PASSWORD:
        raise ReviewerError(f"the password is longer than {MAX_PASSWORD} characters")
    return password


def read_reviewers(path: Path) -> list[Reviewer]:
    """The reviewers in ``path``; ReviewerError naming the file and line when one is bad."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReviewerError(
            f"reviewers file {path} does not exist",
            f"create it with: edgecam-train reviewer add NAME --reviewers {path}",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReviewerError(f"cannot read reviewers file {path}: {exc}") from None
    out: list[Reviewer] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{path}:{number}"
        if len(fields) != 3 or not fields[1].startswith("$argon2"):
            raise ReviewerError(
                f"{where}: expected 'name argon2-hash created'",
                "fix or delete the line; edgecam-train reviewer add writes correct ones",
            )
        try:
            check_safe_name(fields[0], "reviewer name")
        except ValueError as exc:
            raise ReviewerError(f"{where}: {exc}") from None
        if any(r.name == fields[0] for r in out):
            raise ReviewerError(f"{where}: {fields[0]!r} has a second line")
        out.append(Reviewer(*fields))
    return out


def write_reviewers(path: Path, reviewers: list[Reviewer]) -> None:
    """Replace the file atomically, readable by its owner only."""
    write_private(path, _HEADER + "".join(r.line() for r in reviewers))


def add_reviewer(path: Path, name: str, password: str, replace: bool = False) -> None:
    """Add ``name`` (or give it a new password with ``replace``)."""
    try:
        check_safe_name(name, "reviewer name")
    except ValueError as exc:
        raise ReviewerError(str(exc)) from None
    check_password(password)
    reviewers = read_reviewers(path) if path.exists() else []
    if any(r.name == name for r in reviewers):
        if not replace:
            raise ReviewerError(
                f"{name!r} is already a reviewer in {path}",
                "give --replace to set a new password",
            )
        reviewers = [r for r in reviewers if r.name != name]
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    reviewers.append(Reviewer(name, _HASHER.hash(password), created))
    write_reviewers(path, reviewers)


def remove_reviewer(path: Path, name: str) -> None:
    reviewers = read_reviewers(path)
    kept = [r for r in reviewers if r.name != name]
    if len(kept) == len(reviewers):
        raise ReviewerError(f"{name!r} is not a reviewer in {path}")
    write_reviewers(path, kept)


class ReviewerRegistry:
    """The server's view of the reviewers file, re-read when it changes. A missing file means
    no reviewer can log in (the page says how to add one)."""

    def __init__(self, path: Path, check_every_s: float = RELOAD_CHECK_S):
        self.path = path
        self._by_name: dict[str, Reviewer] = {}
        self._file = WatchedFile(path, check_every_s, seen=False)
        self._maybe_reload()

    def __len__(self) -> int:
        self._maybe_reload()
        return len(self._by_name)

    def exists(self, name: str) -> bool:
        self._maybe_reload()
        return name in self._by_name

    def verify(self, name: str, password: str) -> bool:
        """True when ``password`` is ``name``'s (constant work whether or not ``name`` exists)."""
        self._maybe_reload()
        reviewer = self._by_name.get(name)
        stored = reviewer.password_hash if reviewer else _DUMMY_HASH
        if len(password) > MAX_PASSWORD:
            return False
        try:
            ok = _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return ok and reviewer is not None

    def _maybe_reload(self) -> None:
        change = self._file.poll()
        if change is None:
            return
        if not change.exists:
            if self._by_name:
                log.warning("reviewers file %s is gone: nobody can log in", self.path)
            self._by_name = {}
            return
        try:
            self._by_name = {r.name: r for r in read_reviewers(self.path)}
        except ReviewerError as exc:
            log.error("reviewers file changed but cannot be used, keeping the old one: %s", exc)
            return
        log.info("reviewers file %s read: %d reviewer(s)", self.path, len(self._by_name))
