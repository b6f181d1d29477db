"""End to end on real data: field samples -> review (API) -> merge -> retrain -> verified bundle.

A small CNN trained on the left 30 columns of OpenCV's digits (test split: the right half, as in
OpenCV's tutorial) meets field samples from columns 30-49 seen through a slightly blurred lens:
its guesses (real ones, from the model) are wrong for about a tenth of them. The test writes the
samples into the inbox of a real ingest server, reviews them through the review API as a person
would (accept the right guesses in bulk, relabel the wrong ones), merges, retrains from the old
weights, converts and verifies the new bundle, and checks the before/after report.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
httpx = pytest.importorskip("httpx", reason="httpx is in the [dev] extra")

PASSWORD = "field loop reviewer"


def _guesses(run: Path, images: list[np.ndarray]) -> np.ndarray:
    """The old model's probabilities for the field images, as the device would have seen them
    (JPEG, decoded and resized by the shared preprocessing)."""
    import cv2
    import keras

    from training.imageio import decode_rgb, resize_rgb

    model = keras.models.load_model(run / "model.keras", compile=False)
    batch = np.stack(
        [resize_rgb(decode_rgb(cv2.imencode(".jpg", im)[1].tobytes()), 20, 20) for im in images]
    )
    return np.asarray(model.predict(batch, verbose=0))


def _review(server, truth: dict[str, str], guess: dict[str, str]) -> None:
    client = httpx.Client(base_url=server.url, timeout=60)
    page = client.get("/review/login")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = client.post(
        "/review/login", data={"csrf_token": token, "name": "rita", "password": PASSWORD}
    )
    assert r.status_code == 303
    csrf = client.get("/review/").text.split('name="csrf-token" content="')[1].split('"')[0]
    listed = client.get("/review/api/samples", params={"status": "pending"}).json()
    assert listed["total"] == len(truth)
    right = [k for k in truth if truth[k] == guess[k]]
    wrong: dict[str, list[str]] = defaultdict(list)
    for k in truth:
        if truth[k] != guess[k]:
            wrong[truth[k]].append(k)
    headers = {"X-CSRF-Token": csrf}
    r = client.post(
        "/review/api/decisions",
        headers=headers,
        json={"keys": right, "action": "accept", "via": "bulk"},
    )
    assert r.status_code == 200, r.text
    for label, keys in wrong.items():
        r = client.post(
            "/review/api/decisions",
            headers=headers,
            json={"keys": keys, "action": "relabel", "label": label, "via": "bulk"},
        )
        assert r.status_code == 200, r.text
    assert client.get("/review/api/samples").json()["total"] == 0  # nothing left pending


def test_review_merge_retrain_improves_the_field_and_keeps_the_test_split(
    field_digits, tmp_path, ingest_server_factory, put_field_sample
) -> None:
    from training.cli import main
    from training.review.users import add_reviewer

    data = shutil.copytree(field_digits.data, tmp_path / "digits")
    server = ingest_server_factory()
    inbox = Path(server.inbox)
    images = [im for im, _ in field_digits.field]
    probs = _guesses(field_digits.run, images)
    labels = [str(d) for d in range(10)]
    truth: dict[str, str] = {}
    guess: dict[str, str] = {}
    start = time.perf_counter()  # the samples arrive in the inbox
    for (image, label), p in zip(field_digits.field, probs, strict=True):
        top = [(labels[i], float(p[i])) for i in np.argsort(-p)[:3]]
        key = put_field_sample(inbox, image, top, device="desk-pi", policy="low_confidence")
        truth[key], guess[key] = label, top[0][0]
    wrong = sum(truth[k] != guess[k] for k in truth)
    print(f"{len(truth)} field samples, {wrong} wrong guesses ({100 * wrong / len(truth):.1f}%)")
    assert 0.03 * len(truth) < wrong < 0.5 * len(truth)

    add_reviewer(server.workdir / "edgecam-reviewers.txt", "rita", PASSWORD)
    server.start()
    t = time.perf_counter()
    _review(server, truth, guess)
    review_s = time.perf_counter() - t
    server.stop()

    t = time.perf_counter()
    report_json = tmp_path / "merge.json"
    assert main(["merge", str(inbox), str(data), "--json", str(report_json), "-q"]) == 0
    merge_s = time.perf_counter() - t
    merged = json.loads(report_json.read_text())
    field_test = merged["counts"]["field_test"]
    print(f"merge: {merged['counts']}")
    assert sum(field_test.values()) == pytest.approx(0.25 * len(truth), abs=20)
    assert set(field_test) == set(labels)
    split = json.loads((data / "edgecam-split.json").read_text())
    field_in_test = [
        it for it in split["items"] if "field-" in it["path"] and it["split"] == "test"
    ]
    assert field_in_test == []  # field samples stay out of the original test split

    new_run = tmp_path / "runs" / "digits-field"
    t = time.perf_counter()
    code = main([
        "retrain", str(field_digits.run), str(data), "--out", str(new_run),
        "--bundles", str(tmp_path / "bundles"), "--variants", "int8", "-q",
    ])  # fmt: skip
    retrain_s = time.perf_counter() - t
    total_s = time.perf_counter() - start
    assert code == 0  # the gate passed
    report = json.loads((new_run / "retrain-report.json").read_text())
    original = report["scores"]["original test split"]
    field = report["scores"]["field test"]
    print(
        f"original test {original['old']['accuracy']:.4f} -> {original['new']['accuracy']:.4f}; "
        f"field test {field['old']['accuracy']:.4f} -> {field['new']['accuracy']:.4f} "
        f"({field['old']['images']} images)"
    )
    print(
        f"samples in the inbox -> verified new bundle: {total_s:.1f} s (review {review_s:.1f} s, "
        f"merge {merge_s:.1f} s, retrain + convert + verify + report {retrain_s:.1f} s; "
        f"{report['seconds']})"
    )
    print(f"report: {new_run / 'retrain-report.md'}")
    assert original["old"]["images"] == 2500
    assert field["new"]["accuracy"] > field["old"]["accuracy"] + 0.02
    assert original["new"]["accuracy"] >= original["old"]["accuracy"] - 0.005
    assert report["gate"] == "passed"
    manifest = json.loads((tmp_path / "bundles" / "int8" / "model.json").read_text())
    assert manifest["verification"]["gate"] == "passed"
    md = (new_run / "retrain-report.md").read_text()
    assert "original test split" in md and "field test" in md and "passed" in md
    for png in ("retrain_accuracy.png", "retrain_recall.png"):
        assert (new_run / png).stat().st_size > 5000
