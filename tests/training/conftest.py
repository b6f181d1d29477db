"""Fixtures for the training tests: the OpenCV digits as an ImageFolder dataset, one trained run.

digits.png (../shared/data/opencv) is a 2000x1000 grid of 20x20 handwritten digits: 50 rows x
100 columns, 5 rows per digit 0..9. OpenCV's tutorial split is kept: the left 50 columns
train, the right 50 test (DATA/train/<digit>/, DATA/test/<digit>/).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
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


# -- field samples in an inbox (review, merge, retrain: issue 10) ---------------------------------
def _jpeg(image, quality: int = 95) -> bytes:
    import cv2
    import numpy as np

    if isinstance(image, bytes):
        return image
    img = np.asarray(image, dtype=np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


@pytest.fixture
def put_field_sample():
    """``put(inbox, image, top=[(label, score), ...], device=, camera=, policy=, ts=)`` stores
    one field sample (JPEG of an RGB/gray array, or JPEG bytes) with a valid edgecam.sample/1
    sidecar through the inbox's own Store (as the ingest server does) and returns its key
    ``device/date/sample_id``."""
    from device.samples import SampleMeta, sample_id
    from training.ingest.store import open_store

    stores: dict[str, object] = {}
    counter = [0]

    def put(inbox, image, top, device="pi-1", camera="door", policy="low_confidence",
            ts=None, labels=None, quality=95):  # fmt: skip
        jpeg = _jpeg(image, quality)
        counter[0] += 1
        labels = labels or sorted({lab for lab, _ in top})
        meta = SampleMeta.model_validate(
            {
                "schema": "edgecam.sample/1",
                "sample_id": sample_id(jpeg),
                "device": device,
                "camera": camera,
                "ts": ts or f"2026-11-2{counter[0] % 3 + 1}T08:{counter[0] // 60 % 60:02d}:"
                f"{counter[0] % 60:02d}.000Z",
                "model": {"name": "digits", "version": "1", "sha256": "0" * 64,
                          "variant": "int8"},
                "top": [{"label": lab, "index": labels.index(lab) if lab in labels else 0,
                         "score": round(float(s), 4)} for lab, s in top],
                "policy": policy,
            }
        )  # fmt: skip
        store = stores.setdefault(str(inbox), open_store(str(inbox)))
        store.put(meta, jpeg)
        return f"{meta.device}/{meta.date}/{meta.sample_id}"

    yield put
    for store in stores.values():
        store.close()


FIELD_BLUR_SIGMA = 1.1  # the field camera is a little out of focus: ~10 % of guesses go wrong


@dataclass(frozen=True)
class FieldDigits:
    data: Path  # DATA/train (columns 0-29) + DATA/test (columns 50-99): do not change it
    run: Path  # the small CNN trained on it
    field: list  # [(20x20 uint8 gray image, true label)] from columns 30-49, blurred


def _field_images(digits_png: Path, columns: range) -> list:
    import cv2

    grid = cv2.imread(str(digits_png), cv2.IMREAD_GRAYSCALE)
    cells = grid.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3)
    return [
        (cv2.GaussianBlur(cells[row, col], (0, 0), FIELD_BLUR_SIGMA), str(row // 5))
        for row in range(50)
        for col in columns
    ]


def _train_cli(data: Path, run_dir: Path, config_text: str) -> Path:
    from training.cli import main

    config = run_dir.parent / f"{run_dir.name}.yaml"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(config_text, encoding="utf-8")
    assert main(["train", str(data), "--config", str(config), "--out", str(run_dir), "-q"]) == 0
    return run_dir


@pytest.fixture(scope="session")
def field_digits(digits_png: Path, tmp_path_factory: pytest.TempPathFactory) -> FieldDigits:
    """A model trained on part of the digits (left 30 columns; the tutorial's right half is the
    test split) and field samples from the other part (columns 30-49), blurred."""
    base = tmp_path_factory.mktemp("field-digits")
    data = write_digits(digits_png, base / "digits", columns=[*range(30), *range(50, 100)])
    config = DIGITS_CONFIG.replace("baselines: true", "baselines: false")
    run = _train_cli(data, base / "runs" / "digits", config)
    return FieldDigits(data, run, _field_images(digits_png, range(30, 50)))


@pytest.fixture(scope="session")
def tiny_digits_run(digits_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN trained for 3 epochs on 500 digits (seconds): a real run folder for the
    review page's embeddings and Grad-CAM, not a good model."""
    base = tmp_path_factory.mktemp("tiny-digits")
    data = write_digits(digits_png, base / "digits", columns=[*range(10), *range(50, 55)])
    config = DIGITS_CONFIG.replace("epochs: 12", "epochs: 3").replace(
        "baselines: true", "baselines: false"
    )
    return _train_cli(data, base / "runs" / "tiny", config)
