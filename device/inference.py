"""One inference backend over the TFLite interpreter.

The interpreter is found in this order: ``ai_edge_litert`` (LiteRT, the maintained runtime),
``tflite_runtime`` (legacy; Python <= 3.11 and numpy < 2 only), ``tensorflow.lite`` (workstation).
Set ``EDGECAM_TFLITE_RUNTIME`` to one of those names to force one.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import EdgeTPUError, ModelError, RuntimeMissingError
from device.model import ModelBundle

log = logging.getLogger(__name__)

RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")
_RUNTIME_MODULES = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}
CORAL_INSTALL = (
    "install the Edge TPU runtime from Coral's apt repository: "
    "echo 'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main' | "
    "sudo tee /etc/apt/sources.list.d/coral-edgetpu.list && "
    "curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - && "
    "sudo apt-get update && sudo apt-get install libedgetpu1-std"
)


def edgetpu_library() -> str:
    """The Edge TPU runtime library name for this OS (override: EDGECAM_EDGETPU_LIB)."""
    override = os.environ.get("EDGECAM_EDGETPU_LIB")
    if override:
        return override
    return {"Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}.get(
        platform.system(), "libedgetpu.so.1"
    )


@dataclass(frozen=True)
class Runtime:
    name: str
    module: Any

    @property
    def interpreter_class(self) -> Any:
        return self.module.Interpreter

    def load_delegate(self, library: str, options: dict[str, str]) -> Any:
        if self.name == "tensorflow":
            return self.module.experimental.load_delegate(library, options)
        return self.module.load_delegate(library, options)

    def no_default_delegates(self) -> Any:
        """The op resolver type that disables XNNPACK, or None when unsupported."""
        owner = self.module.experimental if self.name == "tensorflow" else self.module
        resolver = getattr(owner, "OpResolverType", None)
        return getattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)


def find_runtime(prefer: str | None = None) -> Runtime:
    """Import the first available TFLite runtime (or ``prefer``)."""
    prefer = prefer or os.environ.get("EDGECAM_TFLITE_RUNTIME") or None
    if prefer and prefer not in RUNTIMES:
        raise RuntimeMissingError(f"unknown TFLite runtime {prefer!r}", f"use one of {RUNTIMES}")
    order = (prefer,) if prefer else RUNTIMES
    errors = []
    for name in order:
        try:
            module = importlib.import_module(_RUNTIME_MODULES[name])
        except ImportError as exc:  # includes numpy ABI mismatches of tflite_runtime
            errors.append(f"{name}: {exc}")
            continue
        return Runtime(name, module)
    raise RuntimeMissingError(
        "no TFLite runtime found (" + "; ".join(errors) + ")",
        "pip install 'ai-edge-litert' (or: pip install -e '.[device]')",
    )


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    @classmethod
    def from_details(cls, d: dict[str, Any]) -> TensorInfo:
        scale, zero_point = d.get("quantization", (0.0, 0))
        return cls(
            index=int(d["index"]),
            name=str(d.get("name", "")),
            shape=tuple(int(s) for s in d["shape"]),
            dtype=np.dtype(d["dtype"]),
            scale=float(scale),
            zero_point=int(zero_point),
        )


def _cpu_model_hint(path: Path) -> str:
    cpu = path.with_name(path.name.replace("_edgetpu", ""))
    suggestion = f" (e.g. {cpu})" if cpu != path and cpu.exists() else ""
    return (
        "run it with --edgetpu (inference.edgetpu: true) on a machine with a Coral Edge TPU "
        f"and libedgetpu installed, or use the CPU version of the model{suggestion}"
    )


class InferenceBackend:
    """A TFLite interpreter for one model: set the input, invoke, read the output.

    Not thread-safe: one backend per camera thread.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        model_bytes: bytes | None = None,
        *,
        threads: int | None = None,
        xnnpack: bool = True,
        edgetpu: bool = False,
        edgetpu_device: str = "usb",
        runtime: str | None = None,
    ):
        self.bundle = bundle
        self.runtime = find_runtime(runtime)
        self.edgetpu = edgetpu
        if bundle.is_edgetpu and not edgetpu:
            raise EdgeTPUError(
                f"{bundle.path} is compiled for the Edge TPU (edgetpu-custom-op) "
                "and cannot run on the CPU",
                _cpu_model_hint(bundle.path),
            )
        delegates = [self._edgetpu_delegate(edgetpu_device)] if edgetpu else None
        if edgetpu and not bundle.is_edgetpu:
            log.warning(
                "%s is not compiled for the Edge TPU: it runs on the CPU although the "
                "delegate is loaded (compile it with `make convert`)",
                bundle.path.name,
            )
        kwargs: dict[str, Any] = {
            "model_content": model_bytes if model_bytes is not None else bundle.path.read_bytes(),
            "num_threads": threads,
        }
        if delegates:
            kwargs["experimental_delegates"] = delegates
        if not xnnpack:
            resolver = self.runtime.no_default_delegates()
            if resolver is not None:
                kwargs["experimental_op_resolver_type"] = resolver
            else:
                log.warning("runtime %s cannot disable XNNPACK; ignoring", self.runtime.name)
        try:
            self.interpreter = self.runtime.interpreter_class(**kwargs)
        except ValueError as exc:
            raise ModelError(f"{bundle.path} cannot be loaded as a TFLite model: {exc}") from None
        self._prepare_input()
        try:
            self.interpreter.allocate_tensors()
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise ModelError(
                f"{bundle.path} cannot run on {self.runtime.name}: {first}",
                "the model uses an operation this runtime lacks: convert it with "
                "`make convert` (builtin ops only) or upgrade ai-edge-litert",
            ) from None
        self.input = TensorInfo.from_details(self.interpreter.get_input_details()[0])
        self.outputs = [TensorInfo.from_details(d) for d in self.interpreter.get_output_details()]
        self.output = self.outputs[0]  # a classifier's scores
        self.num_classes = int(np.prod(self.output.shape[1:])) if self.output.shape else 0
        self._check_labels()
        if bundle.variant == "unknown":  # a bare .tflite: name it from its tensors
            bundle.variant = "int8" if self.input.dtype in (np.uint8, np.int8) else "float32"
        self.backend_name = self.runtime.name + ("+edgetpu" if edgetpu else "")

    # -- setup -------------------------------------------------------------------------------
    def _edgetpu_delegate(self, device: str) -> Any:
        library = edgetpu_library()
        # Probe with ctypes first: the runtime's own load_delegate prints a traceback from its
        # destructor when the library is missing.
        try:
            lib = ctypes.CDLL(library)
        except OSError:
            raise EdgeTPUError(
                f"Edge TPU runtime library {library} not found", CORAL_INSTALL
            ) from None
        if not hasattr(lib, "tflite_plugin_create_delegate"):
            raise EdgeTPUError(
                f"{library} is not a TFLite delegate library (no tflite_plugin_create_delegate)",
                "unset EDGECAM_EDGETPU_LIB or point it at libedgetpu.so.1; " + CORAL_INSTALL,
            )
        options = {"device": device} if device else {}
        try:
            return self.runtime.load_delegate(library, options)
        except (ValueError, RuntimeError, OSError) as exc:
            raise EdgeTPUError(
                f"no Edge TPU found at device {device!r} ({exc})",
                "plug in the Coral accelerator (USB 3 port) or set inference.edgetpu_device "
                "(usb, usb:0, pci:0); `lsusb` shows it as 'Global Unichip' or 'Google'",
            ) from None

    def _prepare_input(self) -> None:
        details = self.interpreter.get_input_details()
        if len(details) != 1:
            raise ModelError(
                f"{self.bundle.path} has {len(details)} inputs; edgecam runs image classifiers "
                "with one image input"
            )
        shape = [int(s) for s in details[0]["shape"]]
        signature = [int(s) for s in details[0].get("shape_signature", shape)]
        if len(shape) != 4 or shape[-1] != 3:
            raise ModelError(
                f"{self.bundle.path} input shape {shape} is not an image batch [1, H, W, 3]"
            )
        if signature[0] != 1 or shape[0] != 1:  # dynamic or larger batch: run batch 1
            self.interpreter.resize_tensor_input(details[0]["index"], [1, *shape[1:]])

    def _check_labels(self) -> None:
        labels = self.bundle.labels
        if labels and (len(labels) != self.num_classes or max(labels) >= self.num_classes):
            source = self.bundle.labels_path or "the labels"
            raise ModelError(
                f"labels file {source} has {len(labels)} labels but the model outputs "
                f"{self.num_classes} classes",
                "use the labels file that was made with this model",
            )

    # -- running -----------------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.input.shape[1], self.input.shape[2]

    def set_input(self, tensor: np.ndarray) -> None:
        self.interpreter.set_tensor(self.input.index, tensor)

    def invoke(self) -> float:
        """Run the network on the current input; return the time it took in ms."""
        start = time.perf_counter()
        self.interpreter.invoke()
        return (time.perf_counter() - start) * 1000.0

    def get_output(self) -> np.ndarray:
        """The raw output scores as a 1-D array (a copy)."""
        return self.interpreter.get_tensor(self.output.index).reshape(-1)

    def get_outputs(self) -> list[np.ndarray]:
        """Every output tensor (copies), in the model's order (e.g. a detector's boxes and
        scores)."""
        return [self.interpreter.get_tensor(t.index) for t in self.outputs]

    def run(self, tensor: np.ndarray) -> tuple[np.ndarray, float]:
        self.set_input(tensor)
        ms = self.invoke()
        return self.get_output(), ms
