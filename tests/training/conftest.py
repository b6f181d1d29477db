"""Fixtures for the training tests: the OpenCV digits as an ImageFolder dataset, one trained run.

digits.png (../shared/data/opencv) is a 2000x1000 grid of 20x20 handwritten digits: 50 rows x
100 columns, 5 rows per digit 0..9. OpenCV's tutorial split is kept: the left 50 columns
train, the right 50 test (DATA/train/<digit>/, DATA/test/<digit>/).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DIGITS_CONFIG = """\
backbone: small_cnn
alpha: 1.0
input_size: 20
batch_size: 64
epochs: 12
learning_rate: 0.002
patience: 6
seed: 7
baselines: true
augment:
  flip: none
  rotation: 0.03
  zoom: 0.05
  translation: 0.05
  fill_mode: constant
  brightness: 0.0
  contrast: 0.0
"""


def write_digits(digits_png: Path, dest: Path, columns: range | None = None) -> Path:
    """Cut digits.png into DATA/{train,test}/<digit>/r<row>c<col>.png (left half train)."""
    import cv2

    grid = cv2.imread(str(digits_png), cv2.IMREAD_GRAYSCALE)
    assert grid is not None and grid.shape == (1000, 2000), "unexpected digits.png"
    cells = grid.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3)
    for row in range(50):
        digit = row // 5
        for col in columns or range(100):
            split = "train" if col < 50 else "test"
            folder = dest / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"r{row:02d}c{col:03d}.png"), cells[row, col])
    return dest


@pytest.fixture(scope="session")
def digits_png(test_data: Path) -> Path:
    path = test_data / "opencv" / "digits.png"
    if not path.is_file():
        pytest.skip(f"{path} not found (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def digits_dir(digits_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full 5,000-image dataset in the pre-split layout (read-only by convention)."""
    return write_digits(digits_png, tmp_path_factory.mktemp("digits") / "digits")


@pytest.fixture
def digits_copy(digits_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the digits dataset that a test may change."""
    dest = tmp_path / "digits"
    shutil.copytree(digits_dir, dest, ignore=shutil.ignore_patterns("edgecam-split.json"))
    return dest


@pytest.fixture(scope="session")
def digits_run(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train the small CNN on the digits once per session (through the CLI) and return the run."""
    from training.cli import main

    base = tmp_path_factory.mktemp("digits-run")
    config = base / "digits.yaml"
    config.write_text(DIGITS_CONFIG, encoding="utf-8")
    run_dir = base / "runs" / "digits"
    code = main(["train", str(digits_dir), "--config", str(config), "--out", str(run_dir), "-q"])
    assert code == 0
    return run_dir
