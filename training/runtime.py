"""Hardware-dependent setup: GPUs, mixed precision, distribution strategy, seeds."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from training.tfenv import import_tf

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    gpus: int
    mixed_precision: bool
    strategy: Any  # tf.distribute.Strategy

    def describe(self) -> str:
        if not self.gpus:
            return "CPU"
        mp = ", mixed precision" if self.mixed_precision else ""
        return f"{self.gpus} GPU(s), {type(self.strategy).__name__}{mp}"


def setup_runtime(mixed_precision: str = "auto", seed: int = 1234, deterministic: bool = False):
    """Seed everything and pick the GPU features when GPUs are present."""
    tf = import_tf()
    import keras

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    use_mp = mixed_precision == "on" or (mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mp else "float32")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    runtime = Runtime(len(gpus), use_mp, strategy)
    log.info("training on %s", runtime.describe())
    return runtime
