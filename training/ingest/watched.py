"""The server's small private files (tokens, reviewers): written atomically and readable by
their owner only, and noticed when they change, without a restart."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

Signature = tuple[int, int, int]  # mtime_ns, size, inode


def file_signature(path: Path) -> Signature | None:
    """What identifies this version of the file; None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class Change:
    exists: bool  # False: the file is gone


class WatchedFile:
    """``poll()`` looks at the file at most every ``check_every_s`` seconds and returns a Change
    once per new version of it (to exactly one caller when threads poll at once), else None.
    ``seen=True``: the version on disk now counts as already read."""

    def __init__(self, path: Path, check_every_s: float, *, seen: bool):
        self.path = path
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._signature = file_signature(path) if seen else None
        self._checked = time.monotonic() if seen else -1e9

    def poll(self) -> Change | None:
        if time.monotonic() - self._checked < self.check_every_s:
            return None
        with self._lock:
            self._checked = time.monotonic()
            signature = file_signature(self.path)
            if signature == self._signature:
                return None
            self._signature = signature
        return Change(exists=signature is not None)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file, fsync, rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
