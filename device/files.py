"""Reading the small files a user hands us (configs, labels, manifests, images) with one set of
clear answers: missing, a folder, not a regular file, unreadable, a link loop, too large, binary
or not UTF-8. Each answer names the file and says what to do; no traceback reaches the user.

Text is read as UTF-8 with an optional byte-order mark (``utf-8-sig``): editors on Windows
write one, and it must not end up inside the first label or key.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from device.errors import EdgecamError


def read_bytes(
    path: str | Path,
    what: str,
    error: type[EdgecamError],
    *,
    max_bytes: int,
    missing_hint: str | None = None,
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; ``error`` saying why not otherwise.

    ``what`` names the file in messages ("config file", "labels file", ...).
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}", missing_hint) from None
    except OSError as exc:
        raise _os_error(error, what, path, exc) from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {path} is a folder, not a file", missing_hint)
    if not stat.S_ISREG(info.st_mode):
        raise error(
            f"{what} {path} is not a regular file (a device, pipe or socket)",
            "point it at a file",
        )
    if info.st_size > max_bytes:
        raise error(
            f"{what} {path} is too large ({info.st_size:,} bytes; at most {max_bytes:,})",
            f"check that this is the right file ({what}s are much smaller)",
        )
    try:
        with path.open("rb") as f:
            # not read(max_bytes + 1): that allocates max_bytes at once (1 GB for a model),
            # which a Pi Zero's 512 MB refuses; the file's size, +1 to see that it grew
            data = f.read(min(max_bytes, info.st_size) + 1)
            while len(data) <= max_bytes and len(data) > info.st_size:  # it grew meanwhile
                more = f.read(min(1 << 20, max_bytes + 1 - len(data)))
                if not more:
                    break
                data += more
    except OSError as exc:
        raise _os_error(error, what, path, exc) from None
    if len(data) > max_bytes:  # grew while we read it
        raise error(f"{what} {path} is too large (more than {max_bytes:,} bytes)")
    return data


def read_text(
    path: str | Path,
    what: str,
    error: type[EdgecamError],
    *,
    max_bytes: int = 1 << 20,
    missing_hint: str | None = None,
) -> str:
    """A UTF-8 text file (a byte-order mark is skipped); ``error`` for binary or non-UTF-8 data."""
    data = read_bytes(path, what, error, max_bytes=max_bytes, missing_hint=missing_hint)
    return decode_text(data, f"{what} {path}", error)


def decode_text(data: bytes, where: str, error: type[EdgecamError]) -> str:
    """Decode UTF-8 (with or without a byte-order mark), refusing binary data."""
    if b"\x00" in data:
        raise error(
            f"{where} is not a text file (it contains NUL bytes)",
            "check the path: this looks like a binary file",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
            "save the file as UTF-8",
        ) from None


def _os_error(error: type[EdgecamError], what: str, path: Path, exc: OSError) -> EdgecamError:
    if exc.errno == errno.EACCES or isinstance(exc, PermissionError):
        return error(
            f"cannot read {what} {path}: permission denied",
            "make it readable by the user that runs edgecam (chmod / chown)",
        )
    if exc.errno == errno.ELOOP:
        return error(
            f"cannot read {what} {path}: a loop of symbolic links",
            "point it at the real file (ls -l shows where each link goes)",
        )
    if exc.errno == errno.EISDIR:
        return error(f"{what} {path} is a folder, not a file")
    return error(f"cannot read {what} {path}: {exc.strerror or exc}")


def is_readable_file(path: str | Path) -> bool:
    """True when ``path`` is a regular file (following links) that exists."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
