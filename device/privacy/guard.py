"""The privacy guard: every image that leaves the device passes ``PrivacyGuard.protect``.

``protect(camera, pixels, what)`` returns a redacted copy: the camera's masks blacked out, then
faces found by the detector (on the masked image) blurred, pixelated or boxed, with a record of
what was done (``device.samples.Redaction``). It fails closed: when face redaction is on and the
detector cannot run (its file is missing or corrupt, or it fails on this image), it raises
``Withheld``; the caller then sends nothing, and the guard has counted it and logged why.

It runs where images are encoded (the alerts worker, the sample writer, ``edgecam-device
redact``), never in a camera's inference thread. One detector serves every caller, one at a time
(a lock). A detector that could not be loaded is tried again every ``RETRY_S`` seconds, so that
fixing the file (``make models``) needs no restart.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device.errors import EdgecamError
from device.metrics import percentiles
from device.privacy.config import FacesConfig, PrivacyConfig
from device.privacy.detector import Face, FaceDetector
from device.privacy.masks import MaskSet
from device.privacy.redact import redact_box
from device.samples import Redaction
from device.supervision import describe_exception

log = logging.getLogger(__name__)

RETRY_S = 60.0  # how often an unusable detector is tried again
LOG_EVERY_S = 60.0  # withheld images of one kind and reason are logged at most this often
KINDS = ("snapshot", "sample", "image")


class Withheld(Exception):
    """The image must not leave the device: privacy could not be applied to it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Protected:
    """A redacted copy of an image, what was done to it, and the faces found."""

    pixels: np.ndarray
    redaction: Redaction | None  # None: no privacy configured for this camera
    faces: list[Face] = field(default_factory=list)


class PrivacyGuard:
    """Masks and face redaction for every image that leaves the device (module docstring)."""

    def __init__(
        self,
        cfg: PrivacyConfig | None = None,
        *,
        runtime: str | None = None,
        detector: FaceDetector | None = None,
        retry_s: float = RETRY_S,
    ):
        """``detector``: one already loaded (the ``redact`` command and the benchmark load
        theirs first, to stop on an error); else it is loaded here when faces are enabled."""
        self.cfg = cfg or PrivacyConfig()
        self.faces: FacesConfig = self.cfg.faces
        self.runtime = runtime
        self.retry_s = retry_s
        self.masks = {name: MaskSet(c.masks) for name, c in self.cfg.cameras.items() if c.masks}
        self.detector: FaceDetector | None = detector
        self.problem: str | None = None  # why the detector cannot run
        self.hint: str | None = None
        self._lock = threading.Lock()  # the detector and the counters
        self._retry_at = 0.0
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # -> (last logged, held)
        self.images = dict.fromkeys(KINDS, 0)
        self.withheld = dict.fromkeys(KINDS, 0)
        self.faces_redacted = 0
        self._detect_ms: collections.deque[float] = collections.deque(maxlen=200)
        if self.faces.enabled and detector is None:
            self._load()

    # -- the detector ------------------------------------------------------------------------
    def _load(self) -> FaceDetector | None:
        """Load the detector (under the lock, or before the guard is shared)."""
        try:
            self.detector = FaceDetector(
                self.faces.model,
                min_score=self.faces.min_score,
                threads=self.faces.threads,
                runtime=self.runtime,
                tile_px=self.faces.tile_px,
            )
        except EdgecamError as exc:
            first = self.problem is None
            self.problem, self.hint = exc.message, exc.hint
            self._retry_at = time.monotonic() + self.retry_s
            if first:
                log.error(
                    "privacy: face redaction is on but the detector cannot run: %s; snapshots "
                    "and samples are withheld until it can (alerts still go out)%s",
                    exc.message,
                    f"; fix: {exc.hint}" if exc.hint else "",
                )
            return None
        if self.problem is not None:
            log.info("privacy: face detector %s loaded; images go out again", self.faces.model)
        self.problem = self.hint = None
        log.info(
            "privacy: redacting faces with %s (%s, min_score %.2f, %s, margin %.2f)",
            self.detector.ref,
            self.detector.spec.name,
            self.faces.min_score,
            self.faces.method,
            self.faces.margin,
        )
        return self.detector

    def retry_now(self) -> None:
        """Try an unusable detector again at the next image (not ``retry_s`` after the last
        try)."""
        with self._lock:
            self._retry_at = 0.0

    def _usable_detector(self) -> FaceDetector | None:
        if self.detector is None and time.monotonic() >= self._retry_at:
            self._load()
        return self.detector

    # -- what leaves the device ----------------------------------------------------------------
    def active(self, camera: str) -> bool:
        """True when images of ``camera`` are changed before they leave."""
        return self.faces.enabled or camera in self.masks

    def inference_mask(self, camera: str) -> Callable[[np.ndarray], np.ndarray] | None:
        """What blacks out ``camera``'s masks in each frame before it is classified
        (``mask_inference``), or None."""
        cam = self.cfg.cameras.get(camera)
        if cam is None or not cam.mask_inference or camera not in self.masks:
            return None
        return self.masks[camera].apply

    def protect(self, camera: str, pixels: np.ndarray, what: str = "image") -> Protected:
        """A redacted copy of ``pixels`` (RGB) of ``camera``; ``what`` (snapshot, sample,
        image) counts it. Raises ``Withheld`` (counted, logged) when it cannot be made safe:
        the detector cannot run, or anything fails on this image."""
        if not self.active(camera):
            return Protected(pixels, None)
        with self._lock:
            try:
                out, faces = self._redact(camera, pixels, what)
            except Withheld:
                raise
            except Exception as exc:  # fail closed, whatever went wrong
                self._withhold(what, f"redaction failed on this image: {describe_exception(exc)}")
            self.faces_redacted += len(faces)
            self.images[what] = self.images.get(what, 0) + 1
            record = self.record(camera, len(faces))
        return Protected(out, record, faces)

    def _redact(self, camera: str, pixels: np.ndarray, what: str) -> tuple[np.ndarray, list[Face]]:
        """Masks, then faces, on a copy (under the lock)."""
        out = np.array(pixels, dtype=np.uint8, copy=True, order="C")
        masks = self.masks.get(camera)
        if masks is not None:
            out = masks.apply(out)
        if not self.faces.enabled:
            return out, []
        detector = self._usable_detector()
        if detector is None:
            self._withhold(what, f"the face detector cannot run: {self.problem}", self.hint)
        assert detector is not None
        faces = detector.detect(out)
        self._detect_ms.append(detector.last_ms)
        height, width = out.shape[:2]
        for face in faces:
            redact_box(out, face.pixel_box(width, height, self.faces.margin), self.faces.method)
        return out, faces

    def _withhold(self, what: str, reason: str, hint: str | None = None) -> None:
        """Count, log (at most every LOG_EVERY_S per reason) and raise Withheld."""
        self.withheld[what] = self.withheld.get(what, 0) + 1
        now = time.monotonic()
        key = (what, reason)
        last, held = self._logged.get(key, (-LOG_EVERY_S, 0))
        if now - last >= LOG_EVERY_S:
            more = f" ({held} more withheld since the last message)" if held else ""
            log.error(
                "privacy: %s withheld, not sent: %s%s; alerts still go out%s",
                what,
                reason,
                more,
                f"; fix: {hint}" if hint else "",
            )
            self._logged[key] = (now, 0)
        else:
            self._logged[key] = (last, held + 1)
        raise Withheld(reason)

    def record(self, camera: str, faces: int = 0) -> Redaction | None:
        """The redaction record of an image of ``camera`` with ``faces`` faces redacted."""
        if not self.active(camera):
            return None
        masks = self.masks.get(camera)
        detector = self.detector if self.faces.enabled else None
        return Redaction(
            mask_version=masks.version if masks is not None else None,
            masks=len(masks) if masks is not None else 0,
            detector=detector.ref if detector is not None else None,
            min_score=self.faces.min_score if self.faces.enabled else None,
            method=self.faces.method if self.faces.enabled else None,
            margin=self.faces.margin if self.faces.enabled else None,
            tile_px=self.faces.tile_px if self.faces.enabled else None,
            faces=faces,
        )

    def describe(self) -> str:
        """One line: what is redacted (``validate`` prints it)."""
        faces = "faces off"
        if self.faces.enabled:
            if self.detector is None:
                faces = f"faces UNAVAILABLE ({self.problem}): snapshots and samples are withheld"
            else:
                f = self.faces
                tiles = f", tiles of {f.tile_px} px" if f.tile_px else ""
                faces = (
                    f"faces {f.method} with {self.detector.ref} ({self.detector.spec.name}, "
                    f"min_score {f.min_score:g}, margin {f.margin:g}{tiles})"
                )
        masks = ", ".join(
            f"{name} ({len(m)}{', also before inference' if self.inference_mask(name) else ''})"
            for name, m in sorted(self.masks.items())
        )
        return f"{faces}; masks: {masks or 'none'}"

    # -- metrics -----------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        with self._lock:
            p50, p95 = percentiles(list(self._detect_ms))
            faces_state = "off"
            if self.faces.enabled:
                faces_state = "ok" if self.detector is not None else "unavailable"
            return {
                "faces": faces_state,
                "detector": self.detector.ref if self.detector is not None else None,
                "problem": self.problem,
                "masked_cameras": sorted(self.masks),
                "images": dict(self.images),
                "faces_redacted": self.faces_redacted,
                "withheld": dict(self.withheld),
                "detect_ms": {"p50": round(p50, 2), "p95": round(p95, 2)},
            }
