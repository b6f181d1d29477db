"""edgecam-device classify on Coral's published models and images (real LiteRT)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "device.cli"]


def classify(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, "classify", *map(str, args)], capture_output=True, text=True, timeout=120
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def as_json(proc: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def parrot_args(coral: Path) -> list[str | Path]:
    """parrot.jpg with Coral's iNaturalist bird model and its labels."""
    return [
        coral / "parrot.jpg",
        "--model",
        coral / "mobilenet_v2_1.0_224_inat_bird_quant.tflite",
        "--labels",
        coral / "inat_bird_labels.txt",
    ]


def test_parrot_is_scarlet_macaw(test_data: Path) -> None:
    coral = test_data / "coral"
    proc = classify(
        *parrot_args(coral),
        "--json",
    )
    [record] = as_json(proc)
    top1 = record["top"][0]
    assert top1["label"] == "Ara macao (Scarlet Macaw)"
    assert top1["index"] == 923
    assert top1["score"] >= 0.65
    assert record["image"].endswith("parrot.jpg")
    assert record["inference_ms"] > 0


def test_plain_output_lines(test_data: Path) -> None:
    coral = test_data / "coral"
    proc = classify(
        *parrot_args(coral),
        "--top-k",
        "2",
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    label, score = lines[0].rsplit(": ", 1)
    assert label == "Ara macao (Scarlet Macaw)" and 0.65 <= float(score) <= 1.0


@pytest.mark.parametrize("resize,low", [("bilinear", 0.65), ("nearest", 0.72)])
def test_resize_filter_changes_score_as_published(test_data: Path, resize: str, low: float) -> None:
    # Coral's data README: about 0.70 (bilinear) to 0.78 (nearest) on CPU.
    coral = test_data / "coral"
    proc = classify(
        *parrot_args(coral),
        "--json",
        "--resize",
        resize,
    )
    top1 = as_json(proc)[0]["top"][0]
    assert top1["index"] == 923 and low <= top1["score"] <= 0.82


def test_cat_and_both_label_formats(test_data: Path) -> None:
    coral = test_data / "coral"
    model = coral / "mobilenet_v2_1.0_224_quant.tflite"
    images = [coral / "cat.bmp", coral / "bird.bmp", coral / "parrot.jpg"]
    plain = as_json(
        classify(
            *images,
            "--model",
            model,
            "--labels",
            coral / "imagenet_labels.txt",
            "--json",
            "--top-k",
            "5",
        )
    )
    ids = as_json(
        classify(
            *images,
            "--model",
            model,
            "--labels",
            coral / "imagenet_labels_with_ids.txt",
            "--json",
            "--top-k",
            "5",
        )
    )
    assert plain == [
        dict(r, inference_ms=i["inference_ms"]) for r, i in zip(ids, plain, strict=True)
    ]
    cat = plain[0]["top"][:3]
    egyptian = [c for c in cat if c["label"] == "Egyptian cat"]
    assert egyptian and egyptian[0]["index"] == 286 and egyptian[0]["score"] >= 0.7


def test_small_model_tiger_cat(test_data: Path) -> None:
    coral = test_data / "coral"
    proc = classify(
        coral / "cat.bmp",
        "--model",
        coral / "mobilenet_v1_0.25_128_quant.tflite",
        "--labels",
        coral / "imagenet_labels.txt",
        "--json",
    )
    top = as_json(proc)[0]["top"]
    assert any(c["index"] == 283 and c["score"] > 0.25 for c in top[:3])


def test_bird_model_chickadee_with_mean_std_identity(test_data: Path) -> None:
    # mean/std 128 are the model's own input quantisation (1/128, 128): same result as raw.
    coral = test_data / "coral"
    args = [
        coral / "bird.bmp",
        "--model",
        coral / "mobilenet_v2_1.0_224_inat_bird_quant.tflite",
        "--labels",
        coral / "inat_bird_labels.txt",
        "--json",
    ]
    raw = as_json(classify(*args))[0]["top"]
    folded = as_json(classify(*args, "--mean", "128", "--std", "128"))[0]["top"]
    assert raw[0]["index"] == 659 and raw[0]["score"] > 0.5
    assert [c["index"] for c in folded] == [c["index"] for c in raw]
    assert folded[0]["score"] == pytest.approx(raw[0]["score"], abs=1e-6)
    # A different normalisation really changes the input (and so the scores).
    other = as_json(classify(*args, "--mean", "0", "--std", "255"))[0]["top"]
    assert other[0]["score"] != pytest.approx(raw[0]["score"], abs=1e-3)


def test_centre_crop_runs_and_changes_input(test_data: Path) -> None:
    coral = test_data / "coral"
    args = [
        *parrot_args(coral),
        "--json",
    ]
    full = as_json(classify(*args))[0]["top"][0]
    crop = as_json(classify(*args, "--crop", "center"))[0]["top"][0]
    assert crop["index"] == 923
    assert crop["score"] != full["score"]


# -- errors: short, clear, non-zero, no traceback ---------------------------------------------
def assert_clean_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.lower()
    for needle in needles:
        assert needle.lower() in err, proc.stderr


def test_edgetpu_model_without_edgetpu(test_data: Path) -> None:
    coral = test_data / "coral"
    proc = classify(
        coral / "cat.bmp",
        "--model",
        coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite",
        check=False,
    )
    assert_clean_error(
        proc, "compiled for the Edge TPU", "--edgetpu", "mobilenet_v1_0.25_128_quant.tflite"
    )


def test_edgetpu_flag_without_libedgetpu(test_data: Path) -> None:
    coral = test_data / "coral"
    proc = classify(
        coral / "cat.bmp",
        "--model",
        coral / "mobilenet_v2_1.0_224_inat_bird_quant_edgetpu.tflite",
        "--edgetpu",
        check=False,
    )
    assert_clean_error(proc, "libedgetpu.so.1 not found", "libedgetpu1-std")


def test_missing_model(tmp_path: Path, test_data: Path) -> None:
    proc = classify(
        test_data / "coral" / "cat.bmp", "--model", tmp_path / "nope.tflite", check=False
    )
    assert_clean_error(proc, "model file not found", "nope.tflite")


def test_not_a_tflite_file(tmp_path: Path, test_data: Path) -> None:
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"\x00" * 64 + b"this is not a flatbuffer")
    proc = classify(test_data / "coral" / "cat.bmp", "--model", fake, check=False)
    assert_clean_error(proc, "not a TFLite model")
    jpeg = tmp_path / "photo.tflite"
    jpeg.write_bytes((test_data / "coral" / "parrot.jpg").read_bytes())
    assert_clean_error(
        classify(test_data / "coral" / "cat.bmp", "--model", jpeg, check=False),
        "not a TFLite model",
    )


def test_labels_count_mismatch(test_data: Path) -> None:
    coral = test_data / "coral"
    proc = classify(
        coral / "cat.bmp",
        "--model",
        coral / "mobilenet_v2_1.0_224_quant.tflite",
        "--labels",
        coral / "inat_bird_labels.txt",
        check=False,
    )
    assert_clean_error(proc, "965 labels", "1001 classes")


def test_missing_labels_and_bad_image(tmp_path: Path, test_data: Path) -> None:
    coral = test_data / "coral"
    model = coral / "mobilenet_v2_1.0_224_quant.tflite"
    proc = classify(
        coral / "cat.bmp", "--model", model, "--labels", tmp_path / "labels.txt", check=False
    )
    assert_clean_error(proc, "labels file not found")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    proc = classify(
        broken,
        coral / "cat.bmp",
        "--model",
        model,
        "--labels",
        coral / "imagenet_labels.txt",
        check=False,
    )
    assert_clean_error(proc, "cannot decode image", "broken.jpg")
    assert "Egyptian cat" in proc.stdout  # the good image is still classified


def test_device_import_and_classify_load_no_tensorflow(test_data: Path) -> None:
    coral = test_data / "coral"
    code = f"""
import sys
import device, device.cli, device.runner, device.mqtt, device.bench, device.sources
from device.classifier import Classifier
from device.preprocess import load_image
c = Classifier.open({str(coral / "mobilenet_v2_1.0_224_quant.tflite")!r}, {str(coral / "imagenet_labels.txt")!r})
top, _ = c.classify(load_image({str(coral / "cat.bmp")!r}))
assert top[0].label == "Egyptian cat", top
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'training', 'conversion', 'torch'))
print("HEAVY", heavy)
print("RUNTIME", c.backend.runtime.name)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "RUNTIME ai_edge_litert" in proc.stdout


def test_bundle_that_failed_its_gate_is_refused(tmp_path: Path, test_data: Path) -> None:
    import hashlib
    import shutil

    coral = test_data / "coral"
    bundle = tmp_path / "int8"
    bundle.mkdir()
    shutil.copyfile(coral / "mobilenet_v2_1.0_224_quant.tflite", bundle / "model.tflite")
    shutil.copyfile(coral / "imagenet_labels.txt", bundle / "labels.txt")
    sha = hashlib.sha256((bundle / "model.tflite").read_bytes()).hexdigest()
    manifest = {
        "name": "henhouse",
        "variant": "int8",
        "sha256": sha,
        "input": {
            "height": 224,
            "width": 224,
            "color": "RGB",
            "resize": "bilinear",
            "crop": "none",
        },
        "metrics": {"accuracy_drop_points": 22.7},
        "verification": {
            "gate": "failed",
            "variant_gate": "failed",
            "max_drop": 1.0,
            "reference": "float32",
        },
    }
    (bundle / "model.json").write_text(json.dumps(manifest))
    proc = classify(coral / "cat.bmp", "--model", bundle, check=False)
    assert_clean_error(
        proc, "failed its verification gate", "22.70 accuracy points", "allow_failed_gate"
    )
    forced = classify(coral / "cat.bmp", "--model", bundle, "--allow-failed-gate", "--json")
    assert as_json(forced)[0]["top"][0]["label"] == "Egyptian cat"
    assert "running it anyway" in forced.stderr
    # A passed gate (or none recorded) loads as usual; the manifest's name is used.
    manifest["verification"]["variant_gate"] = "passed"
    (bundle / "model.json").write_text(json.dumps(manifest))
    assert (
        as_json(classify(coral / "cat.bmp", "--model", bundle, "--json"))[0]["top"][0]["index"]
        == 286
    )
    # A tampered model.tflite no longer matches the manifest's sha256.
    with (bundle / "model.tflite").open("ab") as f:
        f.write(b"\0")
    assert_clean_error(
        classify(coral / "cat.bmp", "--model", bundle, check=False), "does not match its manifest"
    )


# -- --mean/--std never swallow the images --------------------------------------------------------
def test_std_and_mean_before_positional_images(test_data: Path) -> None:
    coral = test_data / "coral"
    model = ["--model", coral / "mobilenet_v2_1.0_224_quant.tflite"]
    labels = ["--labels", coral / "imagenet_labels.txt", "--json"]
    identity = as_json(classify(coral / "cat.bmp", *model, *labels))[0]["top"]
    # the option comes first and the image right after it: the image stays an image
    one = as_json(classify("--std", "127.5", coral / "cat.bmp", *model, *labels))
    assert [r["image"] for r in one] == [str(coral / "cat.bmp")]
    comma = as_json(
        classify(
            "--mean", "127.5,127.5,127.5", coral / "cat.bmp", "--std", "127.5", *model, *labels
        )
    )
    spaced = as_json(
        classify(
            "--mean",
            "127.5",
            "127.5",
            "127.5",
            coral / "cat.bmp",
            "--std",
            "127.5",
            *model,
            *labels,
        )
    )
    assert comma[0]["top"] == spaced[0]["top"]  # the documented forms mean the same
    assert comma[0]["top"][0]["label"] == "Egyptian cat"
    assert comma[0]["top"][0]["score"] != pytest.approx(identity[0]["score"], abs=1e-4)
    bad = classify("--std", "1,2", coral / "cat.bmp", *model, check=False)
    assert bad.returncode == 2 and "give 1 or 3 numbers" in bad.stderr
    assert "Traceback" not in bad.stderr
    threads = classify(coral / "cat.bmp", *model, "--threads", "0", check=False)
    assert_clean_error(threads, "--threads", "greater than or equal to 1")
