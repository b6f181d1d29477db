"""Where samples land: the Store interface and :func:`open_store` (a folder or ``s3://``).

The layout is the same in both stores, one key per file, named by the server from validated
values only::

    <device>/<YYYY-MM-DD>/<sample_id>.jpg    the JPEG, byte for byte as the device sent it
    <device>/<YYYY-MM-DD>/<sample_id>.json   the sidecar (edgecam.sample/1, re-serialised)

The date is the day of the sample's ``ts`` (UTC). The sidecar is written *after* the JPEG and
is the mark that a sample is complete: a sample whose sidecar exists is stored; a JPEG without
its sidecar (a crash between the two) is completed by the next upload of the same sample.
``put`` is idempotent: the same sample (device, day, content hash) sent again is answered
"duplicate" and nothing is written; the sidecar is created exclusively, so of two uploads of
the same sample racing each other exactly one reports "stored".

Reads (for the review page): :meth:`Store.devices`, :meth:`Store.dates`, :meth:`Store.refs`,
:meth:`Store.samples`, :meth:`Store.read_meta`, :meth:`Store.read_image`. Every argument is
checked (:class:`SampleRef`), so a device or date from a web form cannot walk out of the inbox.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date as Date
from pathlib import Path

from pydantic import ValidationError

from device.names import check_safe_name
from device.samples import SampleMeta
from training.ingest.errors import IngestError, SampleNotFound, StoreError

_DATE = re.compile(r"^\d{4}-\d\d-\d\d$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
IMAGE = "jpg"
META = "json"


def check_date(value: str) -> str:
    if not _DATE.match(value):
        raise ValueError(f"date {value[:40]!r} is not YYYY-MM-DD")
    try:
        Date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"date {value!r} is not a day of the calendar") from None
    return value


@dataclass(frozen=True, order=True)
class SampleRef:
    """The address of one sample in a store; ValueError when a part is not a safe name."""

    device: str
    date: str
    sample_id: str

    def __post_init__(self) -> None:
        check_safe_name(self.device, "device")
        check_date(self.date)
        if not _SHA256.match(self.sample_id):
            raise ValueError(f"sample_id {self.sample_id[:80]!r} is not a sha256 (64 hex digits)")

    @classmethod
    def of(cls, meta: SampleMeta) -> SampleRef:
        return cls(meta.device, meta.date, meta.sample_id)

    def key(self, ext: str) -> str:
        """``<device>/<date>/<sample_id>.<ext>``, relative to the store's root."""
        return f"{self.device}/{self.date}/{self.sample_id}.{ext}"


def meta_bytes(meta: SampleMeta) -> bytes:
    """The sidecar as the store writes it: the validated record, re-serialised."""
    return meta.model_dump_json(by_alias=True, exclude_none=True, indent=1).encode() + b"\n"


class Store(ABC):
    """An inbox of samples. Implementations provide the five key operations below; the layout,
    idempotence and reads are defined here once. Methods may be called from several threads."""

    url: str
    """Where the store is, for logs (a folder, or ``s3://bucket/prefix``)."""

    # -- what an implementation provides -----------------------------------------------------
    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _write(self, key: str, data: bytes) -> None:
        """Write ``key`` atomically (readers see all of it or nothing), replacing it."""

    @abstractmethod
    def _create(self, key: str, data: bytes) -> bool:
        """Write ``key`` atomically only if it does not exist; False when it already did.
        Durable when it returns (the device deletes its copy on our answer)."""

    @abstractmethod
    def _read(self, key: str) -> bytes:
        """The bytes of ``key``; SampleNotFound when there is no such key."""

    @abstractmethod
    def _list(self, prefix: str) -> tuple[list[str], list[str]]:
        """(sub-folder names, file names) directly under ``prefix`` (``""`` or ending in ``/``)."""

    def _delete(self, key: str) -> None:
        """Remove ``key`` (no error when it is gone). Only ``edgecam-train purge`` deletes."""
        raise StoreError(f"{type(self).__name__} cannot delete samples")

    def check(self) -> None:  # noqa: B027 - optional hook
        """Raise StoreError when the store cannot be used (run once, before serving)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- writes ------------------------------------------------------------------------------
    def put(self, meta: SampleMeta, jpeg: bytes) -> bool:
        """Store a validated sample; True when stored now, False when it was already there."""
        ref = SampleRef.of(meta)
        if self._exists(ref.key(META)):
            return False
        self._write(ref.key(IMAGE), jpeg)  # same name, same bytes: replacing it is harmless
        return self._create(ref.key(META), meta_bytes(meta))

    def delete(self, ref: SampleRef) -> None:
        """Delete a sample (the sidecar first: a JPEG left by a crash is ignored by readers)."""
        self._delete(ref.key(META))
        self._delete(ref.key(IMAGE))

    def contains(self, ref: SampleRef) -> bool:
        return self._exists(ref.key(META))

    # -- reads (the review page) -------------------------------------------------------------
    def devices(self) -> list[str]:
        """Device ids that have samples, sorted."""
        return sorted(d for d in self._list("")[0] if _safe(check_safe_name, d))

    def dates(self, device: str) -> list[str]:
        """Days (YYYY-MM-DD) with samples of ``device``, sorted."""
        check_safe_name(device, "device")
        return sorted(d for d in self._list(f"{device}/")[0] if _safe(check_date, d))

    def refs(self, device: str | None = None, date: str | None = None) -> Iterator[SampleRef]:
        """Complete samples (those with a sidecar), by device, day and id; filters optional."""
        for dev in [device] if device is not None else self.devices():
            for day in [date] if date is not None else self.dates(dev):
                SampleRef(dev, day, "0" * 64)  # check the filters before using them
                names = self._list(f"{dev}/{day}/")[1]
                ids = sorted(n[: -len(META) - 1] for n in names if n.endswith(f".{META}"))
                yield from (SampleRef(dev, day, i) for i in ids if _SHA256.match(i))

    def samples(
        self, device: str | None = None, date: str | None = None
    ) -> Iterator[tuple[SampleRef, SampleMeta]]:
        """Complete samples with their sidecars (see :meth:`refs`)."""
        for ref in self.refs(device, date):
            yield ref, self.read_meta(ref)

    def read_meta(self, ref: SampleRef) -> SampleMeta:
        data = self._read(ref.key(META))
        try:
            return SampleMeta.model_validate_json(data)
        except ValidationError as exc:
            raise StoreError(f"the sidecar {self.url}/{ref.key(META)} is not valid: {exc}") from exc

    def read_image(self, ref: SampleRef) -> bytes:
        return self._read(ref.key(IMAGE))


def _safe(check, value: str) -> bool:
    try:
        check(value)
    except ValueError:
        return False
    return True


def open_store(inbox: str, s3_endpoint: str | None = None) -> Store:
    """The store an inbox names: ``s3://bucket[/prefix]`` or a local folder (created)."""
    if inbox.startswith("s3://"):
        from training.ingest.store_s3 import S3Store

        return S3Store.from_url(inbox, endpoint_url=s3_endpoint)
    if "://" in inbox:
        raise IngestError(
            f"inbox {inbox!r}: only local folders and s3://bucket/prefix are supported",
            "give a folder, or s3://bucket/prefix for S3-compatible storage",
        )
    if s3_endpoint:
        raise IngestError("--s3-endpoint is for an s3:// inbox", "drop it, or use s3://...")
    from training.ingest.store_local import LocalStore

    return LocalStore(Path(inbox))


__all__ = ["SampleNotFound", "SampleRef", "Store", "StoreError", "open_store"]
