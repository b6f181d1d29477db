"""Pure pre/postprocessing and label parsing (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from device.inference import TensorInfo
from device.labels import parse_labels
from device.model import InputSpec, make_input_spec
from device.postprocess import classify, quantized_range_is_unit, scores_from_output, softmax, top_k
from device.preprocess import Preprocessor, build_lut, crop_box


def tensor(dtype, scale=0.0, zp=0, h=4, w=6) -> TensorInfo:
    return TensorInfo(0, "input", (1, h, w, 3), np.dtype(dtype), scale, zp)


def test_label_formats() -> None:
    assert parse_labels("background\ntench, Tinca tinca\n") == {
        0: "background",
        1: "tench, Tinca tinca",
    }
    assert parse_labels("   0  background\n   1  tench, Tinca tinca") == {
        0: "background",
        1: "tench, Tinca tinca",
    }
    assert parse_labels("0:cat\n2:dog\n") == {0: "cat", 2: "dog"}
    # A label that merely starts with a number in a plain file stays a label.
    assert parse_labels("7 dwarfs\nsnow white\n") == {0: "7 dwarfs", 1: "snow white"}


def test_top_k_and_scores() -> None:
    scores = np.array([0.1, 0.5, 0.05, 0.35], dtype=np.float32)
    assert top_k(scores, 2) == [(1, pytest.approx(0.5)), (3, pytest.approx(0.35))]
    assert top_k(scores, 10, min_score=0.2) == [(1, pytest.approx(0.5)), (3, pytest.approx(0.35))]
    raw = np.array([0, 179, 26, 0], dtype=np.uint8)  # quantised softmax, sums to < 1
    assert quantized_range_is_unit(raw.dtype, 1 / 256, 0)
    s = scores_from_output(raw, 1 / 256, 0)
    assert s[1] == pytest.approx(179 / 256)
    logits = np.array([2.0, -1.0, 0.5], dtype=np.float32)
    assert np.allclose(scores_from_output(logits, 0.0, 0), softmax(logits.astype(np.float64)))
    assert not quantized_range_is_unit(np.dtype(np.int8), 0.1, 0)
    top = classify(raw, 1 / 256, 0, {1: "fox"}, k=2)
    assert [(c.index, c.label) for c in top] == [(1, "fox"), (2, "2")]


def test_lut_identity_and_folding() -> None:
    # Coral's (1/128, 128) with mean=std=128 is the identity: raw pixels go in.
    assert build_lut(make_input_spec(mean=128, std=128), tensor(np.uint8, 1 / 128, 128)) is None
    assert build_lut(InputSpec(), tensor(np.uint8, 1 / 128, 128)) is None
    lut = build_lut(make_input_spec(mean=0, std=255), tensor(np.uint8, 1 / 255, 0))
    assert lut is None  # x = p/255, q = x*255 = p
    lut = build_lut(make_input_spec(mean=127.5, std=127.5), tensor(np.float32))
    assert lut[0, 0] == pytest.approx(-1.0) and lut[2, 255] == pytest.approx(1.0)
    lut = build_lut(make_input_spec(mean=[100, 110, 120], std=[2, 2, 2]), tensor(np.uint8, 0.5, 10))
    # q = (p - mean) / (std * scale) + zp = p - mean + 10, clipped
    assert lut[0, 100] == 10 and lut[1, 100] == 0 and lut[0, 255] == 165
    lut = build_lut(InputSpec(), tensor(np.int8, 1.0, -128))
    assert lut[0, 0] == -128 and lut[0, 255] == 127


def test_crop_box_center_and_roi() -> None:
    assert crop_box(480, 640, (224, 224), "center") == (0, 480, 80, 560)
    assert crop_box(480, 640, (224, 224), "none") == (0, 480, 0, 640)
    assert crop_box(480, 640, (224, 224), "none", roi=(0.5, 0.0, 0.5, 0.5)) == (0, 240, 320, 640)
    assert crop_box(480, 640, (224, 224), "center", roi=(0.5, 0.0, 0.5, 1.0)) == (80, 400, 320, 640)


def test_preprocessor_writes_preallocated_buffer() -> None:
    frame = np.zeros((40, 60, 3), dtype=np.uint8)
    frame[:, :30] = (255, 0, 0)
    pre = Preprocessor(InputSpec(), tensor(np.uint8, 1 / 128, 128, h=4, w=6))
    out = pre.new_buffer()
    result = pre.process(frame, out)
    assert result is out and out.shape == (1, 4, 6, 3)
    assert (out[0, :, 0] == (255, 0, 0)).all() and (out[0, :, -1] == 0).all()
    # ROI on the right half sees only black.
    pre_roi = Preprocessor(
        InputSpec(), tensor(np.uint8, 1 / 128, 128, h=4, w=6), roi=(0.5, 0, 0.5, 1)
    )
    assert (pre_roi.process(frame) == 0).all()
    # Float model with normalisation.
    pre_f = Preprocessor(make_input_spec(mean=127.5, std=127.5), tensor(np.float32, h=4, w=6))
    out_f = pre_f.process(frame)
    assert out_f.dtype == np.float32 and out_f[0, 0, 0, 0] == pytest.approx(1.0)
    assert out_f[0, 0, -1, 0] == pytest.approx(-1.0)


# -- image headers -------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tiff"])
def test_image_header_sizes_match_the_decoder(ext: str) -> None:
    import cv2

    from device.imageheader import read_header

    ok, buf = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
    assert ok
    data = buf.tobytes()
    header = read_header(data)
    assert header is not None and (header.width, header.height) == (53, 37)
    assert read_header(data[:9]) is None  # cut inside the header
    assert read_header(b"\x00" + data) is None


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("GIF", {}),
        ("JPEG", {"progressive": True}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"exif": b"Exif\x00\x00MM"}),  # extended (VP8X) WebP
        ("TIFF", {"compression": "tiff_lzw"}),
        ("BMP", {}),
    ],
)
def test_image_header_of_other_writers(fmt: str, options: dict) -> None:
    import io

    # Pillow is a workstation package ([train]); the device-only CI venv has no writer for these
    Image = pytest.importorskip("PIL.Image", reason="Pillow (the [train] extra) writes these files")

    from device.imageheader import read_header

    buf = io.BytesIO()
    Image.new("RGB", (301, 7)).save(buf, format=fmt, **options)
    header = read_header(buf.getvalue())
    assert header is not None and (header.width, header.height) == (301, 7)


def test_reference_images_headers(test_data) -> None:
    from device.imageheader import read_header

    sizes = {
        name: read_header((test_data / "coral" / name).read_bytes())
        for name in ("parrot.jpg", "cat.bmp", "face.jpg")
    }
    assert {k: (v.format, v.width, v.height) for k, v in sizes.items()} == {
        "parrot.jpg": ("JPEG", 512, 929),
        "cat.bmp": ("BMP", 512, 341),
        "face.jpg": ("JPEG", 512, 355),
    }


def test_labels_byte_order_mark_and_duplicate_ids() -> None:
    from device.errors import ModelError

    assert parse_labels("\ufeff0 background\n1 tench\n") == {0: "background", 1: "tench"}
    assert parse_labels("\ufeffcat\ndog\n") == {0: "cat", 1: "dog"}
    with pytest.raises(ModelError, match="id 1 is given twice"):
        parse_labels("0 a\n1 b\n1 c\n")
    # an id too long to be one is a label like any other
    assert parse_labels("1" * 5000 + " x\n") == {0: "1" * 5000 + " x"}
