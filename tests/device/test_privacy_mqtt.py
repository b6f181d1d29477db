"""Privacy on the running device, against a real Mosquitto: snapshots (alert and manual),
the JPEGs published on the snapshot topic and field samples are masked and their faces
redacted; with the detector missing or damaged, alerts go out but no image does."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.config import load_config
from device.preprocess import decode_image, load_image
from device.privacy.masks import mask_version

FULL = "face_detection_full_range_sparse.tflite"
# two polygons away from the faces of coral/face.jpg (512 x 355)
MASKS = [
    [[0.0, 0.7], [0.4, 0.7], [0.4, 1.0], [0.0, 1.0]],
    [[0.6, 0.75], [0.95, 0.75], [0.95, 0.98]],
]
FACES = [(300, 116), (180, 150), (23, 135), (465, 155)]  # centres of the four faces
RULE = {  # fires on face.jpg (MobileNet V2: "cleaver" ~0.08) at the first frame
    "name": "door",
    "labels": ["cleaver"],
    "start_score": 0.05,
    "start_frames": 1,
    "end_frames": 3,
    "cooldown_s": 60,
}


def _config(write_config, tmp_path: Path, test_data: Path, port: int, model: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copyfile(test_data / "coral" / "face.jpg", folder / "face.jpg")
    return write_config(
        port,
        cameras=[
            {"name": "door", "source": str(folder), "loop": True, "realtime": True, "fps": 10}
        ],
        alerts={"rules": [RULE]},
        sampling={"enabled": True, "alerts": {"enabled": True, "start": True, "best": True}},
        upload={"outbox": {"dir": str(tmp_path / "samples")}},
        privacy={
            "faces": {"enabled": True, "model": str(model)},
            "cameras": {"door": {"masks": MASKS}},
        },
    )


def _inside(polygon, width: int, height: int, margin: int = 8) -> np.ndarray:
    """The polygon's pixels at least ``margin`` inside (an 8x8 JPEG block: no edge ringing)."""
    contour = (np.asarray(polygon) * [width, height]).astype(np.float32).reshape(-1, 1, 2)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(contour).astype(np.int32)], 1)
    inner = cv2.erode(mask, np.ones((2 * margin + 1,) * 2, np.uint8))
    return inner.astype(bool)


def check_image(jpeg: bytes, original: np.ndarray) -> None:
    """Every mask black (beyond JPEG noise), every face changed."""
    image = decode_image(jpeg)
    assert image is not None and image.shape == original.shape
    for polygon in MASKS:
        inside = _inside(polygon, 512, 355)
        assert inside.sum() > 1000 and image[inside].max() <= 6, polygon
    diff = np.abs(image.astype(int) - original.astype(int)).mean(axis=2)
    for x, y in FACES:
        assert diff[y - 10 : y + 10, x - 10 : x + 10].mean() > 8, (x, y)


def _run(runner):
    thread = threading.Thread(target=runner.run, name="test-runner")
    thread.start()
    return thread


def test_snapshots_published_jpegs_and_samples_are_masked_and_redacted(
    broker, write_config, subscriber_factory, send_command, tmp_path, test_data, wait_until
):
    from device.runner import Runner

    model = test_data / "mediapipe" / FULL
    path = _config(write_config, tmp_path, test_data, broker.port, model)
    sub = subscriber_factory(broker.port)
    original = load_image(test_data / "coral" / "face.jpg")
    runner = Runner(load_config(path), config_path=path)
    thread = _run(runner)
    try:
        alert = wait_until(lambda: sub.json_on("/door/alert"), what="alert")[0]
        jpeg = wait_until(lambda: sub.on("/door/snapshot"), what="snapshot")[0][1]
        check_image(jpeg, original)
        assert alert["type"] == "start" and alert["snapshot"]
        assert alert["redaction"] == {
            "mask_version": mask_version(MASKS),
            "masks": 2,
            "detector": f"face_detection_full_range_sparse@{runner.privacy.detector.sha256[:12]}",
            "min_score": 0.5,
            "method": "blur",
            "margin": 0.25,
            "tile_px": None,
            "faces": 4,
        }
        # the snapshot command: the latest frame, redacted the same way, published
        reply = send_command(sub, "snapshot", {"camera": "door"})
        assert reply["ok"], reply
        assert reply["result"]["snapshots"][0]["redaction"]["faces"] == 4
        wait_until(lambda: len(sub.on("/door/snapshot")) >= 2, what="manual snapshot")
        check_image(sub.on("/door/snapshot")[-1][1], original)
        # field samples: the JPEG and its sidecar
        samples = wait_until(lambda: sorted((tmp_path / "samples").glob("*.jpg")), what="sample")
    finally:
        runner.request_stop()
        thread.join(30)
    saved = sorted((tmp_path / "snapshots" / "door").glob("*.jpg"))
    assert len(saved) >= 2
    for snapshot in saved:
        check_image(snapshot.read_bytes(), original)
    for sample in samples:
        meta = json.loads(sample.with_suffix(".json").read_text())
        redaction = {k: v for k, v in alert["redaction"].items() if v is not None}
        assert meta["redaction"] == redaction, meta  # sidecars leave out nulls
        check_image(sample.read_bytes(), original)
    metrics = runner.metrics()["privacy"]
    assert metrics["faces"] == "ok" and metrics["withheld"] == {
        "snapshot": 0,
        "sample": 0,
        "image": 0,
    }
    assert metrics["images"]["snapshot"] >= 2 and metrics["images"]["sample"] >= 1
    assert metrics["faces_redacted"] == 4 * (
        metrics["images"]["snapshot"] + metrics["images"]["sample"]
    )


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_without_a_working_detector_alerts_go_out_but_no_image(
    broker,
    write_config,
    subscriber_factory,
    send_command,
    tmp_path,
    test_data,
    wait_until,
    caplog,
    damage,
):
    from device.runner import Runner

    model = tmp_path / FULL
    if damage == "corrupt":
        data = (test_data / "mediapipe" / FULL).read_bytes()
        model.write_bytes(data[:4096])  # cut short: the interpreter refuses it
    path = _config(write_config, tmp_path, test_data, broker.port, model)
    sub = subscriber_factory(broker.port)
    runner = Runner(load_config(path), config_path=path)
    with caplog.at_level("INFO"):
        thread = _run(runner)
        try:
            alert = wait_until(lambda: sub.json_on("/door/alert"), what="alert")[0]
            # the snapshot would have been published before the alert that names it
            assert sub.on("/door/snapshot") == []
            assert alert["type"] == "start" and alert["snapshot"] is None
            assert "the face detector cannot run" in alert["redaction"]["withheld"]
            reply = send_command(sub, "snapshot", {"camera": "door"})
            assert not reply["ok"] and "withheld by privacy" in reply["error"], reply
            wait_until(
                lambda: runner.privacy.metrics()["withheld"]["sample"] >= 1,
                what="a withheld sample",
            )
            assert sub.json_on("/door/rule/door")[-1]["state"] == "ON"  # the rule state too
        finally:
            runner.request_stop()
            thread.join(30)
    assert sub.on("/door/snapshot") == []
    assert not list((tmp_path / "snapshots").rglob("*.jpg"))
    assert not list((tmp_path / "samples").glob("*.jpg"))  # no sample either
    metrics = runner.metrics()["privacy"]
    assert metrics["faces"] == "unavailable" and metrics["withheld"]["snapshot"] >= 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(
        "detector cannot run" in e and "withheld" in e and "make models" in e for e in errors
    )
    assert any("snapshot withheld, not sent" in e for e in errors), errors
