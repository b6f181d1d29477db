"""Bundle archives: a ``.tar.gz`` holding model.tflite, labels.txt and model.json, flat.

``pack`` (the operator's side, ``edgecam-convert sign``) writes them reproducibly: sorted
names, mode 0644, owner 0, time 0, so the same bundle gives the same archive bytes. ``unpack``
(the device) takes only those three names as regular files, each once, within a size budget:
anything else (a path with a folder, a link, a device file, a fourth name) refuses the archive.
The archive is untrusted until the signature checks out: nothing it names becomes a path.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import zlib
from pathlib import Path

from device.rollout.errors import RolloutError
from device.rollout.signing import BUNDLE_FILES


def pack(folder: Path, out: Path) -> Path:
    """Write ``folder``'s bundle files into the archive ``out`` (reproducible bytes)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in BUNDLE_FILES:
            path = folder / name
            if not path.is_file():
                continue
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as f:
                tar.addfile(info, f)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(raw.getvalue())
    tmp.replace(out)
    return out


_TAR_OVERHEAD = 1 << 20  # headers and padding around the files


class _TooLarge(Exception):
    pass


class _Capped(io.RawIOBase):
    """Reads from ``raw`` and fails once more than ``limit`` bytes came out: a small .tar.gz
    cannot unpack into a disk-filling or memory-filling stream (tar headers included)."""

    def __init__(self, raw: io.BufferedIOBase | gzip.GzipFile, limit: int):
        self._raw = raw
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self._raw.read(min(len(buffer), self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise _TooLarge
        buffer[: len(data)] = data
        return len(data)


def unpack(archive: Path, dest: Path, max_bytes: int) -> list[str]:
    """Extract the bundle files of ``archive`` into the (empty) folder ``dest``; return their
    names. RolloutError (stage "verify") for anything but a flat bundle within ``max_bytes``."""

    def refuse(why: str) -> RolloutError:
        return RolloutError(
            "verify",
            f"the bundle archive {why}",
            "make the archive with `edgecam-convert sign BUNDLE` (a flat .tar.gz of "
            f"{', '.join(BUNDLE_FILES)})",
        )

    names: list[str] = []
    total = 0
    try:
        with (
            gzip.open(archive, "rb") as gz,
            tarfile.open(fileobj=_Capped(gz, max_bytes + _TAR_OVERHEAD), mode="r|") as tar,
        ):
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isdir() and name in ("", "."):
                    continue
                if name not in BUNDLE_FILES:
                    shown = (
                        name if name.isascii() and name.isprintable() and len(name) < 80 else "?"
                    )
                    raise refuse(f"holds {shown!r}; only {', '.join(BUNDLE_FILES)} may be in it")
                if not member.isreg():
                    raise refuse(f"holds {name} as a link or special file, not a regular file")
                if name in names:
                    raise refuse(f"holds {name} twice")
                total += member.size
                if total > max_bytes:
                    raise refuse(f"unpacks to more than {max_bytes:,} bytes (rollout.max_mb)")
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with source, (dest / name).open("xb") as out:
                    shutil.copyfileobj(source, out)
                    copied = out.tell()
                if copied != member.size:
                    raise refuse(f"is cut short in {name}")
                names.append(name)
    except _TooLarge:
        raise refuse(f"unpacks to more than {max_bytes:,} bytes (rollout.max_mb)") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise refuse(f"is not a readable .tar.gz ({type(exc).__name__})") from None
    if BUNDLE_FILES[0] not in names:
        raise refuse(f"has no {BUNDLE_FILES[0]}")
    return names
