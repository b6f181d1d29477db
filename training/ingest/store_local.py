"""The inbox on the local disk: ``INBOX/<device>/<YYYY-MM-DD>/<sample_id>.jpg|.json``.

Every file is written to a temporary name in its own folder (``.<name>.<random>.tmp``),
flushed to the disk (fsync), then renamed into place, and the folder is synced: a reader (or a
crash) never sees half a file, and a sample the server answered for survives a power cut. The
sidecar is linked into place (``link`` fails when the name exists) rather than renamed, which
makes "create unless it exists" atomic: of two uploads of one sample exactly one stores it.
Temporary files left by a crash start with ``.`` and end with ``.tmp``; listings skip them and
they are safe to delete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from training.ingest.errors import SampleNotFound, StoreError
from training.ingest.store import Store

_FILE_MODE = 0o644


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(Store):
    def __init__(self, root: Path):
        self.root = root.expanduser().resolve()
        self.url = str(self.root)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test.{secrets.token_hex(4)}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(
                f"cannot write to the inbox {self.root}: {exc.strerror or exc}",
                "choose a folder this user may write to",
            ) from None

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))  # keys come from SampleRef only

    def _folder(self, path: Path) -> Path:
        """The folder of ``path``, made (and its parent synced) when it is new."""
        folder = path.parent
        if not folder.is_dir():
            missing = [p for p in (folder, folder.parent) if not p.is_dir()]
            folder.mkdir(parents=True, exist_ok=True)
            for made in missing:  # a new folder's name lives in its parent
                _fsync_dir(made.parent)
        return folder

    def _temp(self, path: Path, data: bytes) -> Path:
        """``data`` in a synced temporary file beside ``path``."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        try:
            with open(fd, "wb", closefd=True) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            self._folder(path)
            os.replace(self._temp(path, data), path)
            # the folder is synced by the _create that always follows (same folder)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def _create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            folder = self._folder(path)
            tmp = self._temp(path, data)
            try:
                os.link(tmp, path)
                created = True
            except FileExistsError:
                created = False
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            _fsync_dir(folder)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return created

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot delete {path}: {exc.strerror or exc}") from exc

    def _read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise SampleNotFound(f"no sample file {path}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def _list(self, prefix: str) -> tuple[list[str], list[str]]:
        folders: list[str] = []
        files: list[str] = []
        try:
            with os.scandir(self._path(prefix.rstrip("/")) if prefix else self.root) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.name)
                    elif entry.is_file(follow_symlinks=False):
                        files.append(entry.name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot list {self.root / prefix}: {exc.strerror or exc}") from exc
        return folders, files
