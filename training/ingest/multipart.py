"""The two parts of an upload (``image``, ``meta``) out of a multipart/form-data body.

The body is already bounded (the server read at most ``max_body`` bytes); python-multipart's
parser splits it. Exactly one ``image`` part and one ``meta`` part, nothing else; each part's
raw bytes are kept (the sidecar is decoded as strict UTF-8 later, never with a lenient
fallback). Part content types, when a client sends them, must fit: ``image/jpeg`` (or
``application/octet-stream``, what generic clients send) for the image, ``application/json``
(or ``text/plain``, ``application/octet-stream``) for the sidecar. File names sent by the
client are ignored: the server names every file. python-multipart bounds each part's headers
(8 at most, 4 KiB each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from training.ingest.errors import Rejected

PARTS = ("image", "meta")
PART_TYPES = {
    "image": (b"image/jpeg", b"application/octet-stream"),
    "meta": (b"application/json", b"text/plain", b"application/octet-stream"),
}
_EXAMPLE = "curl -F image=@sample.jpg -F meta=@sample.json;type=application/json ..."


@dataclass(frozen=True)
class UploadParts:
    image: bytes
    meta: bytes


def _bad(error: str, fix: str = f"send multipart/form-data with parts image and meta: {_EXAMPLE}"):
    return Rejected(400, "bad_request", error, fix)


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a request's Content-Type; 415 for anything but form-data."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1")[:60] or "none"
        raise Rejected(
            415,
            "bad_content_type",
            f"the request's Content-Type is {shown!r}, not multipart/form-data",
            f"send multipart/form-data with parts image and meta: {_EXAMPLE}",
        )
    boundary = params.get(b"boundary", b"")
    if not 1 <= len(boundary) <= 70:  # RFC 2046: 1 to 70 characters
        raise _bad("the multipart Content-Type has no valid boundary")
    return boundary


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: list[bytes] = field(default_factory=list)
    name: str = ""


class _Collector:
    """python-multipart callbacks that gather the parts, refusing what does not belong."""

    def __init__(self) -> None:
        self.parts: dict[str, bytes] = {}
        self.ended = False
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._part.headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(
            self._part.headers.get(b"content-disposition", b"")
        )
        if disposition != b"form-data" or b"name" not in options:
            raise _bad("a part has no 'Content-Disposition: form-data; name=...' header")
        name = options[b"name"].decode("latin-1")
        if name not in PARTS:
            raise _bad(f"unexpected part {name[:40]!r}: only image and meta are accepted")
        if name in self.parts:
            raise _bad(f"part {name!r} is sent twice")
        kind, _ = parse_options_header(self._part.headers.get(b"content-type", b""))
        if kind and kind not in PART_TYPES[name]:
            allowed = " or ".join(t.decode() for t in PART_TYPES[name])
            raise Rejected(
                415,
                "bad_content_type",
                f"part {name!r} has Content-Type {kind.decode('latin-1')[:60]!r}",
                f"send the {name} part as {allowed}",
            )
        self._part.name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part.data.append(data[start:end])

    def on_part_end(self) -> None:
        self.parts[self._part.name] = b"".join(self._part.data)

    def on_end(self) -> None:
        self.ended = True


def parse_upload(content_type: str | None, body: bytes) -> UploadParts:
    """Split ``body``; a :class:`Rejected` (400/415) saying what is wrong with the request."""
    boundary = boundary_of(content_type)
    collector = _Collector()
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise _bad(
            "the multipart body cannot be parsed (a broken boundary or part header)"
        ) from None
    if not collector.ended:
        raise _bad("the multipart body ends before its closing boundary (cut short?)")
    missing = [p for p in PARTS if p not in collector.parts]
    if missing:
        raise _bad(f"the upload has no {' and no '.join(missing)} part")
    return UploadParts(image=collector.parts["image"], meta=collector.parts["meta"])
