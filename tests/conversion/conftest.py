"""A tiny real classifier for the conversion tests, trained once per session.

Data: OpenCV's handwritten digits (../shared/data/opencv/digits.png, 20x20 cells, 500 per
digit), written as RGB PNG files into an ImageFolder with a split manifest, and a run folder
laid out per the training run contract (model.keras, saved_model/, labels.txt, run.json).
The network takes raw uint8 RGB pixels at 28x28 (a Rescaling layer inside); the 20x20 images
are resized by the device's preprocessing at verification, as on a camera.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS = [f"digit{i}" for i in range(10)]
TRAIN_PER_CLASS = 100
TEST_PER_CLASS = 40
SIZE = 28


@dataclass(frozen=True)
class TinyRun:
    run_dir: Path
    data_dir: Path
    labels: list[str]


def _digit_cells(png: Path) -> np.ndarray:
    import cv2

    gray = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    assert gray is not None and gray.shape == (1000, 2000), "unexpected digits.png"
    cells = np.array([np.hsplit(row, 100) for row in np.vsplit(gray, 50)])  # 50x100x20x20
    return cells.reshape(10, 500, 20, 20)  # 5 rows (500 cells) per digit, in order


def _write_dataset(cells: np.ndarray, root: Path) -> list[dict]:
    import cv2

    rng = np.random.default_rng(0)
    items = []
    for digit in range(10):
        order = rng.permutation(500)[: TRAIN_PER_CLASS + TEST_PER_CLASS]
        folder = root / LABELS[digit]
        folder.mkdir(parents=True)
        for n, idx in enumerate(order):
            rgb = np.repeat(cells[digit, idx][:, :, None], 3, axis=2)
            path = folder / f"{idx:03d}.png"
            cv2.imwrite(str(path), rgb)
            items.append(
                {
                    "path": f"{LABELS[digit]}/{path.name}",
                    "label": LABELS[digit],
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                    "split": "train" if n < TRAIN_PER_CLASS else "test",
                }
            )
    return items


def _arrays(root: Path, items: list[dict], split: str) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    xs, ys = [], []
    for it in items:
        if it["split"] != split:
            continue
        rgb = cv2.cvtColor(cv2.imread(str(root / it["path"])), cv2.COLOR_BGR2RGB)
        xs.append(cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR))
        ys.append(LABELS.index(it["label"]))
    return np.asarray(xs, dtype=np.uint8), np.asarray(ys)


def _train(x: np.ndarray, y: np.ndarray):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    h = keras.layers.Rescaling(1 / 255.0)(inputs)
    h = keras.layers.Conv2D(16, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, epochs=12, batch_size=32, verbose=0, shuffle=True)
    return model


@pytest.fixture(scope="session")
def tiny_run(test_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """A trained run folder + its ImageFolder (trained once per session, ~15 s)."""
    png = test_data / "opencv" / "digits.png"
    if not png.exists():
        pytest.skip(f"{png} not found (see ../shared/data/README.md)")
    base = tmp_path_factory.mktemp("tiny-run")
    data_dir = base / "digits"
    items = _write_dataset(_digit_cells(png), data_dir)
    manifest = {
        "version": 1,
        "created_at": "2025-01-01T00:00:00.000Z",
        "data_dir": str(data_dir),
        "seed": 0,
        "presplit": False,
        "fractions": {"train": 0.7, "val": 0.0, "test": 0.3},
        "labels": LABELS,
        "items": items,
    }
    manifest_path = data_dir / "edgecam-split.json"
    manifest_path.write_text(json.dumps(manifest))

    model = _train(*_arrays(data_dir, items, "train"))
    x_test, y_test = _arrays(data_dir, items, "test")
    keras_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))

    run_dir = base / "runs" / "digits-tiny"
    run_dir.mkdir(parents=True)
    model.save(run_dir / "model.keras")
    model.export(str(run_dir / "saved_model"), verbose=False)
    (run_dir / "labels.txt").write_text("\n".join(LABELS) + "\n")
    run_info = {
        "name": "digits-tiny",
        "created_at": "2025-01-01T00:00:00.000Z",
        "data_dir": str(data_dir),
        "dataset_hash": hashlib.sha256(
            "".join(sorted(i["sha256"] for i in items)).encode()
        ).hexdigest(),
        "split_manifest": str(manifest_path),
        "labels": LABELS,
        "input": {
            "height": SIZE,
            "width": SIZE,
            "color": "RGB",
            "resize": "bilinear",
            "crop": "none",
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
        },
    }
    (run_dir / "run.json").write_text(json.dumps(run_info, indent=2))
    (run_dir / "report.json").write_text(json.dumps({"test": {"accuracy": keras_acc}}))
    return TinyRun(run_dir, data_dir, LABELS)
