"""Starting a training run from a finished run's weights (``train --init-from RUN``, retrain).

Every layer is copied by name from the old run's ``model.keras``; the classifier (the
``predictions`` layer) is copied class by class, matched by *label*, because a merged dataset
may add a class and labels are sorted: "bird" added to [cat, dog] moves cat and dog to indices
1 and 2. A new class starts from the fresh initialisation, with the lowest old bias so that it
does not swamp the known classes in the first steps; a class the dataset no longer has is
dropped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from training import runfolder
from training.config import TrainConfig
from training.errors import RunError

log = logging.getLogger(__name__)

HEAD = "predictions"


def check_compatible(run_dir: Path, config: TrainConfig) -> None:
    """RunError before any work when ``run_dir`` cannot seed a model built from ``config``."""
    run = runfolder.read_run(run_dir)
    extra = run.record.extra
    mismatches = []
    if extra.get("backbone") not in (None, config.backbone):
        mismatches.append(f"backbone {extra.get('backbone')} vs {config.backbone}")
    if extra.get("alpha") not in (None, config.alpha):
        mismatches.append(f"alpha {extra.get('alpha')} vs {config.alpha}")
    if tuple(run.size) != tuple(config.size):
        mismatches.append(f"input {run.size[0]}x{run.size[1]} vs {config.size[0]}x{config.size[1]}")
    if mismatches:
        raise RunError(
            f"cannot start from {run_dir}: its model differs ({'; '.join(mismatches)})",
            "train with the same --backbone, --alpha and --input-size as that run, or drop "
            "--init-from",
        )


def load_run_weights(model: Any, run_dir: Path, labels: list[str]) -> dict[str, list[str]]:
    """Copy ``run_dir``'s weights into ``model`` (classes of ``labels``); returns the labels
    kept, added and dropped."""
    import keras

    run_dir = Path(run_dir)
    run = runfolder.read_run(run_dir)
    old = keras.models.load_model(run_dir / runfolder.MODEL, compile=False)
    for layer in model.layers:
        if layer.name == HEAD or not layer.weights:
            continue
        try:
            source = old.get_layer(layer.name)
        except ValueError:
            raise RunError(f"{run_dir}: the model has no layer {layer.name!r}") from None
        weights = source.get_weights()
        shapes = [w.shape for w in weights]
        if shapes != [tuple(w.shape) for w in layer.get_weights()]:
            raise RunError(
                f"{run_dir}: layer {layer.name!r} has other shapes than the new model's",
                "use the same backbone, alpha and input size as that run",
            )
        layer.set_weights(weights)
    old_w, old_b = old.get_layer(HEAD).get_weights()
    new_w, new_b = model.get_layer(HEAD).get_weights()
    if old_w.shape[0] != new_w.shape[0]:
        raise RunError(f"{run_dir}: the classifier's input size differs")
    old_labels = run.labels
    kept, added = [], []
    for j, label in enumerate(labels):
        if label in old_labels:
            i = old_labels.index(label)
            new_w[:, j], new_b[j] = old_w[:, i], old_b[i]
            kept.append(label)
        else:
            new_b[j] = float(np.min(old_b))
            added.append(label)
    model.get_layer(HEAD).set_weights([new_w, new_b])
    dropped = [label for label in old_labels if label not in labels]
    log.info(
        "started from %s: %d class(es) kept%s%s",
        run_dir,
        len(kept),
        f", new: {', '.join(added)}" if added else "",
        f", dropped: {', '.join(dropped)}" if dropped else "",
    )
    return {"kept": kept, "added": added, "dropped": dropped}
