"""What the server did, per device: counters for ``GET /api/v1/stats`` and the batch log line.

Counters start at zero when the server starts (the inbox itself is the lasting record). Per
device: ``received`` (upload requests that carried its token) = ``stored`` + ``duplicates`` +
the sum of ``rejected`` (by reason); ``bytes`` counts the JPEG bytes stored (duplicates not
included).
Requests without a valid token have no device: they are counted under ``unauthenticated``.

Only the server's event-loop thread calls these methods, so they need no lock.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

KEPT = ("stored", "duplicate")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class DeviceCounters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    bytes: int = 0
    rejected: Counter = field(default_factory=Counter)
    last_upload: str | None = None

    def to_json(self) -> dict:
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "rejected": dict(sorted(self.rejected.items())),
            "bytes": self.bytes,
            "last_upload": self.last_upload,
        }


class IngestStats:
    def __init__(self) -> None:
        self.started_at = _now_iso()
        self._started = time.monotonic()
        self.devices: dict[str, DeviceCounters] = {}
        self.unauthenticated: Counter = Counter()
        self._batch: dict[str, Counter] = {}
        self._batch_start = time.monotonic()

    def _device(self, name: str) -> DeviceCounters:
        counters = self.devices.get(name)
        if counters is None:
            counters = self.devices[name] = DeviceCounters()
        return counters

    def _count(self, name: str, what: str) -> None:
        self._batch.setdefault(name, Counter())[what] += 1

    def accepted(self, device: str, stored: bool, nbytes: int) -> None:
        counters = self._device(device)
        counters.received += 1
        counters.last_upload = _now_iso()
        if stored:
            counters.stored += 1
            counters.bytes += nbytes
            self._count(device, "stored")
        else:
            counters.duplicates += 1
            self._count(device, "duplicate")

    def rejected(self, device: str | None, reason: str) -> None:
        if device is None:
            self.unauthenticated[reason] += 1
            self._count("(no valid token)", reason)
            return
        counters = self._device(device)
        counters.received += 1
        counters.rejected[reason] += 1
        self._count(device, reason)

    def snapshot(self, only: str | None = None) -> dict:
        """The stats document; ``only`` limits it to one device (what a device token sees)."""
        doc: dict = {
            "started_at": self.started_at,
            "uptime_s": round(time.monotonic() - self._started, 1),
        }
        if only is not None:
            counters = self.devices.get(only) or DeviceCounters()
            doc["devices"] = {only: counters.to_json()}
            return doc
        doc["devices"] = {name: c.to_json() for name, c in sorted(self.devices.items())}
        doc["unauthenticated"] = dict(sorted(self.unauthenticated.items()))
        return doc

    def take_batch(self) -> str | None:
        """One line for what happened since the last call (None when nothing did), e.g.
        ``12 stored, 2 rejected in 10.0 s: pi-a 10 stored; pi-b 2 stored, rejected 2 bad_image``."""
        now = time.monotonic()
        batch, self._batch = self._batch, {}
        elapsed, self._batch_start = now - self._batch_start, now
        if not batch:
            return None
        totals: Counter = Counter()
        for counts in batch.values():
            for what, n in counts.items():
                key = what if what in KEPT else "rejected"
                totals[key] += n
        head = ", ".join(
            f"{totals[k]} {k}" for k in ("stored", "duplicate", "rejected") if totals[k]
        )
        parts = []
        for name, counts in sorted(batch.items()):
            done = [f"{counts[k]} {k}" for k in ("stored", "duplicate") if counts[k]]
            refused = [f"{n} {k}" for k, n in sorted(counts.items()) if k not in KEPT]
            parts.append(
                f"{name} "
                + ", ".join(done + (["rejected " + " ".join(refused)] if refused else []))
            )
        return f"{head} in {elapsed:.1f} s: " + "; ".join(parts)
