"""What makes an upload acceptable: the sidecar, the sender, the content hash, the JPEG.

Checked cheapest first, each refusal a :class:`~training.ingest.errors.Rejected` with a reason
(the stats key), the HTTP status and a fix:

1. the sidecar: at most ``max_meta`` bytes of strict UTF-8 JSON (no duplicate keys, no NaN)
   that validates as :class:`device.samples.SampleMeta` (unknown keys refused at every level,
   names restricted so that nothing becomes a path);
2. the sender: the sidecar's ``device`` must be the device the token belongs to (403);
3. the content hash: ``sample_id`` must be the sha256 of the JPEG bytes received;
4. the JPEG: its header (read without decoding, :func:`device.preprocess.check_image`) must
   declare a JPEG of at most ``max_pixels``, the data must end with the end-of-image marker,
   and it must decode. The decode is OpenCV's at 1/8 scale in grayscale: every entropy-coded
   block is still read (a damaged stream fails), but a 20 MP frame needs 0.3 MB, not 60 MB.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError

from device.errors import SourceError
from device.imageheader import ImageHeader
from device.preprocess import ImageTooLargeError, check_image
from device.samples import SampleMeta
from training.ingest.errors import Rejected
from training.ingest.limits import DEFAULT_MAX_META, DEFAULT_MAX_PIXELS, UploadLimits
from training.ingest.multipart import UploadParts
from training.ingest.tokens import Identity

_JPEG_EOI = b"\xff\xd9"
_SHOWN_ERRORS = 5


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"key {key[:40]!r} appears twice")
        seen.add(key)
    return dict(pairs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bad_meta(status: int, error: str) -> Rejected:
    return Rejected(
        status,
        "bad_meta",
        error,
        "send the sidecar as UTF-8 JSON in the edgecam.sample/1 format (docs/field-loop.md)",
    )


def _field_errors(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    shown = []
    for err in errors[:_SHOWN_ERRORS]:
        where = ".".join(str(p) for p in err["loc"])[:120] or "(the whole sidecar)"
        shown.append(f"{where}: {err['msg'][:200]}")
    more = len(errors) - len(shown)
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def parse_meta(raw: bytes, max_bytes: int = DEFAULT_MAX_META) -> SampleMeta:
    """The sidecar as a validated :class:`SampleMeta`; :class:`Rejected` when it is not one."""
    if len(raw) > max_bytes:
        raise _bad_meta(413, f"the meta part is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_meta(400, f"the meta part is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except json.JSONDecodeError as exc:
        raise _bad_meta(
            400, f"the meta part is not JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise _bad_meta(400, f"the meta part is not usable JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise _bad_meta(422, "the meta part must be a JSON object")
    try:
        return SampleMeta.model_validate(value)
    except ValidationError as exc:
        raise _bad_meta(422, f"the sidecar is not a valid sample: {_field_errors(exc)}") from None


def check_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """The header of a JPEG that is whole, within the pixel limit and decodes; Rejected if not."""
    fix = "send the frame as a complete JPEG (cv2.imencode('.jpg', ...) or picamera2)"
    try:
        header = check_image(data, "the image", max_pixels)
    except ImageTooLargeError:
        header = check_image(data, "the image", 1 << 62)  # to say how large
        raise Rejected(
            422,
            "image_too_large",
            f"the image is {header.width} x {header.height} pixels; the limit is "
            f"{max_pixels:,} pixels",
            "downscale the frame before sampling (or raise the server's --max-pixels)",
        ) from None
    except SourceError:
        raise Rejected(422, "bad_image", "the image part is not a JPEG image", fix) from None
    if header.format != "JPEG":
        raise Rejected(
            422, "bad_image", f"the image part is a {header.format} image, not a JPEG", fix
        )
    if not data.endswith(_JPEG_EOI):
        raise Rejected(
            422, "bad_image", "the JPEG is cut short (it has no end-of-image marker)", fix
        )
    small = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    expected = (-(-header.height // 8), -(-header.width // 8))
    if small is None or small.shape[:2] != expected:
        raise Rejected(422, "bad_image", "the JPEG does not decode (damaged data)", fix)
    return header


def validate_upload(parts: UploadParts, sender: Identity, limits: UploadLimits) -> SampleMeta:
    """The validated sidecar of an acceptable upload from ``sender``; Rejected otherwise."""
    meta = parse_meta(parts.meta, limits.max_meta)
    if meta.device != sender.name:
        raise Rejected(
            403,
            "forbidden",
            f"this token belongs to device {sender.name!r}, not to {meta.device!r}",
            "each device uploads with its own token (edgecam-train token add DEVICE)",
        )
    digest = hashlib.sha256(parts.image).hexdigest()
    if digest != meta.sample_id:
        raise Rejected(
            422,
            "hash_mismatch",
            f"sample_id is not the sha256 of the image received (that is {digest})",
            "set sample_id to sha256 of the JPEG bytes sent; resend if the upload was damaged",
        )
    check_jpeg(parts.image, limits.max_pixels)
    return meta
