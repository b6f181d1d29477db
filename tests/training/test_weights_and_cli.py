"""Backbone weights (--weights imagenet|none|PATH), transfer learning, and CLI error handling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.config import TrainConfig
from training.errors import ConfigError, WeightsError

REPO = Path(__file__).resolve().parents[2]


def _small_flat(digits_dir: Path, dest: Path, digits: tuple[int, ...], per_class: int) -> Path:
    for d in digits:
        (dest / str(d)).mkdir(parents=True)
        for p in sorted((digits_dir / "train" / str(d)).glob("*.png"))[:per_class]:
            shutil.copyfile(p, dest / str(d) / p.name)
    return dest


def test_imagenet_without_internet_fails_early_and_clearly(
    digits_dir: Path, tmp_path: Path
) -> None:
    data = _small_flat(digits_dir, tmp_path / "data", (0, 1), 5)
    home = tmp_path / "home"  # no cached Keras weights
    env = {**os.environ, "HOME": str(home), "KERAS_HOME": str(home / ".keras")}
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "train",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--backbone",
        "mobilenetv2",
        "--alpha",
        "0.35",
        "--input-size",
        "96",
        "--weights",
        "imagenet",
        "-q",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode == 0 or "cannot download" not in proc.stderr:
        pytest.skip("this machine can download the ImageNet weights")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edgecam-train: error")]
    assert len(lines) == 1
    line = lines[0]
    assert "ImageNet weights of mobilenetv2" in line
    assert "https://storage.googleapis.com/" in line
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in line
    assert "--weights none" in line and "--weights PATH" in line
    assert not (data / "edgecam-split.json").exists()  # failed before touching the data


def test_local_weights_file_is_loaded(tmp_path: Path) -> None:
    import keras

    from training import models

    config = TrainConfig(backbone="mobilenetv2", alpha=0.35, input_size=32, weights="none")
    keras.utils.set_random_seed(1)
    source = models.build_backbone(config)
    path = tmp_path / "mnv2_035_32.weights.h5"
    source.save_weights(path)

    keras.utils.set_random_seed(2)  # a different random init...
    loaded = models.build_backbone(config.model_copy(update={"weights": str(path)}))
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # ...replaced by the file's weights

    wrong = config.model_copy(update={"alpha": 0.5, "weights": str(path)})
    with pytest.raises(WeightsError, match="does not fit mobilenetv2"):
        models.build_backbone(wrong)
    with pytest.raises(WeightsError, match="not found"):
        models.build_backbone(config.model_copy(update={"weights": str(tmp_path / "x.h5")}))


@pytest.mark.slow
def test_transfer_learning_from_a_weights_file(digits_dir: Path, tmp_path: Path) -> None:
    """Two phases (head, then fine-tuning) on a keras.applications backbone; unsplit data."""
    import keras

    from training.cli import main

    weights = tmp_path / "backbone.weights.h5"
    keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    ).save_weights(weights)
    data = _small_flat(digits_dir, tmp_path / "data", (0, 1, 7), 30)
    run = tmp_path / "run"
    argv = [
        "train",
        str(data),
        "--out",
        str(run),
        "--backbone",
        "mobilenetv2",
        "--alpha",
        "0.35",
        "--input-size",
        "32",
        "--weights",
        str(weights),
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "1",
        "--batch-size",
        "16",
        "-q",
    ]
    assert main(argv) == 0
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert [r["phase"] for r in history] == [1, 2]
    assert history[1]["lr"] == pytest.approx(1e-4)  # phase 2 at a tenth of the rate
    info = json.loads((run / "run.json").read_text())
    assert info["weights"] == str(weights) and info["epochs_run"] == 2
    assert (data / "edgecam-split.json").is_file()  # train created the split
    assert json.loads((run / "report.json").read_text())["per_class"].keys() == {"0", "1", "7"}
    # the run folder is taken: a second run there is refused, in one line
    assert main(argv) == 2


def test_option_errors(tmp_path: Path) -> None:
    from training import models

    with pytest.raises(ConfigError, match="small_cnn has no ImageNet weights"):
        models.validate_backbone_options(TrainConfig(backbone="small_cnn", weights="imagenet"))
    with pytest.raises(ConfigError, match="alpha"):
        models.validate_backbone_options(TrainConfig(alpha=0.6, weights="imagenet"))
    with pytest.raises(ConfigError, match="minimum 32"):
        models.validate_backbone_options(TrainConfig(input_size=20, weights="none"))


@pytest.mark.parametrize(
    ("setup", "argv", "expect"),
    [
        ("none", ["train", "{d}/missing"], "data folder not found"),
        ("empty_class", ["train", "{d}/data", "--backbone", "small_cnn"], "no images"),
        ("one_class", ["train", "{d}/data", "--backbone", "small_cnn"], "at least 2 class"),
        ("none", ["train", "{d}", "--config", "{d}/nope.yaml"], "config file not found"),
        ("bad_yaml", ["train", "{d}/data", "--config", "{d}/c.yaml"], "epochs"),
        ("none", ["evaluate", "{d}"], "not a finished run"),
        ("none", ["train", "{d}/data", "--resume", "--out", "{d}/r"], "nothing to resume"),
    ],
)
def test_cli_errors_are_one_line(
    setup: str, argv: list[str], expect: str, tmp_path: Path, capsys
) -> None:
    from training.cli import main

    data = tmp_path / "data"
    if setup in ("empty_class", "one_class", "bad_yaml"):
        from PIL import Image

        (data / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(data / "a" / "x.png")
        if setup == "empty_class":
            (data / "b").mkdir()
    if setup == "bad_yaml":
        (tmp_path / "c.yaml").write_text("epochs: -3\n")
    code = main([a.format(d=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("edgecam-train: error: ")
    assert expect in err[0]


@pytest.mark.parametrize("sub", [[], ["check"], ["split"], ["train"], ["evaluate"]])
def test_help_everywhere(sub: list[str], capsys) -> None:
    from training.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*sub, "--help"])
    assert exc.value.code == 0
    assert "usage: edgecam-train" in capsys.readouterr().out
