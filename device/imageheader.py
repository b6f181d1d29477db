"""Image size from the file header, without decoding: the guard against decompression bombs.

A 854 KB PNG can declare 30000 x 30000 pixels and decode to 2.7 GB; the header says so in its
first bytes. Accepted formats and where their size is read:

- PNG: the IHDR chunk (bytes 16..24, big-endian);
- JPEG: the first SOFn segment (baseline, progressive, lossless, arithmetic);
- BMP: the DIB header (BITMAPCOREHEADER or BITMAPINFOHEADER and later; negative height = top-down);
- GIF: the logical screen descriptor (87a and 89a);
- WebP: the VP8 (lossy), VP8L (lossless) or VP8X (extended) chunk;
- TIFF: the ImageWidth / ImageLength tags of the first IFD (little- and big-endian).

``read_header`` returns None for anything else, or a header cut short.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WebP", "TIFF")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn stand alone


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header declares."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes) -> ImageHeader | None:
    """The format and declared size of an encoded image; None when not recognised."""
    try:
        for parse in (_png, _jpeg, _bmp, _gif, _webp, _tiff):
            header = parse(data)
            if header is not None:
                return header
    except (struct.error, IndexError):  # a header cut short
        return None
    return None


def _png(data: bytes) -> ImageHeader | None:
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return ImageHeader("PNG", width, height)


def _jpeg(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None  # not at a marker: a corrupt file
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return ImageHeader("JPEG", width, height)
        if length < 2:
            return None
        pos += 2 + length
    return None


def _bmp(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"BM") or len(data) < 26:
        return None
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    elif dib_size >= 40:
        width, height = struct.unpack("<ii", data[18:26])
    else:
        return None
    return ImageHeader("BMP", abs(width), abs(height))


def _gif(data: bytes) -> ImageHeader | None:
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    width, height = struct.unpack("<HH", data[6:10])
    return ImageHeader("GIF", width, height)


def _webp(data: bytes) -> ImageHeader | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return ImageHeader("WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", data[21:25])
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("WebP", width, height)
    return None


def _tiff(data: bytes) -> ImageHeader | None:
    if data[:4] == b"II*\x00":
        order = "<"
    elif data[:4] == b"MM\x00*":
        order = ">"
    else:
        return None
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    size: dict[int, int] = {}
    for i in range(count):
        entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag not in (256, 257):
            continue
        if kind == 3:  # SHORT
            (size[tag],) = struct.unpack(order + "H", entry[8:10])
        elif kind == 4:  # LONG
            (size[tag],) = struct.unpack(order + "I", entry[8:12])
        else:
            return None
    if 256 not in size or 257 not in size:
        return None
    return ImageHeader("TIFF", size[256], size[257])
