"""Export to LiteRT (``.tflite``) with builtin ops only, optionally quantized.

The runtime helpers (:class:`LiteRTRunner`, :func:`litert_ops`,
:func:`litert_tensor_types`) import neither TensorFlow nor the rest of tfafm,
so a serving process (or a benchmark worker) stays light.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from typing import Iterable, Mapping, NamedTuple

import numpy as np

QUANTIZATIONS = (None, "float16", "dynamic", "int8")
_FLEX_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
_SELECT_LIST = re.compile(r"TF Select ops: ([\w, ]+)")
_SAFE_MODULES = ("keras.", "keras_rs.", "tfafm.")


def litert(
    model,
    path: str,
    quantize: str | None = None,
    representative_data=None,
    fuse: bool = True,
    representative_steps: int = 100,
) -> str:
    """Converts ``model`` to a LiteRT flatbuffer at ``path`` (written atomically).

    The graph is traced from a ``tf.function`` with one named ``(None, 1)``
    input per feature (int32 ids, float32 dense values), its variables frozen
    to constants, and converted with ``target_spec.supported_ops =
    [TFLITE_BUILTINS]`` (plus ``TFLITE_BUILTINS_INT8`` for ``int8``): the
    file never needs the Flex/Select TF delegate nor custom ops. Inputs are
    named after the features; the single output is the probability (tensor
    name ``Identity``, shape ``(batch, 1)``).

    Args:
        model: a functional tfafm/Keras model.
        path: target ``.tflite`` file.
        quantize: ``None`` (float32); ``"float16"`` (weights stored as float16,
            dequantized at load); ``"dynamic"`` (``Optimize.DEFAULT``: weights
            int8, activations float, quantized on the fly); ``"int8"``
            (full-integer: int8 weights and activations calibrated on
            ``representative_data``; the interface stays float32 in / float32
            out, ids stay int32).
        representative_data: for ``"int8"``: a ``tf.data.Dataset`` of feature
            dicts or ``(features, labels)`` batches, or a dict of arrays (the
            compression calibration data is the natural choice).
        fuse: fold low-rank embedding projections into the following Dense
            first (:func:`tfafm.compression.fusion.fuse`); a no-op for models
            without :class:`~tfafm.LowRankEmbedding`.
        representative_steps: at most this many batches of
            ``representative_data`` are used for int8 calibration.

    Quantization threshold: the LiteRT weight quantizer leaves any constant
    with fewer than 1024 elements in float32 in ``"dynamic"`` mode (the MLIR
    pass option ``min_num_elements_for_weights``, default 1024, which TF 2.21
    does not expose through ``TFLiteConverter``). Small low-rank factors --
    e.g. a ``(8, 16)`` embedding projection or the ``(V, k)`` table of a
    field with ``V * k < 1024`` -- therefore stay float32 there; they are a
    negligible part of the file. Larger factors (embedding tables, the
    ``down``/``up`` kernels of wide layers) are int8. In ``"int8"`` mode
    every weight of a quantized op is int8 regardless of its size (biases
    int32); ``"float16"`` converts all float weights.

    Returns:
        ``path``.

    Raises:
        ValueError: for an unknown ``quantize``, missing representative data,
            or a model needing an op outside the LiteRT builtins (the message
            names the op and the Keras layer(s) it comes from).
    """
    import tensorflow as tf

    from tfafm.io_utils import atomic_path

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}.")
    if quantize == "int8" and representative_data is None:
        raise ValueError("quantize='int8' needs representative_data (e.g. the calibration data).")
    model = _maybe_fuse(model, fuse)
    frozen = _frozen_function(model)
    with _absl_warnings_muted():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    _configure(converter, quantize)
    if quantize == "int8":
        order = [t.name.split(":")[0] for t in frozen.inputs if t.dtype != tf.resource]
        converter.representative_dataset = _representative(representative_data, order, representative_steps)
    try:
        with warnings.catch_warnings(), _notes_silenced(), _absl_warnings_muted():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            flatbuffer = converter.convert()
    except Exception as error:  # ConverterError and friends
        raise _unsupported_error(error, model, frozen) from error
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(flatbuffer)
    return path


def _maybe_fuse(model, fuse: bool):
    if not fuse or not _has_low_rank_embedding(model):
        return model
    try:
        from tfafm.compression.fusion import fuse as fuse_model
    except ModuleNotFoundError as error:
        if error.name != "tfafm.compression.fusion":
            raise
        warnings.warn("tfafm.compression.fusion is not available; exporting the model unfused.", stacklevel=3)
        return model
    return fuse_model(model)


def _has_low_rank_embedding(model) -> bool:
    from tfafm.compression.graph import iter_layers
    from tfafm.layers.low_rank import LowRankEmbedding

    return any(isinstance(layer, LowRankEmbedding) for layer in iter_layers(model))


def _frozen_function(model):
    """The serving function traced and with variables folded into constants.

    Converting through a SavedModel (``from_saved_model`` or
    ``from_concrete_functions`` with a trackable object) keeps Keras 3
    variables as ``VAR_HANDLE``/``READ_VARIABLE`` ops in TF 2.21; freezing
    first yields plain constant weights (and lets ``FULLY_CONNECTED`` absorb
    the matmuls).
    """
    from tensorflow.python.framework import convert_to_constants

    from tfafm.export.signature import serving_function

    concrete = serving_function(model).get_concrete_function()
    return convert_to_constants.convert_variables_to_constants_v2(concrete)


def _configure(converter, quantize: str | None) -> None:
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if quantize is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32


def _representative(data, order: list[str], steps: int):
    """A generator function yielding input lists (in the converter's input order)."""
    import tensorflow as tf

    def batches():
        if isinstance(data, Mapping):
            rows = len(np.asarray(next(iter(data.values()))))
            for start in range(0, rows, 64):
                yield {k: np.asarray(v)[start:start + 64] for k, v in data.items()}
        elif isinstance(data, tf.data.Dataset):
            for element in data:
                yield element[0] if isinstance(element, (tuple, list)) else element
        else:
            raise TypeError(
                f"representative_data must be a tf.data.Dataset or a dict of arrays, got {type(data).__name__}."
            )

    def generate():
        for step, features in enumerate(batches()):
            if step >= steps:
                return
            missing = [name for name in order if name not in features]
            if missing:
                raise ValueError(f"representative_data lacks feature(s) {missing}.")
            yield [np.asarray(features[name]).reshape(-1, 1) for name in order]

    return generate


def _unsupported_error(error: Exception, model, frozen) -> Exception:
    """A ValueError naming the non-builtin ops and their Keras layers, or ``error`` itself."""
    message = str(error)
    ops = set(_FLEX_OP.findall(message))
    for listed in _SELECT_LIST.findall(message):
        ops.update(op.strip() for op in listed.split(",") if op.strip())
    if not ops:
        return error
    layers = _layers_using(ops, model, frozen)
    details = []
    for op in sorted(ops):
        where = ", ".join(repr(name) for name in layers.get(op, [])) or "unknown layer"
        details.append(f"'tf.{op}' (from layer {where})")
    text = (
        f"Model {model.name!r} needs TensorFlow op(s) outside the LiteRT builtins: {'; '.join(details)}. "
        "tfafm exports builtin ops only (no SELECT_TF_OPS / Flex delegate): do this preprocessing "
        "outside the model (e.g. hash strings to int32 ids beforehand)."
    )
    if not any(layers.values()):
        suspects = _non_builtin_layers(model)
        text += f" Layers of non-standard classes: {suspects or 'none'}."
    return ValueError(text)


def _graph_nodes(graph_def) -> Iterable:
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def _layers_using(ops: set[str], model, frozen) -> dict[str, list[str]]:
    """Maps each op type to the Keras layers whose name scope contains such an op."""
    from tfafm.compression.graph import iter_layers

    names = [layer.name for layer in iter_layers(model)]
    found: dict[str, list[str]] = {op: [] for op in ops}
    for node in _graph_nodes(frozen.graph.as_graph_def()):
        if node.op not in ops:
            continue
        layer = _layer_of(node.name, names)
        if layer and layer not in found[node.op]:
            found[node.op].append(layer)
    return found


def _layer_of(node_name: str, layer_names: list[str]) -> str | None:
    for part in reversed(node_name.split("/")[:-1]):
        for name in layer_names:
            if part == name or re.fullmatch(re.escape(name) + r"_\d+", part):
                return name
    return None


def _non_builtin_layers(model) -> list[str]:
    from tfafm.compression.graph import iter_layers

    return [
        f"{layer.name} ({type(layer).__name__})"
        for layer in iter_layers(model)
        if not type(layer).__module__.startswith(_SAFE_MODULES)
    ]


# ----------------------------------------------------------------------------- runtime


@contextlib.contextmanager
def _absl_warnings_muted():
    """Mutes the converter's Python deprecation notes about the frozen-function path it is given."""
    import logging

    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _notes_silenced():
    """tfafm's silencing of native notes, when tfafm is loaded (bench workers load this file alone)."""
    quiet = sys.modules.get("tfafm.quiet")
    return quiet.tensorflow_notes_silenced() if quiet else contextlib.nullcontext()


def _interpreter(path: str, num_threads: int = 1):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - TF's deprecated copy
        from tensorflow.lite.python.interpreter import Interpreter
    return Interpreter(model_path=path, num_threads=num_threads)


def litert_ops(path: str) -> set[str]:
    """Names of the operators used by a ``.tflite`` file, e.g. ``{"GATHER", "FULLY_CONNECTED"}``.

    Flex ops show up as ``"FlexXxx"`` and custom ops under their custom name.
    """
    return {detail["op_name"] for detail in _interpreter(path)._get_ops_details()}


def builtin_op_names() -> frozenset[str]:
    """Names of the LiteRT builtin operators (``CUSTOM`` and ``DELEGATE`` excluded)."""
    try:
        from ai_edge_litert.schema_py_generated import BuiltinOperator
    except ImportError:  # pragma: no cover
        from tensorflow.lite.python.schema_py_generated import BuiltinOperator
    names = {name for name in vars(BuiltinOperator) if name.isupper()}
    return frozenset(names - {"CUSTOM", "DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES"})


class TensorInfo(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]


def litert_tensor_types(path: str) -> list[TensorInfo]:
    """Every tensor of a ``.tflite`` file (weights included) with its dtype name and shape."""
    return [
        TensorInfo(d["name"], np.dtype(d["dtype"]).name, tuple(int(s) for s in d["shape"]))
        for d in _interpreter(path).get_tensor_details()
    ]


def _feature_name(tensor_name: str) -> str:
    name = tensor_name.split(":")[0]
    return name[len("serving_default_"):] if name.startswith("serving_default_") else name


class LiteRTRunner:
    """Runs a ``.tflite`` exported by :func:`litert` on feature-dict batches.

    ``runner(features)`` maps feature names to input tensors by name, resizes
    the inputs to the batch size when it changes, and returns the probabilities
    as a float32 array of shape ``(batch, 1)``.
    """

    def __init__(self, path: str, num_threads: int = 1):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No LiteRT file at {path}.")
        self.path = path
        self.interpreter = _interpreter(path, num_threads=num_threads)
        self.inputs = {_feature_name(d["name"]): d for d in self.interpreter.get_input_details()}
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self._batch = None

    @property
    def feature_names(self) -> list[str]:
        return list(self.inputs)

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            for detail in self.inputs.values():
                self.interpreter.resize_tensor_input(detail["index"], [batch, 1])
            with _notes_silenced():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
                self.interpreter.allocate_tensors()
            self._batch = batch

    def set_inputs(self, features: Mapping) -> None:
        """Copies a feature batch into the interpreter's input tensors (resizing if needed)."""
        missing = [name for name in self.inputs if name not in features]
        if missing:
            raise ValueError(f"Features missing from the batch: {missing}.")
        batch = len(features[next(iter(self.inputs))])
        self._resize(batch)
        for name, detail in self.inputs.items():
            value = np.asarray(features[name]).reshape(batch, 1).astype(detail["dtype"], copy=False)
            self.interpreter.set_tensor(detail["index"], value)

    def invoke(self) -> np.ndarray:
        """Runs the model on the inputs set last; returns the probabilities ``(batch, 1)``."""
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)

    def __call__(self, features: Mapping) -> np.ndarray:
        self.set_inputs(features)
        return self.invoke()

    predict = __call__
