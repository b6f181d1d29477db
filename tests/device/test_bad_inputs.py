"""Bad input gets a clear answer through the real CLI: the cause and the fix on one or two lines,
a non-zero exit status, no traceback. Images and models go through ``classify``, configs
through ``validate`` and ``run`` (they share one loader)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from device.manifest import InputSpec, Manifest, read_manifest, write_manifest

CLI = [sys.executable, "-m", "device.cli"]
SMALL_MODEL = "mobilenet_v1_0.25_128_quant.tflite"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    proc = subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def png(width: int, height: int, rows: int | None = None) -> bytes:
    """A PNG whose header declares width x height (only ``rows`` rows of data follow)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    data = zlib.compress(b"\x00" * (width * 3 + 1) * (height if rows is None else rows), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )


def jpeg_header(width: int, height: int) -> bytes:
    """SOI, an APP0 segment and a baseline SOF0 frame header declaring width x height."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00" * 3
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


# -- images --------------------------------------------------------------------------------------
def test_bad_images_each_get_a_line_and_the_good_one_is_classified(
    tmp_path: Path, test_data: Path
) -> None:
    coral = test_data / "coral"
    good_png = (coral / "cat.bmp").read_bytes()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png(30000, 30000, rows=16))  # 30000 x 30000 declared, a few KB on disk
    assert bomb.stat().st_size < 100_000
    jbomb = tmp_path / "bomb.jpg"
    jbomb.write_bytes(jpeg_header(60000, 60000))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(os.urandom(4096))
    (tmp_path / "folder.jpg").mkdir()
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(tmp_path / "loop2.jpg")
    (tmp_path / "loop2.jpg").symlink_to(loop)
    cut = tmp_path / "cut.png"
    small = png(64, 64)
    cut.write_bytes(small[: len(small) // 2])
    (tmp_path / "cut-header.bmp").write_bytes(good_png[:20])

    images = [
        "bomb.png",
        "bomb.jpg",
        "empty.jpg",
        "garbage.png",
        "folder.jpg",
        "loop.jpg",
        "cut.png",
        "cut-header.bmp",
        "missing.jpg",
    ]
    proc = cli(
        "classify",
        "--model",
        str(coral / SMALL_MODEL),
        "--labels",
        str(coral / "imagenet_labels.txt"),
        str(coral / "cat.bmp"),
        *(str(tmp_path / name) for name in images),
    )
    err = proc.stderr
    assert proc.returncode == 1, err
    assert "tiger cat" in proc.stdout  # the good image is still classified
    assert (
        f"error: image {bomb} is too large: 30000 x 30000 pixels (900.0 MP; the limit is 50 MP)"
        in err
    )
    assert "fix: downscale it, or raise the limit with EDGECAM_MAX_IMAGE_PIXELS=<pixels>" in err
    assert f"image {jbomb} is too large: 60000 x 60000 pixels" in err
    not_image = "is not a JPEG, PNG, BMP, GIF, WebP or TIFF file, or its header is cut short"
    for name in ("empty.jpg", "garbage.png", "cut-header.bmp"):
        assert f"cannot decode image {tmp_path / name}: it {not_image}" in err
    assert f"image {tmp_path / 'folder.jpg'} is a folder, not a file" in err
    assert f"cannot read image {loop}: a loop of symbolic links" in err
    assert f"cannot decode image {cut} (PNG, 64 x 64): the file is damaged or cut short" in err
    assert f"image not found: {tmp_path / 'missing.jpg'}" in err
    assert err.count("error: ") == len(images)


def test_pixel_limit_is_configurable(test_data: Path) -> None:
    coral = test_data / "coral"
    args = ["classify", "--model", str(coral / SMALL_MODEL), str(coral / "cat.bmp")]
    proc = cli(*args, env={"EDGECAM_MAX_IMAGE_PIXELS": "100000"})  # cat.bmp is 512 x 341
    assert proc.returncode == 1
    assert "512 x 341 pixels (0.2 MP; the limit is 0.1 MP)" in proc.stderr
    proc = cli(*args, env={"EDGECAM_MAX_IMAGE_PIXELS": "lots"})
    assert proc.returncode == 1
    assert "EDGECAM_MAX_IMAGE_PIXELS='lots' is not a whole number" in proc.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_image(tmp_path: Path, test_data: Path) -> None:
    image = tmp_path / "secret.bmp"
    shutil.copyfile(test_data / "coral" / "cat.bmp", image)
    image.chmod(0)
    proc = cli("classify", "--model", str(test_data / "coral" / SMALL_MODEL), str(image))
    assert proc.returncode == 1
    assert f"cannot read image {image}: permission denied" in proc.stderr


# -- model bundles -------------------------------------------------------------------------------
def _bundle(tmp_path: Path, test_data: Path, manifest_text: str | bytes | None) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(test_data / "coral" / SMALL_MODEL, folder / "model.tflite")
    shutil.copyfile(test_data / "coral" / "imagenet_labels.txt", folder / "labels.txt")
    if isinstance(manifest_text, str):
        (folder / "model.json").write_text(manifest_text)
    elif isinstance(manifest_text, bytes):
        (folder / "model.json").write_bytes(manifest_text)
    return folder


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("[]", "model.json must be a JSON object, got a list"),
        ('"model"', "model.json must be a JSON object, got a string"),
        ('{"input": null}', "model.json: input must be an object {height, width, resize, ...}"),
        ('{"input": []}', "input must be an object {height, width, resize, ...}, got a list"),
        ('{"input": {"height": "128"}}', "input.height must be a whole number of pixels"),
        ('{"input": {"height": 12.5}}', "input.height must be a whole number of pixels"),
        ('{"input": {"width": true}}', "input.width must be a whole number of pixels"),
        ('{"input": {"mean": ["a"]}}', "input.mean must be a number or 3 numbers (R, G, B)"),
        ('{"input": {"mean": [1, 2]}}', "input.mean must be 1 or 3 numbers (R, G, B), got 2"),
        ('{"input": {"std": 0}}', "std must not be 0"),
        ('{"input": {"mean": NaN}}', "NaN is not a number JSON allows"),
        ('{"name": "a", "name": "b"}', "model.json: key 'name' is given twice in one object"),
        ('{"input": {"std": [1e999]}}', "input.std must be finite numbers"),
        ('{"input": {"resize": "cubic"}}', "input.resize must be one of bilinear, area, nearest"),
        ('{"input": {"crop": "middle"}}', "input.crop must be one of none, center"),
        ('{"input": {"color": "BGR"}}', "input.color must be one of RGB"),
        ('{"variant": "float64"}', "variant must be one of float32, float16, dynamic, int8"),
        ('{"name": 5}', "name must be a string, got a number"),
        ('{"sha256": "abc"}', "sha256 must be 64 lowercase hex digits"),
        ('{"verification": "failed"}', "verification must be an object, got a string"),
        ('{"verification": {"gate": "meh"}}', "verification.gate must be one of passed, failed"),
        ('{"labels": ["a", "b"], "num_classes": 3}', "num_classes is 3 but labels lists 2"),
        (
            '{"name": "x",',
            "model.json is not valid JSON (line 1, column 14: Expecting property name",
        ),
        ("[" * 100_000, "is nested too deeply to be a manifest"),
        ("", "model.json is not valid JSON (line 1, column 1"),
        (b"\x00\x01\x02binary", "model.json is not a text file (it contains NUL bytes)"),
        (b'{"name": "caf\xe9"}', "model.json is not UTF-8 text (byte 0xe9 on line 1)"),
    ],
)
def test_bad_manifest(tmp_path: Path, test_data: Path, manifest, message: str) -> None:
    bundle = _bundle(tmp_path, test_data, manifest)
    proc = cli("classify", "--model", str(bundle), str(test_data / "coral" / "cat.bmp"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "fix:" in proc.stderr


def test_manifest_as_written_is_read_back_and_runs(tmp_path: Path, test_data: Path) -> None:
    bundle = _bundle(tmp_path, test_data, None)
    written = Manifest(
        name="tiny",
        variant="int8",
        # Coral's input quantization (1/128, 128) with mean = std = 128 is the identity
        input=InputSpec(height=128, width=128, mean=(128.0,) * 3, std=(128.0,) * 3),
        extra={"quantization": {"input": {"dtype": "uint8"}}},
    )
    write_manifest(bundle, written)
    assert read_manifest(bundle) == written
    data = json.loads((bundle / "model.json").read_text())
    assert data["input"]["mean"] == [128.0] * 3
    assert data["quantization"]["input"]["dtype"] == "uint8"  # unmodelled keys kept
    proc = cli("classify", "--model", str(bundle), str(test_data / "coral" / "cat.bmp"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["top"][0]["label"] == "tiger cat"


def test_bad_model_files(tmp_path: Path, test_data: Path) -> None:
    cat = str(test_data / "coral" / "cat.bmp")
    empty = _bundle(tmp_path, test_data, None) / "model.tflite"
    empty.write_bytes(b"")
    proc = cli("classify", "--model", str(empty.parent), cat)
    assert proc.returncode == 2
    assert f"{empty} is not a TFLite model (no TFL3 identifier)" in proc.stderr
    folder = tmp_path / "no-model"
    folder.mkdir()
    proc = cli("classify", "--model", str(folder), cat)
    assert proc.returncode == 2 and f"{folder} is a folder without model.tflite" in proc.stderr
    fifo = tmp_path / "pipe.tflite"
    os.mkfifo(fifo)
    proc = cli("classify", "--model", str(fifo), cat)
    assert proc.returncode == 2
    assert f"model file {fifo} is not a regular file (a device, pipe or socket)" in proc.stderr


# -- labels --------------------------------------------------------------------------------------
def test_labels_with_byte_order_mark_are_read_correctly(tmp_path: Path, test_data: Path) -> None:
    coral = test_data / "coral"
    labels = tmp_path / "labels_with_ids.txt"
    # Notepad's UTF-8: a BOM before the first id would turn the id format into plain lines.
    labels.write_bytes(b"\xef\xbb\xbf" + (coral / "imagenet_labels_with_ids.txt").read_bytes())
    proc = cli(
        "classify",
        "--model",
        str(coral / SMALL_MODEL),
        "--labels",
        str(labels),
        str(coral / "cat.bmp"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("tiger cat: ")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x01\x02\x03" * 100, "is not a text file (it contains NUL bytes)"),
        (b"cat\ncaf\xe9\n", "is not UTF-8 text (byte 0xe9 on line 2)"),
        (b"0 cat\n1 dog\n1 fox\n", "id 1 is given twice (again on non-empty line 3)"),
        (b"\n \n", "is empty"),
        (b"x" * (17 << 20), "is too large (17,825,792 bytes; at most 16,777,216)"),
        (None, "is a folder, not a file"),
    ],
)
def test_bad_labels(tmp_path: Path, test_data: Path, content: bytes | None, message: str) -> None:
    labels = tmp_path / "labels.txt"
    if content is None:
        labels.mkdir()
    else:
        labels.write_bytes(content)
    coral = test_data / "coral"
    proc = cli(
        "classify",
        "--model",
        str(coral / SMALL_MODEL),
        "--labels",
        str(labels),
        str(coral / "cat.bmp"),
    )
    assert proc.returncode == 2, proc.stderr
    assert f"labels file {labels} {message}" in proc.stderr or message in proc.stderr
    assert str(labels) in proc.stderr


# -- configs -------------------------------------------------------------------------------------
BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefgh", strict=True)
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BOMB, "expands to more than 10,000 values (at line"),
        ("a: &a [*a]\n", "line 1: a.0: an alias refers to the node that contains it"),
        (
            "device_id: pi\nmqtt:\n  host: a\n  port: 1883\n  host: b\n",
            "line 5: mqtt.host: duplicate key 'host' (first given on line 3)",
        ),
        ("cameras:\n  - name: a\n    fps: .inf\n", "line 3: cameras.0.fps: .inf is not a finite"),
        ("mqtt:\n  keepalive: -.Inf\n", "line 2: mqtt.keepalive: -.Inf is not a finite number"),
        ("cameras:\n  - name: a\n    roi: [0, 0, .nan, 1]\n", "cameras.0.roi.2: .nan is not a"),
        (
            "alerts:\n  rules:\n    - name: fox\n      labels: [red fox]\n      start_score: .nan\n",
            "line 5: alerts.rules.0.start_score: .nan is not a finite number",
        ),
        ("metrics:\n  interval: 1.0e+999\n", "metrics.interval: 1.0e+999 is not a finite"),
        ("cameras:\n  - name: a\n    fps: 'nan'\n", "cameras.0.fps: Input should be a finite"),
        (
            "cameras:\n  - name: ../etc\n",
            "camera name '../etc' is not allowed: use letters, digits",
        ),
        ("cameras:\n  - name: 'a/b'\n", "camera name 'a/b' is not allowed"),
        ("cameras:\n  - name: 'cam+'\n", "camera name 'cam+' is not allowed"),
        ("cameras:\n  - name: '#'\n", "camera name '#' is not allowed"),
        ("cameras:\n  - name: 'front door'\n", "camera name 'front door' is not allowed"),
        ("cameras:\n  - name: ..\n", "camera name '..' is not allowed"),
        ("device_id: 'pi/+'\n", "device_id 'pi/+' is not allowed: use letters, digits"),
        ("- a\n- b\n", "the top level must be a mapping of sections"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "is nested too deeply to be a config file"),
        ("device_id: pi\x07\n", "character #x0007 at position 13 is not allowed in YAML"),
    ],
)
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "device.yaml"
    path.write_text(text)
    proc = cli("validate", "--config", str(path))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"device_id: pi\nname: caf\xe9\n", "is not UTF-8 text (byte 0xe9 on line 2)"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00" * 50, "is not a text file (it contains NUL bytes)"),
        (b"# " + b"x" * (1 << 20) + b"\n", "is too large (1,048,579 bytes; at most 1,048,576)"),
        (None, "is a folder, not a file"),
    ],
)
def test_unreadable_config_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "device.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    proc = cli("validate", "--config", str(path))
    assert proc.returncode == 2
    assert f"config file {path} {message}" in proc.stderr


def test_config_symlink_loop(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.symlink_to(b)
    b.symlink_to(a)
    proc = cli("run", "--config", str(a))
    assert proc.returncode == 2
    assert f"cannot read config file {a}: a loop of symbolic links" in proc.stderr


@pytest.mark.parametrize("command", ["validate", "run"])
def test_yaml_syntax_errors_never_print_secrets(tmp_path: Path, command: str) -> None:
    path = tmp_path / "device.yaml"
    path.write_text("mqtt:\n  host: broker\n  password: hunter2: oops\n")
    proc = cli(command, "--config", str(path))
    assert proc.returncode == 2
    assert "hunter2" not in proc.stderr + proc.stdout
    assert "line 3, column 20: mapping values are not allowed here: password: ***" in proc.stderr
    path.write_text("cameras:\n  - name: door\n    source: rtsp://admin:hunter2@192.0.2.10/s: x\n")
    proc = cli(command, "--config", str(path))
    assert proc.returncode == 2
    assert "hunter2" not in proc.stderr + proc.stdout
    assert "rtsp://admin:***@192.0.2.10/s" in proc.stderr


def test_unquoted_off_on_yes_no_are_accepted(write_config) -> None:
    path = write_config()
    text = path.read_text()
    assert "format: 'off'" in text  # what a YAML writer does; users write it bare
    text = text.replace("format: 'off'", "format: off\n  changes_only: no")
    text = text.replace("enabled: false", "enabled: off")
    path.write_text(text)
    proc = cli("validate", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "mqtt: off" in proc.stdout
