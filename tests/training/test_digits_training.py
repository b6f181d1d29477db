"""Real training on the real OpenCV digits (tutorial split), and the run folder contract."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def test_digits_cnn_beats_097_and_the_baselines(digits_run: Path) -> None:
    report = _report(digits_run)
    acc = report["accuracy"]
    print(f"digits CNN test accuracy {acc:.4f}; baselines {report['baselines']}")
    assert acc >= 0.97
    base = report["baselines"]
    for name in (
        "knn_pixels",
        "svm_pixels",
        "knn_hog",
        "svm_hog",
        "knn_embeddings",
        "svm_embeddings",
    ):
        assert 0.5 < base[name] <= 1.0, name
    # OpenCV publishes 91.76 % for k-NN on raw pixels and about 94 % for SVM on HOG.
    assert 0.88 < base["knn_pixels"] < 0.96
    assert 0.90 < base["svm_hog"] < 0.98
    assert acc > base["knn_pixels"] and acc > base["svm_hog"]


def test_report_is_consistent_with_the_predictions(digits_run: Path) -> None:
    report = _report(digits_run)
    labels = (digits_run / "labels.txt").read_text().splitlines()
    assert report["labels"] == labels == [str(d) for d in range(10)]
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 2500
    assert cm.sum(axis=1).tolist() == [250] * 10  # the right half: 250 test digits per class

    with (digits_run / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2500
    recomputed = np.zeros_like(cm)
    for r in rows:
        recomputed[int(r["true_index"]), int(r["predicted_index"])] += 1
        assert Path(r["path"]).parent.parent.name == "test"
    assert (recomputed == cm).all()

    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    for i, label in enumerate(labels):
        m = report["per_class"][label]
        assert m["support"] == 250
        assert m["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
        assert m["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())
        p, r = m["precision"], m["recall"]
        assert m["f1"] == pytest.approx(2 * p * r / (p + r))
    assert report["macro_f1"] == pytest.approx(
        np.mean([m["f1"] for m in report["per_class"].values()])
    )
    assert report["top_k_accuracy"]["1"] == pytest.approx(report["accuracy"])
    assert report["top_k_accuracy"]["5"] >= report["top_k_accuracy"]["3"] >= report["accuracy"]
    wrong = [r for r in rows if r["true"] != r["predicted"]]
    assert len(report["worst_mistakes"]) == min(24, len(wrong))
    scores = [m["score"] for m in report["worst_mistakes"]]
    assert scores == sorted(scores, reverse=True)


def test_run_folder_contract(digits_run: Path, digits_dir: Path) -> None:
    from training.splits import load_split

    for name in (
        "model.keras",
        "saved_model",
        "labels.txt",
        "run.json",
        "config.yaml",
        "history.json",
        "report.json",
        "confusion_matrix.png",
        "confusion_matrix.csv",
        "training_curves.png",
        "worst_mistakes.png",
        "predictions.csv",
    ):
        assert (digits_run / name).exists(), name
    run = json.loads((digits_run / "run.json").read_text())
    assert run["name"] == "digits"
    assert run["data_dir"] == str(digits_dir.resolve())
    assert run["input"] == {
        "height": 20,
        "width": 20,
        "color": "RGB",
        "resize": "bilinear",
        "crop": "none",
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
    }
    assert run["backbone"] == "small_cnn" and run["weights"] == "none"
    assert run["labels"] == [str(d) for d in range(10)]
    assert 1 <= run["epochs_run"] <= 12 and run["train_seconds"] > 0
    print(f"digits training: {run['epochs_run']} epochs in {run['train_seconds']} s")

    images = sorted(p for p in digits_dir.rglob("*.png"))
    digests = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in images)
    expected = hashlib.sha256("".join(d + "\n" for d in digests).encode()).hexdigest()
    assert run["dataset_hash"] == expected

    manifest = Path(run["split_manifest"])
    assert manifest.is_absolute() and manifest.is_file()
    split = load_split(manifest)
    assert len(split["test"]) == 2500 and len(split["train"]) + len(split["val"]) == 2500
    assert all(p.parent.parent.name == "test" for p, _ in split["test"])
    assert all(p.parent.parent.name == "train" for p, _ in split["train"] + split["val"])
    assert all(int(p.parent.name) == c for p, c in split["train"])
    val_per_class = np.bincount([c for _, c in split["val"]], minlength=10)
    assert (val_per_class == 25).all()  # val carved from train, 10 % of each class

    history = json.loads((digits_run / "history.json").read_text())["epochs"]
    assert len(history) == run["epochs_run"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history[0])


def test_exported_savedmodel_takes_raw_uint8_pixels(digits_run: Path) -> None:
    from training.imageio import load_rgb
    from training.tfenv import import_tf

    tf = import_tf()
    with (digits_run / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))[::25]  # 100 test images
    loaded = tf.saved_model.load(str(digits_run / "saved_model"))
    serve = loaded.signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 20, 20, 3]
    images = np.stack([load_rgb(r["path"], 20, 20) for r in rows])
    (probs,) = serve(tf.constant(images)).values()
    probs = probs.numpy()
    assert probs.shape == (len(rows), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert probs.argmax(axis=1).tolist() == [int(r["predicted_index"]) for r in rows]


def test_evaluate_command_reproduces_the_report(digits_run: Path, capsys) -> None:
    from training.cli import main

    saved = (digits_run / "report.json").read_text()
    before = json.loads(saved)
    try:
        assert main(["evaluate", str(digits_run), "-q"]) == 0
        after = _report(digits_run)
    finally:
        (digits_run / "report.json").write_text(saved)
    assert after["accuracy"] == pytest.approx(before["accuracy"])
    assert after["confusion_matrix"] == before["confusion_matrix"]
    assert "baselines" not in after  # only with --baselines
    assert f"test accuracy {before['accuracy']:.4f}" in capsys.readouterr().out
