"""The review database: one SQLite file beside the inbox (``INBOX/review.sqlite``; for an
``s3://`` inbox a local path given with ``--review-db``).

Tables:

- ``decisions`` — append-only (triggers refuse UPDATE and DELETE): one row per decision, who
  (``reviewer``), what (``action``: accept, relabel, reject, reopen, purge; ``label``) and when
  (``decided_at``, UTC), and how (``via``: page, api, bulk, group, cli);
- ``current`` — a view: the latest decision of each sample (its state);
- ``samples`` — the index of the inbox (a cache of the sidecars plus the pHash and the model's
  embedding of each image): what the page filters and groups on;
- ``merges`` — which sample went where in which dataset (``edgecam-train merge``);
- ``sessions`` — review logins: the sha256 of the cookie's session id, its CSRF token, expiry.

A sample's key is ``<device>/<date>/<sample_id>``, the same as its place in the inbox. Nothing
is ever deleted from ``decisions``; rejected samples stay in the inbox until ``edgecam-train
purge`` (which records a ``purge`` decision for each one it deletes).

One connection, shared by the server's threads behind a lock; WAL mode, so ``merge`` or a
second reader can open the file while the server runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from device.samples import SampleMeta
from training.ingest.errors import IngestError
from training.ingest.store import SampleRef

log = logging.getLogger(__name__)

DB_NAME = "review.sqlite"
SCHEMA_VERSION = 1
ACTIONS = ("accept", "relabel", "reject", "reopen", "purge")
STATUSES = ("pending", "accepted", "rejected", "purged")
_STATUS_SQL = """CASE
  WHEN c.action IS NULL OR c.action = 'reopen' THEN 'pending'
  WHEN c.action IN ('accept', 'relabel') THEN 'accepted'
  WHEN c.action = 'reject' THEN 'rejected'
  ELSE 'purged' END"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
  key TEXT PRIMARY KEY,
  device TEXT NOT NULL, date TEXT NOT NULL, sample_id TEXT NOT NULL,
  camera TEXT NOT NULL, ts TEXT NOT NULL,
  label TEXT, score REAL, policy TEXT NOT NULL, model TEXT NOT NULL, top TEXT NOT NULL,
  event_id TEXT,
  phash INTEGER, thumb BLOB, embedding BLOB, embedding_model TEXT,
  indexed_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts);
CREATE INDEX IF NOT EXISTS samples_sample_id ON samples (sample_id);
CREATE TABLE IF NOT EXISTS decisions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL, sample_id TEXT NOT NULL,
  action TEXT NOT NULL CHECK (action IN ('accept', 'relabel', 'reject', 'reopen', 'purge')),
  label TEXT, reviewer TEXT NOT NULL, decided_at TEXT NOT NULL, via TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_key ON decisions (key, id);
CREATE TRIGGER IF NOT EXISTS decisions_append_only_update BEFORE UPDATE ON decisions
  BEGIN SELECT RAISE(ABORT, 'review decisions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_append_only_delete BEFORE DELETE ON decisions
  BEGIN SELECT RAISE(ABORT, 'review decisions are append-only'); END;
CREATE VIEW IF NOT EXISTS current AS
  SELECT d.key, d.sample_id, d.action, d.label, d.reviewer, d.decided_at, d.via
  FROM decisions d JOIN (SELECT key, MAX(id) AS id FROM decisions GROUP BY key) last
  ON d.id = last.id;
CREATE TABLE IF NOT EXISTS merges (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL, sample_id TEXT NOT NULL, label TEXT NOT NULL,
  data_dir TEXT NOT NULL, path TEXT NOT NULL, split TEXT NOT NULL, merged_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS merges_key ON merges (key);
CREATE TABLE IF NOT EXISTS sessions (
  id_hash TEXT PRIMARY KEY, reviewer TEXT NOT NULL, csrf TEXT NOT NULL,
  created_at REAL NOT NULL, last_seen REAL NOT NULL, expires_at REAL NOT NULL);
"""


class UnknownSample(ValueError):
    """A decision for a key the review index does not have."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def key_of(ref: SampleRef) -> str:
    return f"{ref.device}/{ref.date}/{ref.sample_id}"


def ref_of(key: str) -> SampleRef:
    """The SampleRef of a key; ValueError when it is not ``device/date/sha256``."""
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) != 3:
        raise ValueError(f"sample key {str(key)[:120]!r} is not device/date/sample_id")
    return SampleRef(*parts)


def default_db_path(inbox: str) -> Path | None:
    """``INBOX/review.sqlite`` for a local inbox; None for an ``s3://`` one (give a path)."""
    if inbox.startswith("s3://"):
        return None
    return Path(inbox).expanduser().resolve() / DB_NAME


def db_path_for(inbox: str, review_db: Path | None) -> Path:
    """The review database of an inbox; IngestError with a fix for an s3:// inbox without one."""
    if review_db is not None:
        return Path(review_db).expanduser().resolve()
    path = default_db_path(inbox)
    if path is not None and not path.parent.is_dir():
        raise IngestError(
            f"inbox {inbox} not found", "give the folder `edgecam-train serve` writes to"
        )
    if path is None:
        raise IngestError(
            f"the inbox {inbox} is on S3: the review database needs a local path",
            "give --review-db PATH (a local file, e.g. /srv/edgecam/review.sqlite; keep it "
            "backed up: it holds every review decision)",
        )
    return path


@dataclass(frozen=True)
class Fingerprint:
    """What near-duplicate marks and grouping without a model compare: the 64-bit pHash and
    a zero-mean, unit-norm 16x16 grayscale thumbnail (:func:`training.hashing.thumbnail`)."""

    phash: int
    thumb: np.ndarray


@dataclass(frozen=True)
class Filters:
    """What the grid shows. Empty values filter nothing."""

    device: str = ""
    camera: str = ""
    label: str = ""
    policy: str = ""
    score_min: float | None = None
    score_max: float | None = None
    date_from: str = ""
    date_to: str = ""
    status: str = "pending"  # one of STATUSES, "reviewed" (accepted or rejected) or "all"


@dataclass
class SampleRow:
    key: str
    device: str
    date: str
    sample_id: str
    camera: str
    ts: str
    label: str | None
    score: float | None
    policy: str
    model: str
    top: list[dict[str, Any]]
    status: str
    final_label: str | None = None
    reviewer: str | None = None
    decided_at: str | None = None
    phash: int | None = None
    thumb: np.ndarray | None = None
    embedding: np.ndarray | None = None
    embedding_model: str | None = None
    group: str | None = None  # set by the grouping
    near: dict[str, Any] | None = None  # near-duplicate of a reviewed sample

    @property
    def ref(self) -> SampleRef:
        return SampleRef(self.device, self.date, self.sample_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "device": self.device,
            "date": self.date,
            "sample_id": self.sample_id,
            "camera": self.camera,
            "ts": self.ts,
            "label": self.label,
            "score": self.score,
            "policy": self.policy,
            "model": self.model,
            "status": self.status,
            "final_label": self.final_label,
            "reviewer": self.reviewer,
            "decided_at": self.decided_at,
            "group": self.group,
            "near_duplicate_of": self.near,
        }


@dataclass(frozen=True)
class Decision:
    key: str
    action: str
    label: str | None
    reviewer: str
    decided_at: str
    via: str


@dataclass(frozen=True)
class Session:
    reviewer: str
    csrf: str
    expires_at: float


@dataclass
class Facets:
    devices: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)


def _hash_session(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8")).hexdigest()


def _to_signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _to_unsigned(value: int | None) -> int | None:
    return None if value is None else value & ((1 << 64) - 1)


class ReviewDB:
    """The review database (see the module docstring). Thread-safe; close() when done."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
        except (OSError, sqlite3.Error) as exc:
            raise IngestError(
                f"cannot open the review database {self.path}: {exc}",
                "choose a folder this user may write to (--review-db)",
            ) from None
        self._lock = threading.RLock()
        try:
            with self._lock:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.executescript(_SCHEMA)
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise IngestError(
                f"{self.path} is not a usable review database: {exc}",
                "give the right file with --review-db, or move this one away",
            ) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ReviewDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    # -- the index of the inbox --------------------------------------------------------------
    def indexed_keys(self) -> set[str]:
        return {k for (k,) in self._all("SELECT key FROM samples")}

    def add_samples(self, items: Iterable[tuple[SampleRef, SampleMeta, Fingerprint | None]]) -> int:
        """Index samples (ref, sidecar, fingerprint or None); returns how many were new."""
        rows = []
        stamp = now_iso()
        for ref, meta, fp in items:
            top = [t.model_dump() for t in meta.top]
            best = meta.top[0] if meta.top else None
            model = f"{meta.model.name}@{meta.model.version}/{meta.model.variant}"
            rows.append(
                (
                    key_of(ref), ref.device, ref.date, ref.sample_id, meta.camera, meta.ts,
                    best.label if best else None, best.score if best else None, meta.policy,
                    model, json.dumps(top), meta.event_id,
                    None if fp is None else _to_signed(fp.phash),
                    None if fp is None else fp.thumb.astype(np.float32).tobytes(), stamp,
                )
            )  # fmt: skip
        if not rows:
            return 0
        with self._tx() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO samples (key, device, date, sample_id, camera, ts, label, "
                "score, policy, model, top, event_id, phash, thumb, indexed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return conn.total_changes - before

    def keys_without_embedding(self, model: str, limit: int = 256) -> list[str]:
        rows = self._all(
            "SELECT key FROM samples WHERE embedding_model IS NULL OR embedding_model != ? "
            "ORDER BY ts LIMIT ?",
            (model, limit),
        )
        return [k for (k,) in rows]

    def set_embeddings(self, model: str, items: Iterable[tuple[str, bytes]]) -> None:
        with self._tx() as conn:
            conn.executemany(
                "UPDATE samples SET embedding = ?, embedding_model = ? WHERE key = ?",
                [(blob, model, key) for key, blob in items],
            )

    def facets(self) -> Facets:
        def distinct(column: str) -> list[str]:
            rows = self._all(f"SELECT DISTINCT {column} FROM samples WHERE {column} IS NOT NULL")
            return sorted(r[0] for r in rows)

        return Facets(
            distinct("device"),
            distinct("camera"),
            distinct("label"),
            distinct("policy"),
            distinct("date"),
        )

    def known_labels(self) -> list[str]:
        """The labels seen: the models' top guesses and the reviewers' labels."""
        rows = self._all(
            "SELECT DISTINCT label FROM samples WHERE label IS NOT NULL UNION "
            "SELECT DISTINCT label FROM decisions WHERE label IS NOT NULL"
        )
        return sorted(r[0] for r in rows)

    # -- reading samples ---------------------------------------------------------------------
    def query(
        self,
        filters: Filters = Filters(),
        limit: int = 200,
        offset: int = 0,
        keys: Iterable[str] | None = None,
        features: bool = False,
    ) -> tuple[list[SampleRow], int]:
        """Samples matching ``filters`` (oldest first) and how many match in all."""
        where, args = self._where(filters)
        if keys is not None:
            keys = list(keys)
            where.append(f"s.key IN ({','.join('?' * len(keys))})")
            args += keys
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        base = f"FROM samples s LEFT JOIN current c ON c.key = s.key {clause}"
        extra = ", s.phash, s.thumb, s.embedding, s.embedding_model" if features else ""
        with self._lock:
            total = self._conn.execute(f"SELECT COUNT(*) {base}", args).fetchone()[0]
            rows = self._conn.execute(
                f"SELECT s.key, s.device, s.date, s.sample_id, s.camera, s.ts, s.label, s.score, "
                f"s.policy, s.model, s.top, {_STATUS_SQL}, c.label, c.reviewer, c.decided_at"
                f"{extra} {base} ORDER BY s.ts, s.key LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        out = []
        for r in rows:
            row = SampleRow(*r[:10], json.loads(r[10]), *r[11:15])  # type: ignore[arg-type]
            if features:
                row.phash = _to_unsigned(r[15])
                row.thumb = None if r[16] is None else np.frombuffer(r[16], np.float32)
                row.embedding = None if r[17] is None else np.frombuffer(r[17], np.float32)
                row.embedding_model = r[18]
            out.append(row)
        return out, total

    @staticmethod
    def _where(f: Filters) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("device", f.device),
            ("camera", f.camera),
            ("label", f.label),
            ("policy", f.policy),
        ):
            if value:
                where.append(f"s.{column} = ?")
                args.append(value)
        if f.score_min is not None:
            where.append("s.score >= ?")
            args.append(f.score_min)
        if f.score_max is not None:
            where.append("s.score <= ?")
            args.append(f.score_max)
        if f.date_from:
            where.append("s.date >= ?")
            args.append(f.date_from)
        if f.date_to:
            where.append("s.date <= ?")
            args.append(f.date_to)
        if f.status == "reviewed":
            where.append(f"({_STATUS_SQL}) IN ('accepted', 'rejected')")
        elif f.status in STATUSES:
            where.append(f"({_STATUS_SQL}) = ?")
            args.append(f.status)
        elif f.status != "all":
            raise ValueError(f"unknown status {f.status!r}")
        return where, args

    def accepted_phashes(self) -> tuple[list[str], np.ndarray]:
        """Keys and 64-bit pHashes of the accepted samples (cheap: no thumbnails)."""
        rows = self._all(
            "SELECT s.key, s.phash FROM samples s JOIN current c ON c.key = s.key "
            "WHERE c.action IN ('accept', 'relabel') AND s.phash IS NOT NULL"
        )
        return [k for k, _ in rows], np.array([_to_unsigned(p) for _, p in rows], dtype=np.uint64)

    def row(self, key: str) -> SampleRow | None:
        rows, _ = self.query(Filters(status="all"), limit=1, keys=[key], features=True)
        return rows[0] if rows else None

    # -- decisions ---------------------------------------------------------------------------
    def decide(
        self,
        keys: list[str],
        action: str,
        reviewer: str,
        label: str | None = None,
        via: str = "page",
    ) -> list[Decision]:
        """Append one decision per sample; ``accept`` without a label takes the model's guess.

        ValueError for an unknown action or a relabel without a label; UnknownSample for a key
        that is not in the index.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
        if action == "relabel" and not label:
            raise ValueError("relabel needs a label")
        if action in ("reject", "reopen", "purge"):
            label = None
        stamp = now_iso()
        out: list[Decision] = []
        with self._tx() as conn:
            for key in keys:
                found = conn.execute(
                    "SELECT sample_id, label FROM samples WHERE key = ?", (key,)
                ).fetchone()
                if found is None:
                    raise UnknownSample(f"no sample {key} in the review index")
                sample_id, guess = found
                final = label if label else (guess if action == "accept" else None)
                if action == "accept" and not final:
                    raise ValueError(f"{key} has no guess to accept: relabel it")
                kind = "relabel" if action == "accept" and label and label != guess else action
                conn.execute(
                    "INSERT INTO decisions (key, sample_id, action, label, reviewer, decided_at, "
                    "via) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, sample_id, kind, final, reviewer, stamp, via),
                )
                out.append(Decision(key, kind, final, reviewer, stamp, via))
        return out

    def history(self, key: str) -> list[Decision]:
        rows = self._all(
            "SELECT key, action, label, reviewer, decided_at, via FROM decisions "
            "WHERE key = ? ORDER BY id",
            (key,),
        )
        return [Decision(*r) for r in rows]

    def states(self, keys: Iterable[str]) -> dict[str, SampleRow]:
        rows, _ = self.query(Filters(status="all"), limit=1_000_000, keys=keys)
        return {r.key: r for r in rows}

    # -- merges ------------------------------------------------------------------------------
    def record_merges(
        self, data_dir: Path, items: Iterable[tuple[str, str, str, str, str]]
    ) -> None:
        """(key, sample_id, label, path relative to data_dir, split) per merged sample."""
        stamp = now_iso()
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO merges (key, sample_id, label, data_dir, path, split, merged_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(k, s, lab, str(data_dir), p, sp, stamp) for k, s, lab, p, sp in items],
            )

    def merges(self, data_dir: Path) -> dict[str, tuple[str, str, str]]:
        """key -> (label, path, split) of the samples merged into ``data_dir`` (latest)."""
        rows = self._all(
            "SELECT key, label, path, split FROM merges WHERE data_dir = ? ORDER BY id",
            (str(data_dir),),
        )
        return {k: (lab, p, s) for k, lab, p, s in rows}

    # -- sessions ----------------------------------------------------------------------------
    def create_session(self, reviewer: str, ttl_s: float) -> tuple[str, str]:
        """A new login: (session id for the cookie, CSRF token). Only the id's hash is kept."""
        sid = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = time.time()
        with self._tx() as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            conn.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                (_hash_session(sid), reviewer, csrf, now, now, now + ttl_s),
            )
        return sid, csrf

    def session(self, sid: str, idle_s: float) -> Session | None:
        """The live session of a cookie, its idle timer reset; None when unknown or expired."""
        if not sid or len(sid) > 100:
            return None
        now = time.time()
        digest = _hash_session(sid)
        with self._lock:
            found = self._conn.execute(
                "SELECT reviewer, csrf, last_seen, expires_at FROM sessions WHERE id_hash = ?",
                (digest,),
            ).fetchone()
            if found is None:
                return None
            reviewer, csrf, last_seen, expires_at = found
            if now > expires_at or now - last_seen > idle_s:
                self._conn.execute("DELETE FROM sessions WHERE id_hash = ?", (digest,))
                return None
            if now - last_seen > 30:
                self._conn.execute(
                    "UPDATE sessions SET last_seen = ? WHERE id_hash = ?", (now, digest)
                )
        return Session(reviewer, csrf, expires_at)

    def end_session(self, sid: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM sessions WHERE id_hash = ?", (_hash_session(sid),))
