"""Which model a device starts on: ``models/current`` from an update, else ``model.path``.

With model updates set up (``rollout.public_key``), a device that was updated over MQTT starts
on ``<state_dir>/models/current`` after a restart; ``model.path`` (and ``model.labels``,
``mean``, ``std``, ``resize``, ``crop``) then do not apply: a bundle carries its own labels and
input spec. When that bundle cannot be loaded the device tries ``previous`` and then
``model.path`` (logged as errors), so a damaged state folder never keeps a camera dark.
Delete the ``current`` link to go back to ``model.path``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from device.errors import EdgecamError
from device.rollout.store import ModelStore

if TYPE_CHECKING:
    from device.classifier import Classifier
    from device.config import DeviceConfig, ModelConfig

log = logging.getLogger(__name__)


def model_choices(config: DeviceConfig) -> list[tuple[ModelConfig, str]]:
    """The models to try at start, best first, each with what it is (for the log)."""
    choices: list[tuple[ModelConfig, str]] = []
    if config.rollout.enabled:
        store = ModelStore(config.rollout.state_dir)
        for name, folder in (("current", store.current()), ("previous", store.previous())):
            if folder is not None:
                choices.append((bundle_model(config.model, folder), f"models/{name} ({folder})"))
    choices.append((config.model, f"model.path ({config.model.path})"))
    return choices


def bundle_model(base: ModelConfig, folder: Path) -> ModelConfig:
    """``base`` pointed at a store bundle, which carries its own labels and input spec."""
    return base.model_copy(
        update={
            "path": str(folder),
            "labels": None,
            "mean": None,
            "std": None,
            "resize": None,
            "crop": None,
        }
    )


def load_live_model(
    config: DeviceConfig, build: Callable[[ModelConfig], list[Classifier]]
) -> tuple[ModelConfig, list[Classifier]]:
    """The first of ``model_choices`` that ``build`` loads: its config and classifiers."""
    choices = model_choices(config)
    for i, (model, what) in enumerate(choices):
        try:
            classifiers = build(model)
        except EdgecamError as exc:
            if i == len(choices) - 1:
                raise
            log.error(
                "model: %s cannot be loaded (%s); trying %s", what, exc.message, choices[i + 1][1]
            )
            continue
        if i > 0 or len(choices) > 1:
            log.info("model: %s", what)
        return model, classifiers
    raise AssertionError("unreachable: model.path is always a choice")
