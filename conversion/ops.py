"""Reading a .tflite's ops and tensors, and checking them against Coral's Edge TPU op list.

Ops are read with the interpreter (``_get_ops_details``) without default delegates, so XNNPACK
does not fold them into one ``DELEGATE`` node.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conversion.errors import ConversionError
from device.inference import TensorInfo, find_runtime

log = logging.getLogger(__name__)

CORAL_OPS_URL = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"
# Coral's published list of operations the Edge TPU supports (models-intro, "Supported
# operations"), as TFLite builtin op names. Each also has to be int8/uint8-quantized, with
# static shapes, and within the limitations listed there, to be mapped.
EDGETPU_SUPPORTED_OPS = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS",
        "FULLY_CONNECTED",
        "L2_NORMALIZATION",
        "LOGISTIC",
        "LSTM",
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PACK",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    }
)
BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class OpInfo:
    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass
class ModelInfo:
    """What a .tflite contains: its I/O tensors, ops and tensor dtypes."""

    input: TensorInfo
    output: TensorInfo
    ops: list[OpInfo]
    dtypes: dict[int, np.dtype] = field(default_factory=dict)

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(op.name for op in self.ops).items()))

    def float_ops(self) -> list[str]:
        """Ops (other than quantize/dequantize) that read or write a float tensor."""
        out = []
        for op in self.ops:
            if op.name in BOUNDARY_OPS:
                continue
            tensors = [t for t in op.inputs + op.outputs if t >= 0]
            if any(self.dtypes.get(t) in FLOAT_DTYPES for t in tensors):
                out.append(op.name)
        return out


def _tensor_json(t: TensorInfo) -> dict[str, Any]:
    return {
        "shape": list(t.shape),
        "dtype": t.dtype.name,
        "scale": t.scale,
        "zero_point": t.zero_point,
    }


def quantization_json(info: ModelInfo) -> dict[str, Any]:
    """The ``quantization`` block of model.json: the real I/O tensor parameters."""
    return {"input": _tensor_json(info.input), "output": _tensor_json(info.output)}


def read_model_info(model: bytes) -> ModelInfo:
    """Inspect a (CPU) .tflite with the device's TFLite runtime."""
    runtime = find_runtime()
    kwargs: dict[str, Any] = {"model_content": model}
    resolver = runtime.no_default_delegates()
    if resolver is not None:
        kwargs["experimental_op_resolver_type"] = resolver
    try:
        interpreter = runtime.interpreter_class(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ConversionError(f"the converted model cannot be loaded: {exc}") from None
    ops = [
        OpInfo(
            index=int(d["index"]),
            name=str(d["op_name"]),
            inputs=tuple(int(i) for i in d["inputs"]),
            outputs=tuple(int(i) for i in d["outputs"]),
        )
        for d in interpreter._get_ops_details()
    ]
    dtypes = {int(d["index"]): np.dtype(d["dtype"]) for d in interpreter.get_tensor_details()}
    return ModelInfo(
        input=TensorInfo.from_details(interpreter.get_input_details()[0]),
        output=TensorInfo.from_details(interpreter.get_output_details()[0]),
        ops=ops,
        dtypes=dtypes,
    )


@dataclass
class EdgeTPUOpCheck:
    """The offline check of an int8 model against Coral's op list."""

    op_counts: dict[str, int]
    unsupported: dict[str, int]  # op name -> count, not in Coral's list
    float_ops: list[str]  # ops on float tensors: they stay on the CPU
    io_ok: bool  # uint8/int8 input and output, batch 1

    @property
    def maps_fully(self) -> bool:
        return not self.unsupported and not self.float_ops and self.io_ok

    def as_json(self) -> dict[str, Any]:
        return {
            "op_counts": self.op_counts,
            "unsupported_ops": self.unsupported,
            "float_ops": self.float_ops,
            "io_quantized_batch1": self.io_ok,
            "maps_fully": self.maps_fully,
            "reference": CORAL_OPS_URL,
        }

    def summary(self) -> str:
        if self.maps_fully:
            return (
                f"Edge TPU op check: all {sum(self.op_counts.values())} ops are in Coral's "
                "supported list"
            )
        parts = []
        if self.unsupported:
            listed = ", ".join(f"{k} x{v}" for k, v in self.unsupported.items())
            parts.append(f"not supported by the Edge TPU: {listed}")
        if self.float_ops:
            parts.append(f"float ops (run on the CPU): {', '.join(sorted(set(self.float_ops)))}")
        if not self.io_ok:
            parts.append("input/output are not 8-bit with batch 1")
        return (
            "Edge TPU op check: "
            + "; ".join(parts)
            + " — the compiler maps ops up to the first of these to the Edge TPU and runs "
            "the rest on the CPU"
        )


def check_edgetpu_ops(info: ModelInfo) -> EdgeTPUOpCheck:
    counts = info.op_counts()
    unsupported = {k: v for k, v in counts.items() if k not in EDGETPU_SUPPORTED_OPS}
    io_ok = all(
        t.dtype in (np.uint8, np.int8) and t.shape and t.shape[0] == 1
        for t in (info.input, info.output)
    )
    return EdgeTPUOpCheck(counts, unsupported, info.float_ops(), io_ok)
