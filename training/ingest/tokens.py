"""Device tokens: the tokens file (only hashes) and the registry the server checks uploads against.

A token is 32 random bytes from :func:`secrets.token_urlsafe` behind a ``ecs_`` prefix (so a
leaked one is recognisable in a log or a repository). ``token add`` prints it once; the file
keeps only its sha256, one line per name::

    # name  role  sha256-of-token  created
    pi-kitchen  device  9f86d081884c7d65...  2026-11-29T08:26:11Z
    ops  admin  60303ae22b998861...  2026-11-29T08:30:02Z

Why a plain sha256 and not bcrypt/argon2: those slow, salted hashes protect *low-entropy*
passwords from guessing once the hash file leaks. A token of 256 random bits cannot be guessed
(2^256 tries, fast hash or not), so a fast hash loses nothing, and it lets the server check 200+
uploads a second with a dictionary lookup of the hash instead of a 100 ms KDF per request.
Looking up the hash (not comparing tokens) also leaks nothing through timing: an attacker who
times the lookup learns about the hash of their own guess, not about a stored token.

Roles: a ``device`` token uploads samples for its own device id and reads its own stats; an
``admin`` token uploads nothing and reads everyone's stats (the review page's operator).

The server re-reads the file when it changes (checked at most once a second), so ``token add``
and ``token revoke`` take effect without a restart; a file that no longer parses keeps the
tokens read before and logs an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from device.names import check_safe_name
from training.ingest.errors import IngestError
from training.ingest.watched import WatchedFile, write_private

log = logging.getLogger(__name__)

ROLES = ("device", "admin")
TOKEN_PREFIX = "ecs_"
DEFAULT_TOKENS_FILE = "edgecam-tokens.txt"
TOKENS_ENV = "EDGECAM_INGEST_TOKENS"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.~+/=-]{16,256}$")
_HEADER = (
    "# edgecam ingest tokens: edgecam-train token add/list/revoke. Only the sha256 of each\n"
    "# token is kept here; the token itself was shown once, when it was made.\n"
    "# name  role  sha256-of-token  created\n"
)
RELOAD_CHECK_S = 1.0


def default_tokens_path() -> Path:
    """``$EDGECAM_INGEST_TOKENS`` or ``edgecam-tokens.txt`` in the current folder."""
    return Path(os.environ.get(TOKENS_ENV) or DEFAULT_TOKENS_FILE)


def new_token() -> str:
    """A fresh token: 256 random bits, URL-safe, with the recognisable prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    """One line of the tokens file."""

    name: str
    role: str
    digest: str
    created: str

    def line(self) -> str:
        return f"{self.name}  {self.role}  {self.digest}  {self.created}\n"


@dataclass(frozen=True)
class Identity:
    """Who sent a request: the name in the tokens file and its role."""

    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def read_tokens(path: Path) -> list[TokenEntry]:
    """The entries of a tokens file; IngestError naming the file and line when one is bad."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IngestError(
            f"tokens file {path} does not exist",
            f"create it with: edgecam-train token add DEVICE --tokens {path}",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestError(f"cannot read tokens file {path}: {exc}") from None
    entries: list[TokenEntry] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        fields = line.split()
        if len(fields) != 4:
            raise IngestError(
                f"{where}: expected 'name role sha256 created', got {len(fields)} field(s)",
                "fix or delete the line; edgecam-train token add writes correct ones",
            )
        name, role, digest, created = fields
        try:
            check_safe_name(name, "token name")
        except ValueError as exc:
            raise IngestError(f"{where}: {exc}") from None
        if role not in ROLES:
            raise IngestError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if not _DIGEST.match(digest):
            raise IngestError(
                f"{where}: the hash must be 64 lowercase hex digits (a sha256)",
                "tokens are never stored in clear: use edgecam-train token add",
            )
        if name in seen:
            raise IngestError(f"{where}: {name!r} has a second line", "keep one token per name")
        seen.add(name)
        entries.append(TokenEntry(name, role, digest, created))
    return entries


def write_tokens(path: Path, entries: list[TokenEntry]) -> None:
    """Replace the tokens file atomically, readable by its owner only."""
    write_private(path, _HEADER + "".join(e.line() for e in entries))


def add_token(path: Path, name: str, role: str = "device", replace: bool = False) -> str:
    """Make a token for ``name``, store its hash in ``path`` (created when missing) and return
    the token (the only time it exists in clear)."""
    try:
        check_safe_name(name, "device id" if role == "device" else "admin name")
    except ValueError as exc:
        raise IngestError(str(exc), "use the device_id from the device's config") from None
    entries = read_tokens(path) if path.exists() else []
    if any(e.name == name for e in entries):
        if not replace:
            raise IngestError(
                f"{name!r} already has a token in {path}",
                "give --replace to make a new one (the old one stops working), or revoke it first",
            )
        entries = [e for e in entries if e.name != name]
    token = new_token()
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    entries.append(TokenEntry(name, role, hash_token(token), created))
    write_tokens(path, entries)
    return token


def revoke_token(path: Path, name: str) -> None:
    entries = read_tokens(path)
    kept = [e for e in entries if e.name != name]
    if len(kept) == len(entries):
        raise IngestError(
            f"{name!r} has no token in {path}", "see the names with: edgecam-train token list"
        )
    write_tokens(path, kept)


class TokenRegistry:
    """The server's view of the tokens file: hash -> identity, re-read when the file changes."""

    def __init__(self, path: Path, check_every_s: float = RELOAD_CHECK_S):
        self.path = path
        self._by_digest: dict[str, Identity] = {}
        self._file = WatchedFile(path, check_every_s, seen=True)
        self._load(read_tokens(path))

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, token: str) -> Identity | None:
        """The identity a presented token belongs to; None for an unknown or malformed one."""
        self._maybe_reload()
        if not _TOKEN.match(token):
            return None
        return self._by_digest.get(hash_token(token))

    def _load(self, entries: list[TokenEntry]) -> None:
        self._by_digest = {e.digest: Identity(e.name, e.role) for e in entries}

    def _maybe_reload(self) -> None:
        change = self._file.poll()
        if change is None:
            return
        if not change.exists:
            log.warning("tokens file %s is gone: every upload is refused now", self.path)
            self._by_digest = {}
            return
        try:
            self._load(read_tokens(self.path))
        except IngestError as exc:
            log.error("tokens file changed but cannot be used, keeping the old tokens: %s", exc)
            return
        log.info("tokens file %s re-read: %d token(s)", self.path, len(self._by_digest))
