"""``edgecam-convert`` end to end on a tiny real classifier (see conftest.py).

One conversion of all variants runs through the console script (session fixture); the other
scenarios call ``conversion.cli.main`` in-process to reuse the loaded TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conversion.cli import main
from device.inference import find_runtime

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CPU_VARIANTS = ("float32", "float16", "dynamic", "int8")
METRIC_KEYS = {"accuracy", "macro_f1", "agreement", "size_bytes", "latency_ms"}


def _exe(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def _clean_env(extra_path: Path | None = None) -> dict[str, str]:
    """An environment whose PATH has no edgetpu_compiler (unless ``extra_path`` adds one)."""
    env = {k: v for k, v in os.environ.items() if k != "EDGECAM_EDGETPU_COMPILER"}
    dirs = [str(extra_path)] if extra_path else []
    env["PATH"] = os.pathsep.join([*dirs, str(BIN), "/usr/bin", "/bin"])
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


@dataclass(frozen=True)
class Converted:
    out: Path
    returncode: int
    stdout: str
    stderr: str
    verification: dict


@pytest.fixture(scope="session")
def converted(tiny_run, tmp_path_factory) -> Converted:
    """`edgecam-convert RUN --out OUT`, all variants, no edgetpu_compiler on PATH."""
    out = tmp_path_factory.mktemp("converted") / "models"
    proc = subprocess.run(
        [_exe("edgecam-convert"), str(tiny_run.run_dir), "--out", str(out), "--threads", "2"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    verification = {}
    if (out / "verification.json").exists():
        verification = json.loads((out / "verification.json").read_text())
    return Converted(out, proc.returncode, proc.stdout, proc.stderr, verification)


def _classify(image: Path, bundle: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_exe("edgecam-device"), "classify", str(image), "--model", str(bundle), "--json"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )


def _interpreter(model: Path):
    runtime = find_runtime()
    kwargs = {"model_content": model.read_bytes()}
    resolver = runtime.no_default_delegates()
    if resolver is not None:
        kwargs["experimental_op_resolver_type"] = resolver
    interpreter = runtime.interpreter_class(**kwargs)
    interpreter.allocate_tensors()
    return interpreter


# -- the default conversion ---------------------------------------------------------------------


def test_all_cpu_variants_are_built_verified_and_pass_the_gate(converted: Converted) -> None:
    assert converted.returncode == 0, converted.stderr[-3000:]
    assert "Traceback" not in converted.stderr
    v = converted.verification
    assert v["gate"] == "passed"
    assert v["test_images"] == 400
    assert set(v["variants"]) == set(CPU_VARIANTS)  # no compiler here: no edgetpu bundle
    for name in CPU_VARIANTS:
        figures = v["variants"][name]
        assert set(figures) >= METRIC_KEYS, name
        assert figures["size_bytes"] == (converted.out / name / "model.tflite").stat().st_size
        assert figures["latency_ms"] > 0
        # the tiny CNN reaches ~93% on held-out digits; every variant stays within the gate
        assert figures["accuracy"] > 0.85, (name, figures)
        assert figures["accuracy_drop_points"] <= 1.0, (name, figures)
        assert figures["agreement"] >= 0.97, (name, figures)
    assert v["variants"]["float32"]["gate"] == "reference"
    assert v["variants"]["int8"]["gate"] == "passed"
    # int8 weights and activations are a quarter of float32 (plus fixed overhead)
    ratio = v["variants"]["int8"]["size_bytes"] / v["variants"]["float32"]["size_bytes"]
    assert ratio < 0.35, ratio
    # the table is printed and written as Markdown
    assert "variant" in converted.stdout and "int8" in converted.stdout
    markdown = (converted.out / "verification.md").read_text()
    assert "| variant | accuracy | macro-F1 | agreement |" in markdown
    assert markdown.count("| passed |") == 3


def test_without_compiler_the_default_run_warns_and_prints_the_command(
    converted: Converted,
) -> None:
    err = converted.stderr
    assert "warning: edgetpu_compiler not found" in err
    assert "coral-edgetpu-stable" in err and "sudo apt-get install edgetpu-compiler" in err
    assert "x86-64" in err
    int8 = converted.out / "int8" / "model.tflite"
    assert f"edgetpu_compiler -s -o {converted.out / 'edgetpu'} {int8}" in err
    assert not (converted.out / "edgetpu").exists()
    edgetpu = converted.verification["edgetpu"]
    assert edgetpu["requested"] and edgetpu["compiler"] is None and not edgetpu["compiled"]
    # the offline op check is there even without the compiler
    check = converted.verification["edgetpu_op_check"]
    assert check["unsupported_ops"] == {} and check["float_ops"] == []
    assert check["maps_fully"] is True
    assert {"CONV_2D", "FULLY_CONNECTED", "QUANTIZE"} <= set(check["op_counts"])
    assert "Edge TPU op check: all" in converted.stdout


def test_every_bundle_runs_in_edgecam_device(converted: Converted, tiny_run) -> None:
    manifest = json.loads(Path(tiny_run.run_dir / "run.json").read_text())["split_manifest"]
    items = json.loads(Path(manifest).read_text())["items"]
    tests = [it for it in items if it["split"] == "test"]
    agreeing = 0
    for it in tests[:: len(tests) // 5][:5]:  # five test images across the classes
        image = tiny_run.data_dir / it["path"]
        tops = {}
        for name in CPU_VARIANTS:
            proc = _classify(image, converted.out / name)
            assert proc.returncode == 0, (name, proc.stderr)
            record = json.loads(proc.stdout.strip().splitlines()[-1])
            top = record["top"][0]
            assert top["label"] in tiny_run.labels and 0.0 <= top["score"] <= 1.0
            tops[name] = top["label"]
        agreeing += len(set(tops.values())) == 1
    assert agreeing >= 4  # the variants agree on (almost) every image


def test_int8_is_uint8_batch1_full_integer(converted: Converted) -> None:
    path = converted.out / "int8" / "model.tflite"
    interpreter = _interpreter(path)
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, 28, 28, 3]
    assert list(inp["shape_signature"]) == [1, 28, 28, 3]
    assert out["dtype"] == np.uint8 and list(out["shape"]) == [1, 10]
    # raw pixels in: the input quantization is the identity
    assert inp["quantization"] == (1.0, 0)
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    float_ops = [
        op["op_name"]
        for op in interpreter._get_ops_details()
        if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
        and any(
            dtypes[i] in (np.float32, np.float16) for i in [*op["inputs"], *op["outputs"]] if i >= 0
        )
    ]
    assert float_ops == []
    # the float32 model keeps float tensors (the check above would see them)
    f32 = _interpreter(converted.out / "float32" / "model.tflite")
    assert f32.get_input_details()[0]["dtype"] == np.float32


def test_manifests_record_what_a_deployment_needs(converted: Converted, tiny_run) -> None:
    run = json.loads((tiny_run.run_dir / "run.json").read_text())
    for name in CPU_VARIANTS:
        folder = converted.out / name
        manifest = json.loads((folder / "model.json").read_text())
        assert manifest["variant"] == name
        assert manifest["name"] == "digits-tiny"
        assert (
            manifest["sha256"] == hashlib.sha256((folder / "model.tflite").read_bytes()).hexdigest()
        )
        assert manifest["input"] == {
            "height": 28,
            "width": 28,
            "color": "RGB",
            "resize": "bilinear",
            "crop": "none",
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
        }
        assert manifest["normalisation"]["mean"] == [0.0, 0.0, 0.0]
        assert manifest["labels"] == tiny_run.labels and manifest["num_classes"] == 10
        assert (folder / "labels.txt").read_text().split() == tiny_run.labels
        assert manifest["source"]["dataset_hash"] == run["dataset_hash"]
        assert manifest["source"]["run"] == "digits-tiny"
        assert (
            manifest["metrics"]["accuracy"] == converted.verification["variants"][name]["accuracy"]
        )
        assert manifest["metrics"]["test_images"] == 400
        assert manifest["verification"]["gate"] == "passed"
    q = json.loads((converted.out / "int8" / "model.json").read_text())["quantization"]
    assert q["input"] == {"shape": [1, 28, 28, 3], "dtype": "uint8", "scale": 1.0, "zero_point": 0}
    assert q["output"]["dtype"] == "uint8" and q["output"]["scale"] == pytest.approx(1 / 256)
    calibration = json.loads((converted.out / "int8" / "model.json").read_text())["calibration"]
    assert calibration["images"] == 300


# -- the gate catches a broken calibration -------------------------------------------------------


def test_constant_calibration_images_fail_the_gate(tiny_run, tmp_path, capsys) -> None:
    import cv2

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(20):
        cv2.imwrite(str(calib / f"gray{i}.png"), np.full((20, 20, 3), 40, np.uint8))
    out = tmp_path / "out"
    code = main(
        [
            str(tiny_run.run_dir),
            "--out",
            str(out),
            "--variants",
            "int8",
            "--calibration-data",
            str(calib),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "gate FAILED: int8 lost" in err
    assert "accuracy points against float32" in err
    assert "classes that lost most: 'digit" in err
    v = json.loads((out / "verification.json").read_text())
    assert v["gate"] == "failed"
    assert v["variants"]["int8"]["gate"] == "failed"
    assert v["variants"]["int8"]["accuracy_drop_points"] > 1.0
    assert v["variants"]["int8"]["classes_that_lost_most"]
    manifest = json.loads((out / "int8" / "model.json").read_text())
    assert manifest["verification"]["gate"] == "failed"
    assert not (out / "float32").exists()  # the reference was not asked for: not written


# -- Edge TPU compile ----------------------------------------------------------------------------


def test_explicit_edgetpu_without_compiler_exits_3_after_building_int8(
    tiny_run, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("PATH", _clean_env()["PATH"])
    monkeypatch.delenv("EDGECAM_EDGETPU_COMPILER", raising=False)
    out = tmp_path / "out"
    code = main([str(tiny_run.run_dir), "--out", str(out), "--variants", "edgetpu"])
    err = capsys.readouterr().err
    assert code == 3
    assert "error: edgetpu_compiler not found" in err
    assert "sudo apt-get install edgetpu-compiler" in err
    assert f"edgetpu_compiler -s -o {out / 'edgetpu'} {out / 'int8' / 'model.tflite'}" in err
    assert (out / "int8" / "model.tflite").exists()
    v = json.loads((out / "verification.json").read_text())
    assert v["gate"] == "passed" and v["edgetpu_op_check"]["maps_fully"] is True


def test_stand_in_compiler_is_run_and_its_report_parsed(
    tiny_run, tmp_path, capsys, monkeypatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    compiler = bin_dir / "edgetpu_compiler"
    shutil.copyfile(HERE / "fixtures" / "edgetpu_compiler_standin.sh", compiler)
    compiler.chmod(0o755)
    args_file = tmp_path / "args.txt"
    monkeypatch.setenv("PATH", _clean_env(bin_dir)["PATH"])
    monkeypatch.setenv("STANDIN_ARGS_FILE", str(args_file))
    monkeypatch.delenv("EDGECAM_EDGETPU_COMPILER", raising=False)
    out = tmp_path / "out"
    code = main([str(tiny_run.run_dir), "--out", str(out), "--variants", "int8", "edgetpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    # called as documented: -s -o OUTDIR MODEL, on the int8 model
    args = args_file.read_text().split("\n")[:4]
    assert args[:2] == ["-s", "-o"]
    assert args[3] == str(out / "int8" / "model.tflite")
    bundle = out / "edgetpu"
    data = (bundle / "model.tflite").read_bytes()
    assert b"edgetpu-custom-op" in data
    assert (bundle / "model_edgetpu.log").read_text().startswith("Edge TPU Compiler version")
    manifest = json.loads((bundle / "model.json").read_text())
    assert manifest["variant"] == "edgetpu"
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["edgetpu"]["ops_edgetpu"] == 9 and manifest["edgetpu"]["ops_cpu"] == 1
    assert manifest["quantization"]["input"]["dtype"] == "uint8"
    v = json.loads((out / "verification.json").read_text())
    assert v["edgetpu"]["compiled"] is True
    assert v["edgetpu"]["report"]["total_ops"] == 10
    assert v["edgetpu"]["report"]["operators"][-1]["op"] == "SOFTMAX"
    # no Edge TPU here: the compiled model is reported as not verified, the gate holds on int8
    assert v["variants"]["edgetpu"]["gate"] == "not verified"
    assert "libedgetpu" in v["variants"]["edgetpu"]["note"]
    assert v["gate"] == "passed"
    assert "9 op(s) run on the Edge TPU, 1 on the CPU (SOFTMAX x1" in captured.out
    # the device runtime recognises the bundle and says what it needs, without a traceback
    proc = _classify(
        tiny_run.data_dir / "digit3" / sorted(os.listdir(tiny_run.data_dir / "digit3"))[0], bundle
    )
    assert proc.returncode != 0
    assert "compiled for the Edge TPU" in proc.stderr and "Traceback" not in proc.stderr


# -- other sources and bad inputs ----------------------------------------------------------------


def test_keras_file_with_labels_and_data_folder(tiny_run, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "--model", str(tiny_run.run_dir / "model.keras"),
            "--labels", str(tiny_run.run_dir / "labels.txt"),
            "--data", str(tiny_run.data_dir),
            "--variants", "float32", "dynamic",
            "--max-test-images", "100",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err[-2000:]
    v = json.loads((out / "verification.json").read_text())
    assert set(v["variants"]) == {"float32", "dynamic"} and v["test_images"] == 100
    manifest = json.loads((out / "dynamic" / "model.json").read_text())
    assert manifest["name"] == "model" and manifest["input"]["height"] == 28


def test_op_check_reports_the_float_cast_of_a_uint8_savedmodel(tiny_run, tmp_path, capsys) -> None:
    # The SavedModel takes uint8 and casts inside (only the Keras file can be re-wired to float
    # input): the int8 model still works, and the op check says what stays on the CPU.
    out = tmp_path / "out"
    code = main(
        [
            "--model", str(tiny_run.run_dir / "saved_model"),
            "--labels", str(tiny_run.run_dir / "labels.txt"),
            "--data", str(tiny_run.data_dir),
            "--variants", "int8",
            "--max-test-images", "100",
            "--out", str(out),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    check = json.loads((out / "verification.json").read_text())["edgetpu_op_check"]
    assert "CAST" in check["float_ops"] and check["maps_fully"] is False
    assert "float ops (run on the CPU): CAST" in captured.out


def test_missing_run_folder_is_one_clear_error(tmp_path, capsys) -> None:
    code = main([str(tmp_path / "runs" / "nope")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: run folder not found:")
    assert "Traceback" not in err


def test_labels_that_do_not_match_the_output_size(tiny_run, tmp_path, capsys) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(tiny_run.labels[:9]) + "\n")
    code = main(
        [
            "--model", str(tiny_run.run_dir / "saved_model"),
            "--labels", str(labels),
            "--data", str(tiny_run.data_dir),
            "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "the labels list 9 classes but the model outputs 10" in err
    assert "Traceback" not in err


def test_model_with_an_op_tflite_cannot_run(tiny_run, tmp_path, capsys) -> None:
    import tensorflow as tf

    class Odd(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 3], tf.float32)])
        def serve(self, x):
            y = tf.math.erfinv(x / 256.0)  # no TFLite builtin kernel
            logits = tf.reduce_mean(y, axis=[1, 2]) @ tf.ones([3, 10])
            return {"scores": tf.nn.softmax(logits)}

    module = Odd()
    saved = tmp_path / "odd"
    tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
    code = main(
        [
            "--model", str(saved),
            "--labels", str(tiny_run.run_dir / "labels.txt"),
            "--data", str(tiny_run.data_dir),
            "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "error: float32 conversion failed" in err
    assert "tf.Erfinv" in err
    assert "Traceback" not in err
