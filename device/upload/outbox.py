"""Samples waiting on the device for the ingest server: a folder of ``<sample_id>.jpg`` +
``<sample_id>.json`` pairs.

Each file is written atomically (a temporary name, fsync, rename); the sidecar is written last
and is the mark of a complete sample, so a sample cut short by a crash or a power loss is
cleaned up at the next start, never sent half. The same JPEG twice is one sample (the name is
its sha256). The folder is bounded by count and size: the oldest samples are dropped first,
logged and counted. A sample leaves the folder only when the server confirmed it (``remove``)
or refused it for good (``reject``: moved to ``rejected/`` with the server's answer, itself
bounded). One lock guards the index; the sampling writer adds, the uploader takes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_NAME = re.compile(r"^([0-9a-f]{64})\.(jpg|json)$")
REJECTED = "rejected"


@dataclass(frozen=True)
class Pending:
    sample_id: str
    created: float  # wall clock, when the sample was stored
    size: int  # bytes of the JPEG and the sidecar


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, synced before the rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class SampleOutbox:
    def __init__(
        self,
        root: str | Path,
        max_samples: int = 2000,
        max_mb: float = 200.0,
        max_rejected: int = 100,
    ):
        self.root = Path(root)
        self.max_samples = max_samples
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.max_rejected = max_rejected
        self._cond = threading.Condition()
        self._index: dict[str, Pending] = {}  # oldest first
        self._bytes = 0
        self.stored = 0
        self.dropped = 0
        self.delivered = 0
        self.rejected = 0
        self.cleaned = 0  # incomplete files removed at start
        if self.root.is_dir():
            self._scan()

    # -- start -----------------------------------------------------------------------------------
    def _scan(self) -> None:
        """Index the complete samples an earlier run left; remove incomplete ones."""
        found: dict[str, dict[str, os.stat_result]] = {}
        for entry in os.scandir(self.root):
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.endswith(".tmp"):
                self._unlink(Path(entry.path))
                self.cleaned += 1
                continue
            match = _NAME.match(entry.name)
            if match:
                found.setdefault(match[1], {})[match[2]] = entry.stat()
        items = []
        for sample_id, parts in found.items():
            if len(parts) != 2:  # cut short before its sidecar was written, or half removed
                for ext in parts:
                    self._unlink(self.root / f"{sample_id}.{ext}")
                self.cleaned += 1
                continue
            size = parts["jpg"].st_size + parts["json"].st_size
            items.append(Pending(sample_id, parts["json"].st_mtime, size))
        for item in sorted(items, key=lambda p: (p.created, p.sample_id)):
            self._index[item.sample_id] = item
            self._bytes += item.size
        if self.cleaned:
            log.info("samples %s: removed %d incomplete sample(s)", self.root, self.cleaned)
        if self._index:
            log.info(
                "samples %s: %d sample(s) from an earlier run wait for upload",
                self.root,
                len(self._index),
            )
        with self._cond:
            self._enforce_bounds()

    # -- the sampling writer -----------------------------------------------------------------------
    def put(self, sample_id: str, jpeg: bytes, meta: bytes) -> bool:
        """Store a sample (atomically, sidecar last); False when it is already waiting."""
        with self._cond:
            if sample_id in self._index:
                return False
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / f"{sample_id}.jpg", jpeg)
        write_atomic(self.root / f"{sample_id}.json", meta)
        _sync_dir(self.root)
        with self._cond:
            item = Pending(sample_id, time.time(), len(jpeg) + len(meta))
            self._index[sample_id] = item
            self._bytes += item.size
            self.stored += 1
            self._enforce_bounds()
            self._cond.notify_all()
        return True

    def _enforce_bounds(self) -> None:
        """Drop the oldest samples beyond the count and size bounds (under the lock)."""
        gone = 0
        while self._index and (len(self._index) > self.max_samples or self._bytes > self.max_bytes):
            oldest = next(iter(self._index))
            self._forget(oldest)
            self._delete(oldest)
            gone += 1
        if gone:
            self.dropped += gone
            log.warning(
                "samples %s: dropped %d waiting sample(s), oldest first (bounds: %d samples, "
                "%.3g MB)",
                self.root,
                gone,
                self.max_samples,
                self.max_bytes / 1048576,
            )

    # -- the uploader ----------------------------------------------------------------------------
    def oldest(self) -> Pending | None:
        with self._cond:
            return next(iter(self._index.values()), None)

    def wait(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait until a sample waits (True), ``stop`` is set (after ``notify``), or ``timeout``
        passed."""
        with self._cond:
            self._cond.wait_for(
                lambda: bool(self._index) or (stop is not None and stop.is_set()), timeout
            )
            return bool(self._index)

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def read(self, sample_id: str) -> tuple[bytes, bytes] | None:
        """The JPEG and sidecar bytes; None when the sample is gone (dropped, or removed by
        hand: then it is forgotten)."""
        try:
            jpeg = (self.root / f"{sample_id}.jpg").read_bytes()
            meta = (self.root / f"{sample_id}.json").read_bytes()
        except FileNotFoundError:
            with self._cond:
                self._forget(sample_id)
            return None
        return jpeg, meta

    def remove(self, sample_id: str) -> None:
        """The server has it: delete it."""
        with self._cond:
            if self._forget(sample_id):
                self.delivered += 1
            self._delete(sample_id)

    def reject(self, sample_id: str, answer: dict[str, Any]) -> None:
        """The server will never take it: keep it in rejected/ with the answer, for a person."""
        aside = self.root / REJECTED
        with self._cond:
            if not self._forget(sample_id):
                return
            self.rejected += 1
            if self.max_rejected == 0:
                self._delete(sample_id)
                return
            try:
                aside.mkdir(exist_ok=True)
                for ext in ("jpg", "json"):
                    os.replace(self.root / f"{sample_id}.{ext}", aside / f"{sample_id}.{ext}")
                write_atomic(
                    aside / f"{sample_id}.answer.json", json.dumps(answer, indent=1).encode()
                )
            except OSError as exc:
                log.warning("samples: cannot move %s to %s: %s", sample_id, aside, exc)
                self._delete(sample_id)
            self._trim_rejected(aside)

    def _trim_rejected(self, aside: Path) -> None:
        try:
            files = sorted(
                (p.stat().st_mtime, p.name.split(".")[0])
                for p in aside.iterdir()
                if p.name.endswith(".answer.json")
            )
        except OSError:
            return
        for _, sample_id in files[: max(0, len(files) - self.max_rejected)]:
            for ext in ("jpg", "json", "answer.json"):
                self._unlink(aside / f"{sample_id}.{ext}")

    # -- files and index ---------------------------------------------------------------------------
    def _forget(self, sample_id: str) -> bool:
        item = self._index.pop(sample_id, None)
        if item is None:
            return False
        self._bytes -= item.size
        return True

    def _delete(self, sample_id: str) -> None:
        # the sidecar first: a sample without it is incomplete and cleaned up at the next start
        for ext in ("json", "jpg"):
            self._unlink(self.root / f"{sample_id}.{ext}")

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("samples: cannot delete %s: %s", path, exc)

    def __len__(self) -> int:
        with self._cond:
            return len(self._index)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            oldest = next(iter(self._index.values()), None)
            return {
                "pending": len(self._index),
                "pending_kb": round(self._bytes / 1024, 1),
                "oldest_age_s": round(time.time() - oldest.created, 1) if oldest else None,
                "stored": self.stored,
                "dropped": self.dropped,
                "delivered": self.delivered,
                "rejected": self.rejected,
            }
