"""The durable store-and-forward queue: alert messages wait in SQLite until the broker has them.

Every alert message (event, snapshot, rule state) is written here *before* it is published; the
forwarder deletes an entry only when the broker acknowledged it (QoS 1 PUBACK). Entries keep
their insertion order (``id``), so delivery after an outage or a restart is in the original
order, and payloads carry their original times. Retained "latest value" messages (a camera's
snapshot, a rule's state) have a ``key``: a newer one replaces an undelivered older one.

The queue is bounded by count, size and age; what has to go is dropped oldest first, logged
and counted (``stats()``). The file is created on first use, so a device without alerts leaves
no file behind. SQLite in WAL mode with ``synchronous=NORMAL`` survives a killed process; one
connection, guarded by a lock, is shared by the producer and the forwarder thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key TEXT,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_key ON outbox(key);
CREATE TABLE IF NOT EXISTS open_events (
    event_id TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class OutboxError(Exception):
    """The outbox file cannot be opened or written."""


@dataclass(frozen=True)
class Entry:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str
    created: float


@dataclass(frozen=True)
class Message:
    """A message to queue."""

    topic: str
    payload: bytes
    kind: str  # alert | snapshot | state | ...
    qos: int = 1
    retain: bool = False
    key: str | None = None  # a newer message with the same key replaces an undelivered one


class Outbox:
    def __init__(
        self,
        path: str | Path,
        max_messages: int = 10000,
        max_mb: float = 200.0,
        max_age_h: float = 168.0,
    ):
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.max_age_s = max_age_h * 3600.0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.enqueued = 0
        self.delivered = 0
        self.superseded = 0
        self.dropped: dict[str, int] = {}
        self.recovered_corrupt = 0
        if self.path.exists():
            self._open()  # an outbox left by an earlier run: deliver what it holds

    # -- storage -----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("database disk image is malformed (quick_check)")
            db.executescript(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                try:
                    db = self._connect()
                except sqlite3.OperationalError:
                    raise  # permissions, a full disk, a lock: not the file's fault
                except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
                    self._move_aside(exc)
                    db = self._connect()
            except (OSError, sqlite3.Error) as exc:
                raise OutboxError(f"cannot open the alert outbox {self.path}: {exc}") from exc
            self._db = db
            pending = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            if pending:
                log.info(
                    "outbox %s: %d undelivered message(s) from an earlier run", self.path, pending
                )
        return self._db

    def _move_aside(self, exc: sqlite3.DatabaseError) -> None:
        """Keep a corrupted file for inspection under a timestamped name; start a fresh one."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):  # they belong to the damaged file
            extra = self.path.with_name(self.path.name + suffix)
            if extra.exists():
                os.replace(extra, aside.with_name(aside.name + suffix))
        self.recovered_corrupt += 1
        log.error(
            "alert outbox %s is corrupted (%s): moved it aside to %s and started a new, empty "
            "outbox; undelivered alerts in the old file are not sent",
            self.path,
            exc,
            aside.name,
        )

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- producer side ---------------------------------------------------------------------------
    def put_many(self, messages: list[Message], now: float | None = None) -> list[int]:
        """Store messages in one transaction, in order; returns their ids."""
        now = time.time() if now is None else now
        ids = []
        with self._lock:
            db = self._open()
            with db:  # one transaction
                db.execute("BEGIN IMMEDIATE")
                for m in messages:
                    if m.key is not None:
                        cur = db.execute("DELETE FROM outbox WHERE key = ?", (m.key,))
                        self.superseded += cur.rowcount
                    cur = db.execute(
                        "INSERT INTO outbox (topic, payload, qos, retain, kind, key, created, size)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            m.topic,
                            sqlite3.Binary(m.payload),
                            m.qos,
                            int(m.retain),
                            m.kind,
                            m.key,
                            now,
                            len(m.payload) + len(m.topic),
                        ),
                    )
                    ids.append(int(cur.lastrowid or 0))
                self.enqueued += len(messages)
                self._enforce_limits(db, now)
        return ids

    def put(self, message: Message) -> int:
        return self.put_many([message])[0]

    def _enforce_limits(self, db: sqlite3.Connection, now: float) -> None:
        """Drop oldest entries beyond the age, count and size bounds (inside a transaction)."""
        dropped: dict[str, int] = {}

        def drop(rows: list[tuple[int, str]], why: str) -> None:
            for row_id, kind in rows:
                db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                dropped[kind] = dropped.get(kind, 0) + 1
            if rows:
                log.warning(
                    "outbox %s: dropped %d undelivered message(s), oldest first (%s)",
                    self.path,
                    len(rows),
                    why,
                )

        old = db.execute(
            "SELECT id, kind FROM outbox WHERE created < ? ORDER BY id", (now - self.max_age_s,)
        ).fetchall()
        drop(old, f"older than {self.max_age_s / 3600:g} h")
        count, size = self._totals(db)
        if count > self.max_messages:
            excess_rows = count - self.max_messages
            drop(
                db.execute(
                    "SELECT id, kind FROM outbox ORDER BY id LIMIT ?", (excess_rows,)
                ).fetchall(),
                f"more than {self.max_messages} messages",
            )
            size = self._totals(db)[1]
        if size > self.max_bytes:
            rows, excess = [], size - self.max_bytes
            for row_id, kind, row_size in db.execute(
                "SELECT id, kind, size FROM outbox ORDER BY id"
            ):
                if excess <= 0:
                    break
                rows.append((row_id, kind))
                excess -= row_size
            drop(rows, f"more than {self.max_bytes / 1048576:.3g} MB")
        for kind, n in dropped.items():
            self.dropped[kind] = self.dropped.get(kind, 0) + n
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (f"dropped_{kind}", n),
            )

    @staticmethod
    def _totals(db: sqlite3.Connection) -> tuple[int, int]:
        count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        return int(count), int(size)

    # -- forwarder side --------------------------------------------------------------------------
    def pending_after(self, last_id: int, limit: int) -> list[Entry]:
        """Undelivered entries with id > last_id, oldest first."""
        with self._lock:
            if self._db is None:
                return []
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, kind, created FROM outbox"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, limit),
            ).fetchall()
        return [Entry(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6]) for r in rows]

    def ack(self, ids: list[int]) -> None:
        """The broker has these: delete them."""
        if not ids:
            return
        with self._lock:
            if self._db is None:
                return
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for row_id in ids:
                    cur = self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                    self.delivered += cur.rowcount

    def pending_count(self) -> int:
        with self._lock:
            if self._db is None:
                return 0
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # -- events open across a crash --------------------------------------------------------------
    def set_open_event(self, event_id: str, data: str | None) -> None:
        """Remember an active event (data) or forget it (None), for crash recovery."""
        with self._lock:
            db = self._open()
            if data is None:
                db.execute("DELETE FROM open_events WHERE event_id = ?", (event_id,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO open_events (event_id, data) VALUES (?, ?)",
                    (event_id, data),
                )

    def open_events(self) -> list[tuple[str, str]]:
        with self._lock:
            if self._db is None:
                return []
            return list(self._db.execute("SELECT event_id, data FROM open_events"))

    def stats(self) -> dict[str, object]:
        with self._lock:
            if self._db is None:
                pending, size, oldest = 0, 0, None
            else:
                pending, size, oldest = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM outbox"
                ).fetchone()
        return {
            "pending": pending,
            "pending_kb": round(size / 1024, 1),
            "oldest_age_s": round(time.time() - oldest, 1) if oldest else None,
            "enqueued": self.enqueued,
            "delivered": self.delivered,
            "superseded": self.superseded,
            "dropped": dict(self.dropped),
            "recovered_corrupt": self.recovered_corrupt,
        }
