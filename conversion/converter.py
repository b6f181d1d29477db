"""TFLite conversion of a batch-1 network into the CPU variants.

* ``float32``: plain conversion, the verification reference.
* ``float16``: float16 weights (``target_spec.supported_types = [tf.float16]``).
* ``dynamic``: dynamic-range quantization (int8 weights, float activations).
* ``int8``: full-integer post-training quantization from a representative dataset: uint8 input
  and output, only ``TFLITE_BUILTINS_INT8`` ops, batch 1 — the Edge TPU compiler's input.

Only TFLite builtin ops are allowed (no TF Select / Flex ops: the device runtime has none).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

import numpy as np

from conversion.errors import ConversionError
from conversion.network import Network
from device.manifest import VARIANTS
from training.tfenv import import_tf

log = logging.getLogger(__name__)

CPU_VARIANTS = tuple(v for v in VARIANTS if v != "edgetpu")
Representative = Callable[[], Iterable[list[np.ndarray]]]

_UNSUPPORTED_OP = re.compile(r"'(tf\.[A-Za-z0-9_]+)' op is neither a custom op nor a flex op")
_ERROR_LINE = re.compile(r"error: (.*)")


def _explain(exc: Exception) -> str:
    """The useful part of a converter error: the unsupported ops, or its first error line."""
    text = str(exc)
    ops = sorted(set(_UNSUPPORTED_OP.findall(text)))
    if ops:
        return "the model uses op(s) TFLite builtins cannot run: " + ", ".join(ops)
    errors = [m.group(1).strip() for m in _ERROR_LINE.finditer(text)]
    if errors:
        return errors[0]
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:300]


def convert(network: Network, variant: str, representative: Representative | None = None) -> bytes:
    """Convert ``network`` to the TFLite ``variant``; a ConversionError names what failed."""
    if variant not in CPU_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}")
    tf = import_tf()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [network.function], network.trackable
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if representative is None:
            raise ConversionError("int8 needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    log.info("converting to %s", variant)
    try:
        return bytes(converter.convert())
    except ConversionError:
        raise
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
        hint = (
            "replace the layer that uses it with builtin TFLite ops "
            "(https://ai.google.dev/edge/litert/models/ops_compatibility)"
        )
        if variant == "int8":
            hint = "an op without an int8 kernel blocks full-integer quantization; " + hint
        raise ConversionError(f"{variant} conversion failed: {_explain(exc)}", hint) from None
