"""Warm starts (``train --init-from``): weights copied by layer name, the classifier matched by
label when the merged dataset brings a new class."""

from __future__ import annotations

import re

import numpy as np
import pytest


def test_a_new_class_keeps_the_old_classes_outputs(tiny_digits_run) -> None:
    import keras

    from training import models, runfolder
    from training.config import build_config, read_config_file
    from training.warmstart import check_compatible, load_run_weights

    config = build_config(read_config_file(tiny_digits_run / "config.yaml"), {}, "test")
    check_compatible(tiny_digits_run, config)
    labels = ["bird", *(str(d) for d in range(10))]  # a new class first: every old index moves
    model = models.build_classifier(models.build_backbone(config), config, len(labels))
    summary = load_run_weights(model, tiny_digits_run, labels)
    assert summary == {"kept": [str(d) for d in range(10)], "added": ["bird"], "dropped": []}

    old = keras.models.load_model(tiny_digits_run / runfolder.MODEL, compile=False)
    x = np.random.default_rng(0).integers(0, 255, (8, 20, 20, 3), dtype=np.uint8)
    p_old = np.asarray(old.predict(x, verbose=0))
    p_new = np.asarray(model.predict(x, verbose=0))
    kept = p_new[:, 1:] / p_new[:, 1:].sum(axis=1, keepdims=True)  # "bird" is index 0
    np.testing.assert_allclose(kept, p_old, rtol=1e-4, atol=1e-6)


def test_a_run_of_another_shape_is_refused(tiny_digits_run) -> None:
    from training.config import build_config, read_config_file
    from training.errors import RunError
    from training.warmstart import check_compatible

    values = read_config_file(tiny_digits_run / "config.yaml")
    config = build_config(values, {"alpha": 0.5, "input_size": 24}, "test")
    with pytest.raises(RunError, match=re.escape("alpha 1.0 vs 0.5; input 20x20 vs 24x24")):
        check_compatible(tiny_digits_run, config)
