"""Privacy: BlazeFace decoding (pure numpy), the detector on real photos, masks, redaction,
the config's checks, failing closed, and the detectors' fetch from a wheel."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import threading
import warnings
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.alerts.snapshots import encode_jpeg
from device.config import CameraConfig, parse_config
from device.errors import ConfigError, EdgecamError
from device.fetch import ASSETS, fetch, sha256_file
from device.preprocess import decode_image, load_image
from device.privacy import blazeface
from device.privacy.config import PrivacyConfig
from device.privacy.detector import FaceDetector
from device.privacy.guard import PrivacyGuard, Withheld
from device.privacy.masks import MaskSet, mask_version
from device.samples import Redaction

SHORT = "face_detection_short_range.tflite"
FULL = "face_detection_full_range_sparse.tflite"
# Centres (x, y) of the faces in coral/face.jpg (512 x 355): two people in front, two small
# ones behind them at the left and right edges.
FOREGROUND = [(300, 116), (180, 150)]
BACKGROUND = [(23, 135), (465, 155)]


def detector_path(test_data: Path, name: str) -> Path:
    return test_data / "mediapipe" / name


def guard(test_data: Path, model: str = FULL, masks=None, **faces) -> PrivacyGuard:
    cfg = {"faces": {"enabled": True, "model": str(detector_path(test_data, model)), **faces}}
    if masks is not None:
        cfg["cameras"] = {"cam": {"masks": masks}}
    return PrivacyGuard(PrivacyConfig.model_validate(cfg))


# -- anchors, decoding, weighted NMS (pure numpy) ------------------------------------------------
def test_ssd_anchors_follow_mediapipe_face_detection_graphs() -> None:
    short = blazeface.ssd_anchors(blazeface.SHORT_RANGE)
    full = blazeface.ssd_anchors(blazeface.FULL_RANGE)
    assert short.shape == (896, 4) and full.shape == (2304, 4)
    # short range: a 16x16 map (stride 8) with 2 anchors a cell, then an 8x8 map (strides
    # 16, 16, 16 share it) with 6; row by row, cell by cell; fixed size 1 x 1
    assert np.allclose(short[0], [0.5 / 16, 0.5 / 16, 1, 1]) and np.allclose(short[1], short[0])
    assert np.allclose(short[2], [1.5 / 16, 0.5 / 16, 1, 1])
    assert np.allclose(short[511], [15.5 / 16, 15.5 / 16, 1, 1])
    assert np.allclose(short[512:518], [0.5 / 8, 0.5 / 8, 1, 1])
    assert np.allclose(short[-1], [7.5 / 8, 7.5 / 8, 1, 1])
    # full range: one 48x48 map (stride 4), one anchor a cell (no interpolated anchor)
    assert np.allclose(full[1], [1.5 / 48, 0.5 / 48, 1, 1])
    assert np.allclose(full[48], [0.5 / 48, 1.5 / 48, 1, 1])
    assert blazeface.spec_for(128, 896) is blazeface.SHORT_RANGE
    assert blazeface.spec_for(192, 2304) is blazeface.FULL_RANGE
    assert blazeface.spec_for(192, 896) is None


def test_decode_boxes_keypoints_and_clipped_sigmoid() -> None:
    anchors = np.array([[0.25, 0.75, 1.0, 1.0]], np.float32)
    raw = np.zeros((1, 16), np.float32)
    raw[0, :4] = [12.8, -25.6, 25.6, 51.2]  # input pixels of a 128 input: +0.1, -0.2, 0.2, 0.4
    raw[0, 4:6] = [-12.8, 0.0]  # first keypoint: 0.1 left of the anchor
    row = blazeface.decode_boxes(raw, anchors, 128)[0]
    assert np.allclose(row[:4], [0.35 - 0.1, 0.55 - 0.2, 0.35 + 0.1, 0.55 + 0.2])
    assert np.allclose(row[4:6], [0.15, 0.75]) and np.allclose(row[6:], [0.25, 0.75] * 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow in exp for huge logits
        scores = blazeface.sigmoid_scores(np.array([-1e6, 0.0, 1e6]))
    assert scores[0] < 1e-40 and scores[1] == 0.5 and scores[2] == 1.0


def test_weighted_nms_merges_overlaps_by_score_and_keeps_the_rest() -> None:
    rows = np.zeros((3, 16), np.float32)
    rows[0, :4] = [0.10, 0.10, 0.30, 0.30]
    rows[1, :4] = [0.12, 0.12, 0.32, 0.32]  # IoU with the first ~0.68
    rows[2, :4] = [0.60, 0.60, 0.80, 0.80]  # elsewhere
    rows[:, 4] = [1.0, 2.0, 3.0]
    scores = np.array([0.6, 0.9, 0.7], np.float32)
    out, kept = blazeface.weighted_nms(rows, scores, 0.3)
    assert list(kept) == pytest.approx([0.9, 0.7])  # the best score of each group
    merged = (rows[0] * 0.6 + rows[1] * 0.9) / 1.5
    assert np.allclose(out[0], merged) and np.allclose(out[1], rows[2])
    empty, none = blazeface.weighted_nms(np.zeros((0, 16), np.float32), np.zeros(0, np.float32))
    assert empty.shape == (0, 16) and none.size == 0


def test_tiles_cover_the_image_with_overlap() -> None:
    assert blazeface.tiles(512, 355, 512) == []  # one tile would be the whole image
    tiles = blazeface.tiles(768, 576, 192)
    covered = np.zeros((576, 768), bool)
    for x, y, side in tiles:
        assert side == 192 and x + side <= 768 and y + side <= 576
        covered[y : y + side, x : x + side] = True
    assert covered.all()
    xs = sorted({x for x, _, _ in tiles})
    assert all(b - a <= 128 for a, b in itertools.pairwise(xs))  # a third overlaps


# -- the detector on real photos --------------------------------------------------------------
def _found(faces, centres, width, height) -> list[bool]:
    return [
        any(
            f.box[0] * width <= x <= f.box[2] * width
            and f.box[1] * height <= y <= f.box[3] * height
            for f in faces
        )
        for x, y in centres
    ]


def test_short_range_finds_the_two_foreground_faces(test_data: Path) -> None:
    image = load_image(test_data / "coral" / "face.jpg")
    faces = FaceDetector(detector_path(test_data, SHORT)).detect(image)
    assert len(faces) == 2, faces
    assert _found(faces, FOREGROUND, 512, 355) == [True, True]
    assert all(f.score >= 0.5 for f in faces) and len(faces[0].keypoints) == 6


def test_full_range_finds_all_four_faces(test_data: Path) -> None:
    image = load_image(test_data / "coral" / "face.jpg")
    faces = FaceDetector(detector_path(test_data, FULL)).detect(image)
    assert len(faces) == 4, faces
    assert _found(faces, FOREGROUND + BACKGROUND, 512, 355) == [True] * 4
    left_eye, right_eye = faces[0].keypoints[:2]  # keypoints lie inside their face's box
    assert faces[0].box[0] < left_eye[0] < faces[0].box[2]
    assert faces[0].box[1] < right_eye[1] < faces[0].box[3]


@pytest.mark.parametrize("model", [SHORT, FULL])
def test_no_face_in_a_cat_a_parrot_or_digits(test_data: Path, model: str) -> None:
    detector = FaceDetector(detector_path(test_data, model))
    for name in ("coral/cat.bmp", "coral/parrot.jpg", "opencv/digits.png"):
        assert detector.detect(load_image(test_data / name)) == [], name


def test_tiles_find_small_faces_the_whole_image_misses(test_data: Path) -> None:
    # face.jpg shrunk to a quarter, in the corner of a large grey frame (a far-away group)
    small = cv2.resize(load_image(test_data / "coral" / "face.jpg"), (128, 89))
    frame = np.full((720, 1280, 3), 128, np.uint8)
    frame[600:689, 1100:1228] = small
    path = detector_path(test_data, FULL)
    assert FaceDetector(path).detect(frame) == []
    faces = FaceDetector(path, tile_px=192).detect(frame)
    centres = [(1100 + x / 4, 600 + y / 4) for x, y in FOREGROUND]
    assert _found(faces, centres, 1280, 720) == [True, True]


def test_a_model_that_is_no_face_detector_is_refused(test_data: Path) -> None:
    from device.errors import ModelError

    with pytest.raises(ModelError, match="not a BlazeFace face detector") as info:
        FaceDetector(test_data / "coral" / "mobilenet_v1_0.25_128_quant.tflite")
    assert "make models" in (info.value.hint or "")


# -- redaction -----------------------------------------------------------------------------------
def test_redacted_jpeg_changes_the_faces_and_nothing_else(test_data: Path) -> None:
    image = load_image(test_data / "coral" / "face.jpg")
    g = guard(test_data)
    safe = g.protect("cam", image, "snapshot")
    assert len(safe.faces) == 4 and safe.pixels is not image
    assert safe.redaction == Redaction(
        detector=f"face_detection_full_range_sparse@{sha256_file(detector_path(test_data, FULL))[:12]}",
        min_score=0.5,
        method="blur",
        margin=0.25,
        faces=4,
    )
    before = decode_image(encode_jpeg(image, 90)).astype(int)
    after = decode_image(encode_jpeg(safe.pixels, 90)).astype(int)
    diff = np.abs(after - before).mean(axis=2)
    near = np.zeros(diff.shape, bool)
    changed = []
    for face in safe.faces:
        x0, y0, x1, y1 = face.pixel_box(512, 355)
        changed.append(diff[y0:y1, x0:x1].mean())
        gx0, gy0, gx1, gy1 = face.pixel_box(512, 355, g.faces.margin)
        near[max(0, gy0 - 16) : gy1 + 16, max(0, gx0 - 16) : gx1 + 16] = True
    noise = diff[~near].mean()  # JPEG noise, away from the faces (two 8x8 blocks further)
    assert noise < 0.5 and np.percentile(diff[~near], 99.9) <= 4
    assert min(changed) > 5 and min(changed) > 15 * noise, (changed, noise)
    assert g.metrics()["faces_redacted"] == 4 and g.metrics()["images"]["snapshot"] == 1


@pytest.mark.parametrize("method", ["pixelate", "box"])
def test_other_methods_hide_the_face(test_data: Path, method: str) -> None:
    image = load_image(test_data / "coral" / "face.jpg")
    safe = guard(test_data, method=method).protect("cam", image)
    x0, y0, x1, y1 = safe.faces[0].pixel_box(512, 355)
    region = safe.pixels[y0:y1, x0:x1]
    if method == "box":
        assert region.max() == 0
    else:  # 8 blocks across: few distinct colours left
        assert len(np.unique(region.reshape(-1, 3), axis=0)) <= 100


# -- masks ---------------------------------------------------------------------------------------
TRIANGLE = [[0.1, 0.1], [0.6, 0.1], [0.1, 0.8]]


def _inside(polygon, width: int, height: int, margin: float = 1.5) -> np.ndarray:
    """Pixels whose centre lies inside the polygon by at least ``margin`` pixels."""
    contour = (np.asarray(polygon) * [width, height]).astype(np.float32).reshape(-1, 1, 2)
    ys, xs = np.mgrid[0:height, 0:width]
    out = np.zeros((height, width), bool)
    for y, x in zip(ys.ravel(), xs.ravel(), strict=True):
        out[y, x] = cv2.pointPolygonTest(contour, (x + 0.5, y + 0.5), True) >= margin
    return out


def test_masks_black_out_their_polygons_and_nothing_else() -> None:
    rng = np.random.default_rng(1)
    frame = rng.integers(1, 256, (60, 80, 3), dtype=np.uint8)
    masks = MaskSet([TRIANGLE, [[0.9, 0.9], [1.0, 0.9], [1.0, 1.0], [0.9, 1.0]]])
    out = masks.apply(frame.copy())
    inside = _inside(TRIANGLE, 80, 60)
    assert inside.sum() > 500 and (out[inside] == 0).all()
    assert (out[54:, 72:] == 0).all()  # the corner square, edges included
    far = ~_inside(TRIANGLE, 80, 60, -1.5)  # more than 1.5 px outside the triangle ...
    far[52:, 70:] = False  # ... and away from the corner square
    assert (out[far] == frame[far]).all()
    view = frame[:, ::2]  # not contiguous: masked in a copy, still returned masked
    assert (masks.apply(view)[_inside(TRIANGLE, 40, 60)] == 0).all()
    assert mask_version([TRIANGLE]) == mask_version([[[0.1, 0.1], [0.6, 0.1], [0.1, 0.8]]])
    assert mask_version([TRIANGLE]) != mask_version([TRIANGLE[::-1]])
    assert mask_version([]) is None


def test_masks_without_faces_need_no_detector() -> None:
    g = PrivacyGuard(PrivacyConfig.model_validate({"cameras": {"cam": {"masks": [TRIANGLE]}}}))
    frame = np.full((60, 80, 3), 200, np.uint8)
    safe = g.protect("cam", frame, "sample")
    assert (safe.pixels[_inside(TRIANGLE, 80, 60)] == 0).all() and frame.min() == 200
    assert safe.redaction == Redaction(mask_version=mask_version([TRIANGLE]), masks=1)
    other = g.protect("other", frame)  # no masks, faces off: untouched, no record
    assert other.pixels is frame and other.redaction is None


@pytest.mark.parametrize(
    ("polygon", "error"),
    [
        ("[[0, 0], [1, 1]]", r"3 to 100 \[x, y\] points"),
        ("[[0, 0], [1.2, 0], [1, 1]]", r"point 1 \[1.2, 0.0\] is outside the frame"),
        ("[[0, 0], [0.5, -0.1], [1, 1]]", "outside the frame"),
        ("[[0, 0], [0.5, 0.5], [1, 1]]", "encloses no area"),
        ("[[0, 0], [0.5], [1, 1]]", r"point 1 is \[0.5\]: give \[x, y\]"),
        ("[[0, 0], [0.5, .nan], [1, 1]]", "not a finite number|non-finite|NaN"),
    ],
)
def test_bad_polygons_are_clear_config_errors(polygon: str, error: str) -> None:
    text = f"cameras:\n  - name: door\nprivacy:\n  cameras:\n    door:\n      masks:\n        - {polygon}\n"
    with pytest.raises(ConfigError, match=error) as info:
        parse_config(text, "dev.yaml")
    assert "dev.yaml, line 7" in str(info.value) and "privacy.cameras.door.masks.0" in str(
        info.value
    )


def test_masks_of_an_unknown_camera_are_a_config_error() -> None:
    text = "cameras:\n  - name: door\nprivacy:\n  cameras:\n    gate:\n      masks: []\n"
    with pytest.raises(ConfigError, match="'gate' is not a camera of this device"):
        parse_config(text, "dev.yaml")
    with pytest.raises(ConfigError, match=r"privacy\.faces\.methd: unknown key"):
        parse_config("privacy:\n  faces:\n    methd: blur\n", "dev.yaml")


def test_mask_inference_blacks_out_the_frame_before_it_is_classified(test_data: Path) -> None:
    """A mask over the whole frame: every frame is classified like a black image, and every
    frame handed on (alerts, samples) is black too."""
    from device.classifier import Classifier
    from device.pipeline import CameraPipeline
    from device.sinks import Result, Sink, SinkSet

    whole = [[0, 0], [1, 0], [1, 1], [0, 1]]
    cfg = PrivacyConfig.model_validate(
        {"cameras": {"street": {"masks": [whole], "mask_inference": True}}}
    )
    g = PrivacyGuard(cfg)
    coral = test_data / "coral"
    classifier = Classifier.open(
        coral / "mobilenet_v1_0.25_128_quant.tflite", coral / "imagenet_labels.txt"
    )
    black, _ = classifier.classify(np.zeros((576, 768, 3), np.uint8))

    class Collect(Sink):
        def __init__(self) -> None:
            self.results: list[Result] = []

        def handle(self, result: Result) -> None:
            self.results.append(result)

    sink = Collect()
    camera = CameraConfig(name="street", source=str(test_data / "opencv" / "vtest.avi"))
    stop = threading.Event()
    pipeline = CameraPipeline(
        camera,
        classifier,
        SinkSet([sink]),
        stop,
        max_results=5,
        frame_mask=g.inference_mask("street"),
    )
    pipeline.start()
    pipeline.done.wait(60)
    stop.set()
    pipeline.join()
    assert len(sink.results) == 5
    for result in sink.results:
        assert [c.index for c in result.top] == [c.index for c in black]
        assert result.frame.pixels.max() == 0
    assert g.inference_mask("other") is None


# -- failing closed ------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["missing", "truncated", "not a tflite"])
def test_no_detector_withholds_every_image(
    tmp_path: Path, test_data: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / FULL
    data = detector_path(test_data, FULL).read_bytes()
    if damage == "truncated":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "not a tflite":
        model.write_bytes(b"<html>404</html>" * 100)
    cfg = PrivacyConfig.model_validate({"faces": {"enabled": True, "model": str(model)}})
    with caplog.at_level("ERROR", logger="device.privacy.guard"):
        g = PrivacyGuard(cfg, retry_s=3600.0)
        for what in ("snapshot", "sample", "sample"):
            with pytest.raises(Withheld, match="the face detector cannot run"):
                g.protect("cam", load_image(test_data / "coral" / "face.jpg"), what)
    m = g.metrics()
    assert m["faces"] == "unavailable" and m["withheld"] == {"snapshot": 1, "sample": 2, "image": 0}
    assert m["images"] == {"snapshot": 0, "sample": 0, "image": 0}
    text = caplog.text
    assert "detector cannot run" in text and "withheld" in text and "alerts still go out" in text
    assert "make models" in text
    # one line per kind and reason per minute, not one per image
    assert text.count("snapshot withheld, not sent") == 1
    assert text.count("sample withheld, not sent") == 1
    # the file is put right: the next try loads it, and images go out again
    shutil.copyfile(detector_path(test_data, FULL), model)
    g.retry_s = 0.0
    g.retry_now()
    assert len(g.protect("cam", load_image(test_data / "coral" / "face.jpg")).faces) == 4
    assert g.metrics()["faces"] == "ok"


def test_an_error_on_one_image_withholds_that_image(test_data: Path) -> None:
    g = guard(test_data)
    with pytest.raises(Withheld, match="redaction failed on this image: ValueError"):
        g.protect("cam", np.zeros((0, 10, 3), np.uint8), "sample")
    assert g.metrics()["withheld"]["sample"] == 1
    assert len(g.protect("cam", load_image(test_data / "coral" / "face.jpg")).faces) == 4


# -- make models: the detectors from the mediapipe wheel ----------------------------------------
def test_detectors_are_extracted_from_a_pinned_wheel(tmp_path: Path, test_data: Path) -> None:
    """The wheel path of ``fetch`` on a local wheel-like zip (file:// URL; no download): the
    archive's sha256 is checked, only the two files are kept, each checked against its pin."""
    wheel = tmp_path / "mediapipe-0.10.14-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("mediapipe/__init__.py", "")
        for asset in ASSETS:
            if asset.member:
                zf.write(test_data / asset.local, asset.member)
    pin = sha256_file(wheel)
    detectors = [
        dataclasses.replace(a, url=wheel.as_uri(), archive_sha256=pin) for a in ASSETS if a.member
    ]
    assert {a.name for a in detectors} == {SHORT, FULL}
    dest = tmp_path / "models"
    fetch(dest, None, detectors)
    assert sorted(p.name for p in dest.iterdir()) == sorted([FULL, SHORT])  # nothing else kept
    for asset in detectors:
        assert sha256_file(dest / asset.name) == asset.sha256
    # a wheel that is not the pinned one is refused before anything is extracted
    other = [dataclasses.replace(a, archive_sha256="0" * 64) for a in detectors]
    with pytest.raises(EdgecamError, match="has sha256"):
        fetch(tmp_path / "elsewhere", None, other)
    assert list((tmp_path / "elsewhere").iterdir()) == []  # no partial file, no wheel


def test_validate_reports_privacy_and_a_detector_that_cannot_run(
    write_config, tmp_path: Path, test_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from device.cli import main

    good = write_config(
        name="good.yaml",
        privacy={
            "faces": {"enabled": True, "model": str(detector_path(test_data, SHORT))},
            "cameras": {"street": {"masks": [TRIANGLE], "mask_inference": True}},
        },
    )
    assert main(["validate", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert f"{good}: valid\n" in out
    assert "privacy: faces blur with face_detection_short_range@bbff11cebd1e (short_range, " in out
    assert "masks: street (1, also before inference)" in out
    bad = write_config(
        name="bad.yaml", privacy={"faces": {"enabled": True, "model": str(tmp_path / "no.tflite")}}
    )
    assert main(["validate", "--config", str(bad)]) == 1  # run would start, withholding images
    out = capsys.readouterr().out
    assert "valid, but the face detector cannot run" in out and "faces UNAVAILABLE" in out
