"""Where a device process's memory goes, and keeping frame buffers from bloating the heap.

``breakdown(pid)`` reads ``/proc/<pid>/smaps`` (Linux) and groups the resident set by what
mapped it: the Python runtime, numpy, OpenCV (with its FFmpeg), LiteRT, pydantic, OpenSSL,
SQLite, other libraries, and anonymous memory (Python objects, the interpreter's tensor arena
and packed weights, frame buffers, thread stacks). The device's metrics carry it
(``memory_mb``), and ``edgecam-device bench`` reports it after the loop.

``tune_malloc()``: a frame is one or two arrays of hundreds of KB to a few MB. glibc's malloc
raises its mmap threshold after the first such block is freed, and from then on carves frames
out of its heap, where freed fragments stay resident. A fixed threshold keeps every frame an
mmap of its own, returned to the system when freed: a few MB less, and flat over days.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
import sys
from collections import Counter

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept fixed

# (group, pattern on the mapping's path), first match wins
GROUPS = [
    ("python", re.compile(r"libpython|/python3[.\d]*/lib-dynload/|/bin/python")),
    ("numpy", re.compile(r"/numpy(\.libs)?/|libopenblas|libgfortran|scipy_openblas")),
    ("opencv", re.compile(r"/cv2/|opencv_python[\w-]*\.libs|libopencv|libav|libsw|libx26")),
    ("litert", re.compile(r"ai_edge_litert|tflite_runtime|tensorflow|libedgetpu")),
    ("pydantic", re.compile(r"pydantic_core")),
    ("openssl", re.compile(r"libssl|libcrypto|_ssl\.|_hashlib\.")),
    ("sqlite", re.compile(r"sqlite3")),
    ("anonymous", re.compile(r"^\[(heap|anon|stack)[^\]]*\]$|^$")),
]


def breakdown(pid: int | str = "self") -> dict[str, float]:
    """Resident MB by group (GROUPS, then ``other``), plus ``total``; empty where /proc is
    not readable (not Linux)."""
    sizes: Counter[str] = Counter()
    group = "other"
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                    parts = line.split(None, 5)
                    path = parts[5].strip() if len(parts) > 5 else ""
                    group = next((g for g, rx in GROUPS if rx.search(path)), "other")
                elif line.startswith("Rss:"):
                    sizes[group] += int(line.split()[1])
    except OSError:
        return {}
    out = {g: round(kb / 1024, 1) for g, kb in sizes.most_common()}
    out["total"] = round(sum(sizes.values()) / 1024, 1)
    return out


def tune_malloc() -> bool:
    """Keep frame-sized blocks out of glibc's heap (module docstring); False where this is
    not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError) as exc:  # musl, or no mallopt
        log.debug("cannot tune malloc: %s", exc)
        return False
