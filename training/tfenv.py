"""Importing TensorFlow quietly; call :func:`import_tf` instead of ``import tensorflow``."""

from __future__ import annotations

import logging
import os
from types import ModuleType

log = logging.getLogger(__name__)


def import_tf() -> ModuleType:
    """Import TensorFlow with its C++ info/warning chatter off (unless the user set it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    return tf
