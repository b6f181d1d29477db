"""Alert snapshots: JPEG files under ``<dir>/<camera>/`` with a retention policy.

Encoding and writing run in the alert worker thread, never in the inference thread. Every
snapshot passes the privacy guard first (device.privacy: the camera's masks, face redaction), so
no unredacted snapshot is written or published; when privacy cannot be applied the snapshot is
withheld (``Withheld``). Retention deletes the oldest files first until every bound holds: file
count, age, folder size and free disk space.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from device.alerts.config import SnapshotConfig

if TYPE_CHECKING:
    from device.privacy.guard import PrivacyGuard
    from device.samples import Redaction

log = logging.getLogger(__name__)


class SnapshotError(Exception):
    """A snapshot could not be encoded or written."""


def _cv2():
    try:
        import cv2
    except ImportError:
        raise SnapshotError(
            "OpenCV is not installed: pip install opencv-python-headless (or '.[device]')"
        ) from None
    return cv2


def crop(pixels: np.ndarray, roi: Sequence[float] | None) -> np.ndarray:
    if roi is None:
        return pixels
    h, w = pixels.shape[:2]
    x0, y0 = round(roi[0] * w), round(roi[1] * h)
    x1, y1 = min(w, round((roi[0] + roi[2]) * w)), min(h, round((roi[1] + roi[3]) * h))
    return pixels[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]


def encode_jpeg(pixels: np.ndarray, quality: int = 85, max_width: int | None = None) -> bytes:
    """RGB pixels -> JPEG bytes, downscaled (area filter) to ``max_width`` when wider."""
    cv2 = _cv2()
    image = pixels
    if max_width is not None and image.shape[1] > max_width:
        height = max(1, round(image.shape[0] * max_width / image.shape[1]))
        image = cv2.resize(image, (max_width, height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise SnapshotError("JPEG encoding failed")
    return buf.tobytes()


@dataclass(frozen=True)
class Snapshot:
    ref: str  # path relative to the snapshot folder, as given in event payloads
    path: Path
    jpeg: bytes
    redaction: Redaction | None = None  # what privacy did to it (None: nothing configured)


class SnapshotStore:
    def __init__(self, cfg: SnapshotConfig, privacy: PrivacyGuard | None = None):
        self.cfg = cfg
        self.privacy = privacy
        self.root = Path(cfg.dir)
        self.saved = 0
        self.deleted = 0
        self.failed = 0

    def save(
        self,
        ref: str,
        pixels: np.ndarray,
        roi: Sequence[float] | None = None,
        camera: str | None = None,
    ) -> Snapshot | None:
        """Redact (privacy), encode and write one snapshot; None (logged) when it fails.

        ``camera`` (default: the first part of ``ref``) chooses the masks. Raises
        ``device.privacy.guard.Withheld`` (counted and logged there) when privacy cannot be
        applied: nothing is written.
        """
        cfg = self.cfg
        redaction = None
        if self.privacy is not None:
            safe = self.privacy.protect(camera or ref.split("/", 1)[0], pixels, "snapshot")
            pixels, redaction = safe.pixels, safe.redaction
        try:
            image = crop(pixels, roi if cfg.crop_to_roi else None)
            jpeg = encode_jpeg(image, cfg.quality, cfg.max_width)
            path = self.root / ref
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(jpeg)
            os.replace(tmp, path)
        except (OSError, SnapshotError) as exc:
            self.failed += 1
            log.error("snapshot %s not saved: %s", ref, exc)
            return None
        self.saved += 1
        self.enforce_retention()
        return Snapshot(ref, path, jpeg, redaction)

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete oldest snapshots until count, age, size and free-space bounds hold."""
        cfg = self.cfg
        now = time.time() if now is None else now
        files = []
        for path in self.root.rglob("*.jpg"):
            try:
                st = path.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        files.sort()
        total = sum(f[1] for f in files)
        max_bytes = cfg.max_mb * 1024 * 1024
        min_free = cfg.min_free_mb * 1024 * 1024
        removed = 0
        for mtime, size, path in files[:-1]:  # never the newest (the one just written)
            count = len(files) - removed
            too_old = now - mtime > cfg.max_age_days * 86400
            low_disk = min_free > 0 and self._free_bytes() < min_free
            if not (count > cfg.max_count or too_old or total > max_bytes or low_disk):
                break
            try:
                path.unlink()
            except OSError as exc:
                log.warning("cannot delete old snapshot %s: %s", path, exc)
                continue
            removed += 1
            total -= size
        if removed:
            self.deleted += removed
            log.info("snapshots: deleted %d old file(s) (retention)", removed)
        return removed

    def _free_bytes(self) -> float:
        try:
            return float(shutil.disk_usage(self.root).free)
        except OSError:
            return float("inf")

    def stats(self) -> dict[str, int]:
        return {"saved": self.saved, "deleted": self.deleted, "failed": self.failed}
