"""Loading the trained network (TensorFlow) as one function with a fixed batch-1 input.

A SavedModel is loaded with ``tf.saved_model.load`` and its serving signature is wrapped in a
``tf.function`` whose input is ``[1, H, W, 3]`` of the network's own input dtype: every TFLite
variant gets a static batch of 1, which the Edge TPU compiler requires. A Keras file is first
exported to a SavedModel (``model.export``), so there is one conversion path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conversion.errors import ConversionError
from training.tfenv import import_tf

log = logging.getLogger(__name__)


@dataclass
class Network:
    """A batch-1 concrete function over the trained network."""

    function: Any  # tf ConcreteFunction: [1, H, W, 3] -> [1, C]
    trackable: Any  # keeps the SavedModel's variables alive
    height: int
    width: int
    dtype: np.dtype  # the function's input dtype: float32 (integer-input models are cast inside)
    num_classes: int


def _float_input(model: Any) -> Any:
    """The same model with a float32 input when it takes integer pixels (else ``model``).

    Our training exports ``uint8`` input followed by a Rescaling layer. Fed as is, TFLite gets a
    float ``CAST`` after the input, which stays in the int8 model (and on the Edge TPU's CPU
    side). The same raw pixel values as float32 need no cast: the clone shares the weights.
    """
    import keras

    if len(model.inputs) != 1 or "int" not in str(model.inputs[0].dtype):
        return model
    shape = tuple(model.inputs[0].shape[1:])
    try:
        clone = keras.models.clone_model(
            model, input_tensors=keras.Input(shape, dtype="float32", name="image")
        )
        clone.set_weights(model.get_weights())
    except (ValueError, TypeError) as exc:
        log.warning("cannot re-wire the %s input as float32 (%s)", model.inputs[0].dtype, exc)
        return model
    log.info(
        "taking the %s pixel input as float32 (same values, no Cast op)", model.inputs[0].dtype
    )
    return clone


def _export_keras(path: Path, workdir: Path) -> Path:
    import_tf()
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"cannot load Keras model {path}: {first}",
            "a model with custom layers needs them importable; or pass its SavedModel folder",
        ) from None
    target = workdir / "saved_model"
    _float_input(model).export(str(target), verbose=False)
    return target


def _single(mapping: dict[str, Any], what: str, path: Path) -> tuple[str, Any]:
    if len(mapping) != 1:
        raise ConversionError(
            f"{path} has {len(mapping)} {what}s ({', '.join(sorted(mapping))})",
            "edgecam converts image classifiers with one image input and one score output",
        )
    return next(iter(mapping.items()))


def load_network(
    path: Path,
    workdir: Path,
    height: int | None = None,
    width: int | None = None,
    fallback: Path | None = None,
) -> Network:
    """Load a Keras file or SavedModel folder (``fallback`` when the Keras file cannot load).

    ``height``/``width`` fill input sizes the model leaves open.
    """
    tf = import_tf()
    saved = path
    if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
        try:
            saved = _export_keras(path, workdir)
        except ConversionError as exc:
            if fallback is None:
                raise
            log.warning("%s; converting %s instead", exc.message, fallback)
            saved = fallback
    try:
        loaded = tf.saved_model.load(str(saved))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot load SavedModel {saved}: {exc}") from None
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if not signatures:
        raise ConversionError(
            f"{saved} has no serving signature",
            "export the model with model.export(path) (Keras 3) or tf.saved_model.save",
        )
    signature = signatures.get("serving_default") or next(iter(signatures.values()))
    _, kwargs = signature.structured_input_signature
    in_name, in_spec = _single(dict(kwargs), "input", saved)
    _, out_spec = _single(dict(signature.structured_outputs), "output", saved)

    shape = list(in_spec.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ConversionError(
            f"{saved} input shape {shape} is not an image batch [N, H, W, 3]",
            "edgecam converts image classifiers taking RGB images",
        )
    h = shape[1] if shape[1] is not None else height
    w = shape[2] if shape[2] is not None else width
    if h is None or w is None:
        raise ConversionError(
            f"{saved} does not fix its input size ({shape})", "pass --input-size HEIGHT WIDTH"
        )
    if (height and height != h) or (width and width != w):
        log.warning("input size %dx%d of the model overrides the given %sx%s", h, w, height, width)
    out_shape = list(out_spec.shape)
    if len(out_shape) != 2 or out_shape[1] is None:
        raise ConversionError(
            f"{saved} output shape {out_shape} is not [N, classes]",
            "edgecam converts classifiers whose output is one score per class",
        )
    dtype = in_spec.dtype
    if dtype.is_integer:
        # Integer pixels in a SavedModel: feed float32 and cast inside. The Cast stays a float
        # op in int8 (convert the Keras file instead to avoid it; the op check reports it).
        log.warning("%s takes %s input: int8 will keep a float Cast op", saved, dtype.name)

    @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32, name="image")])
    def serve(image: Any) -> Any:
        x = tf.cast(image, dtype) if dtype != tf.float32 else image
        outputs = signature(**{in_name: x})
        return next(iter(outputs.values()))

    return Network(
        function=serve.get_concrete_function(),
        trackable=loaded,
        height=int(h),
        width=int(w),
        dtype=np.dtype(np.float32),
        num_classes=int(out_shape[1]),
    )
