"""Export to LiteRT (``.tflite``) with builtin ops only, optionally quantized.

The files carry a ``serving_default`` signature and tfafm's interface
metadata (:mod:`tfafm.export.litert_file`, which also holds the light runtime
helpers).
"""

from __future__ import annotations

import re
import warnings
from typing import Iterable, Mapping

import numpy as np

from tfafm.errors import UnsupportedLayerError, UserError
from tfafm.export.litert_file import write_with_signature
from tfafm.logs import dropping

FLATBUFFER_LIMIT = 2 * 1024**3  # bytes; LiteRT files are flatbuffers, addressed with 32-bit offsets
_BYTES_PER_WEIGHT = {None: 4, "float16": 2, "dynamic": 1, "int8": 1}
QUANTIZATIONS = (None, "float16", "dynamic", "int8")
_FLEX_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
_SELECT_LIST = re.compile(r"TF Select ops: ([\w, ]+)")
_SAFE_MODULES = ("keras.", "keras_rs.", "tfafm.")


def litert(
    model,
    path: str,
    quantization: str | None = None,
    representative_data=None,
    fuse: bool = True,
    representative_steps: int = 100,
    schema=None,
    verification_data=None,
    *,
    fusion_notes: list[str] | None = None,
    quantize: str | None = None,
) -> str:
    """Converts ``model`` to a LiteRT flatbuffer at ``path`` (written atomically).

    The graph is traced from a ``tf.function`` with one named input per model
    input (dynamic batch), its variables frozen to constants, and converted
    with ``target_spec.supported_ops = [TFLITE_BUILTINS]`` (plus
    ``TFLITE_BUILTINS_INT8`` for ``int8``): the file never needs the
    Flex/Select TF delegate nor custom ops. The file has a
    ``serving_default`` signature (inputs named after the model's inputs,
    outputs ``prediction`` or the model's output names) and carries its
    interface as metadata (:mod:`tfafm.export.litert_file`).

    Args:
        model: a Sequential or functional Keras model.
        path: target ``.tflite`` file.
        quantization: ``None`` (float32); ``"float16"`` (weights stored as float16,
            dequantized at load); ``"dynamic"`` (``Optimize.DEFAULT``: weights
            int8, activations float, quantized on the fly); ``"int8"``
            (full-integer: int8 weights and activations calibrated on
            ``representative_data``; the interface stays float32 in / float32
            out, ids stay int32).
        representative_data: for ``"int8"``: a ``tf.data.Dataset`` of feature
            dicts or ``(features, labels)`` batches, or a dict of arrays (the
            compression calibration data is the natural choice).
        fuse: fold low-rank embedding projections into the following Dense
            first (:func:`tfafm.fuse`); a no-op for models without
            :class:`~tfafm.LowRankEmbedding`.
        representative_steps: at most this many blocks of 64 rows of
            ``representative_data`` are used for int8 calibration (batches of
            any size are re-cut into such blocks).
        schema: the :class:`~tfafm.Schema` of the model's features, recorded in
            the metadata (vocabulary sizes are otherwise read off the model).
        verification_data: rows the written file is checked on before it is
            swapped in (anything :func:`tfafm.calibrate` takes; default: the
            rows of ``representative_data`` where given, else rows generated
            inside each input's valid range); see
            :mod:`tfafm.export.verify`. The file is always checked against
            ``model`` as given, never against its fused form.
        fusion_notes: a list that receives what fusion did (the
            :class:`~tfafm.compression.fusion.FusionReport` notes), e.g. to show them.
        quantize: the former name of ``quantization`` (tfafm 0.1); still
            accepted, with a ``FutureWarning``.

    Before conversion the model takes its servable form
    (:func:`tfafm.export.portable.servable`): recurrent layers unrolled over
    their fixed sequence length, mixed-precision layers computing in float32.
    The written file is loaded with LiteRT's interpreter, run through its
    signature and compared with ``model`` (:func:`tfafm.export.verify.verify_export`)
    before it replaces anything at ``path``.

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

    Dynamic-range int8 quantizes each row of a layer's input with one scale. If
    the file disagrees with ``model`` and a Dense over a concatenation of blocks
    of very different magnitudes is why (simulated on the verification rows,
    :mod:`tfafm.export.hybrid`), it is converted once more with that Dense
    computed block by block, and that file is verified instead.

    Example:

    >>> import os, tempfile, numpy as np, keras, tfafm
    >>> inputs = keras.Input((4,), name="x")
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    >>> path = tfafm.export.litert(model, os.path.join(tempfile.mkdtemp(), "m.tflite"))
    >>> runner = tfafm.export.LiteRTRunner(path)
    >>> x = np.ones((2, 4), "float32")
    >>> bool(np.allclose(runner({"x": x}), model(x), atol=1e-6))
    True

    Returns:
        ``path``.

    Raises:
        tfafm.errors.UserError: for an unknown ``quantization``, missing
            representative data, a model whose weights cannot fit a 2 GB
            flatbuffer, a model needing an op outside the LiteRT builtins
            (the message names the op and the Keras layer(s) it comes from),
            or a written file that does not load or agree with ``model``.
    """
    from tfafm.graph import require_graph_model
    from tfafm.export.hybrid import split_coarse_inputs
    from tfafm.export.portable import servable
    from tfafm.export.signature import interface
    from tfafm.export.verify import Disagreement, verification_rows, verify_export
    from tfafm.io_utils import atomic_path

    if quantize is not None:
        if quantization is not None:
            raise UserError("give quantization= only (quantize= is its former name).")
        warnings.warn("tfafm.export.litert(quantize=...) is now quantization=...", FutureWarning, stacklevel=2)
        quantization = quantize
    if quantization not in QUANTIZATIONS:
        raise UserError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}.")
    if quantization == "int8" and representative_data is None:
        raise UserError("quantization='int8' needs representative_data (e.g. the calibration data).")
    require_graph_model(model)
    keras_model = model
    # Real rows where the caller gave any: the representative rows stand in for verification rows not given.
    real = verification_data if verification_data is not None else representative_data
    rows = verification_rows(keras_model, real)
    model, _ = servable(model, "litert")
    model = _maybe_fuse(model, fuse, fusion_notes, rows, quantization)
    _check_size(model, quantization)
    description = interface(model, schema)
    with atomic_path(path) as tmp:
        _write(model, tmp, quantization, description, representative_data, representative_steps)
        try:
            verify_export(tmp, "litert", keras_model, rows, quantization)
        except Disagreement:
            split = split_coarse_inputs(model, rows)[0] if quantization == "dynamic" else model
            if split is model:
                raise
            _write(split, tmp, quantization, description, representative_data, representative_steps)
            verify_export(tmp, "litert", keras_model, rows, quantization)
    return path


def _write(model, tmp: str, quantization: str | None, description, representative_data,
           representative_steps: int) -> None:
    """Converts ``model`` and writes the file, with its signature and metadata, at ``tmp``; the big
    tables written outside the converter are read back (:meth:`_TablePatch.check`)."""
    import tensorflow as tf

    tables = _TablePatch(model) if quantization != "int8" else None
    if tables is not None and tables.layers:
        model = tables.light_model()
    frozen = _frozen_function(model)
    # The frozen function is converted without a trackable object on purpose (see _frozen_function).
    with dropping("absl", "trackable_obj argument"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    _configure(converter, quantization)
    if quantization == "int8":
        order = [t.name.split(":")[0] for t in frozen.inputs if t.dtype != tf.resource]
        shapes = {spec.name: spec.shape for spec in description.inputs}
        converter.representative_dataset = _representative(representative_data, order, shapes,
                                                            representative_steps)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            flatbuffer = converter.convert()
    except Exception as error:  # ConverterError and friends
        raise _unsupported_error(error, model, frozen) from error
    edit = tables.patcher(quantization) if tables is not None and tables.layers else None
    write_with_signature(flatbuffer, description.to_dict(), tmp, edit=edit)
    if edit is not None:
        tables.check(tmp, quantization)


class _TablePatch:
    """Converts big embedding tables outside the converter.

    TensorFlow's converter holds several copies of every weight (freezing
    alone takes about 7x the weight bytes): for a model with tables of tens of
    millions of rows that means tens of GB. So each :class:`InRangeEmbedding`
    or :class:`MergedEmbedding` table of at least ``MIN_ELEMENTS`` is
    replaced, for conversion only, by a placeholder with a unique row count
    (``1031 + i``: enough elements to be quantized like the real table; a
    merged table of several widths is 1-D); the real rows are written into the flatbuffer
    afterwards (cast to float16, or int8 with the converter's per-tensor
    symmetric scale, as the placeholder was), and read back through LiteRT
    before the file is verified (:meth:`check`). A plain gather is indifferent to
    the row count; Keras' ``Embedding`` is not (its negative-id wrap reads the
    table's length), so a user's plain ``Embedding`` is stood in for by a
    :class:`~tfafm.layers.lookup.WrappedEmbedding` that wraps by the real row count.
    """

    MIN_ELEMENTS = 1 << 18

    def __init__(self, model):
        from tfafm.graph import iter_layers
        from tfafm.layers.lookup import InRangeEmbedding, MergedEmbedding

        self.model = model
        self.tables = [(layer, weight) for layer in iter_layers(model)
                       if type(layer) in (InRangeEmbedding, MergedEmbedding) or _plain_keras_embedding(layer)
                       for weight in _table_weights(layer) if int(np.prod(weight.shape)) >= self.MIN_ELEMENTS]
        self.layers = list({id(layer): layer for layer, _ in self.tables}.values())
        self.shapes = {(1031 + i, *weight.shape[1:]): (layer, weight) for i, (layer, weight) in enumerate(self.tables)}
        self.written: dict[int, tuple] = {}  # tensor index in the file -> (layer, weight) whose table it holds

    def light_model(self):
        """A copy of the model with placeholder tables."""
        from tfafm.compression.rewrite import rebuild
        from tfafm.layers.lookup import InRangeEmbedding, MergedEmbedding, WrappedEmbedding

        rng = np.random.default_rng(0)
        placeholders = {id(weight): shape for shape, (_, weight) in self.shapes.items()}
        replacements = {}
        for layer in self.layers:
            weights = _table_weights(layer)
            shapes = [placeholders.get(id(weight), tuple(weight.shape)) for weight in weights]
            if isinstance(layer, MergedEmbedding):  # same fields and indices, short tables
                small = MergedEmbedding.from_config(layer.get_config())
                small.table_shapes = shapes
            elif _plain_keras_embedding(layer):  # Keras' wrap of negative ids, by the real row count
                small = WrappedEmbedding(*shapes[0], rows=layer.input_dim, mask_zero=layer.mask_zero,
                                         name=layer.name, dtype=layer.dtype_policy)
            else:
                small = InRangeEmbedding(*shapes[0], name=layer.name, dtype=layer.dtype_policy)
            small.build()
            for weight, stand_in, shape in zip(weights, _table_weights(small), shapes):
                if id(weight) in placeholders:
                    scale = float(np.max(np.abs(np.asarray(weight[:shape[0]])))) or 1.0
                    stand_in.assign(rng.uniform(-scale, scale, shape).astype(np.float32))
                else:
                    stand_in.assign(weight)
            replacements[id(layer)] = small
        return rebuild(self.model, replacements)[0]

    def patcher(self, quantization: str | None):
        """An ``edit(model)`` for :func:`write_with_signature` that writes the real tables in."""

        def edit(flat) -> None:
            graph = flat.subgraphs[0]
            for shape, (layer, weight) in self.shapes.items():
                found = [i for i, t in enumerate(graph.tensors) if t.shape is not None
                         and tuple(int(d) for d in t.shape) == shape]
                constants = [i for i in found if flat.buffers[graph.tensors[i].buffer].data is not None]
                if len(constants) != 1:
                    raise RuntimeError(f"Table {layer.name!r}: its placeholder was not found once in the converted "
                                       f"graph ({len(constants)} matches).")
                table = np.ascontiguousarray(weight.numpy(), dtype=np.float32)
                tensor = graph.tensors[constants[0]]
                self.written[constants[0]] = (layer, weight)
                if quantization == "float16":
                    data = table.astype(np.float16)
                elif quantization == "dynamic":
                    scale, data = _int8_symmetric(table)
                    for i, other in enumerate(graph.tensors):  # the table and its gathers' int8 outputs
                        if other.quantization is not None and other.quantization.scale is not None and (
                                i == constants[0] or _reads(graph, constants[0], i)):
                            other.quantization.scale = np.array([scale], dtype=np.float32)
                else:
                    data = table
                flat.buffers[tensor.buffer].data = data.view(np.uint8).reshape(-1)
                for i in found:
                    graph.tensors[i].shape = np.array(table.shape, dtype=np.int32)

        return edit

    def check(self, path: str, quantization: str | None, chunk: int = 1 << 16) -> None:
        """Reads every written table back as LiteRT's interpreter reads the file at ``path`` and
        compares it with its layer's weights: float32 equal, float16 equal to the rounded table,
        int8 within half a quantization step (at the scale the interpreter reports, which every
        op reading the table must share).

        Raises:
            UserError: a table (named by its layer) that does not hold the layer's weights.
        """
        from tfafm.export.litert_file import _interpreter

        interpreter = _interpreter(path, delegates=False)
        details = interpreter.get_tensor_details()
        readers = interpreter._get_ops_details()  # private, pinned with ai-edge-litert (requirements.txt)
        for index, (layer, weight) in self.written.items():
            expected = weight.numpy()
            stored = interpreter.get_tensor(index)
            problem = None
            scales = details[index]["quantization_parameters"]["scales"]
            if stored.shape != expected.shape:
                problem = f"shape {stored.shape} instead of {expected.shape}"
            elif quantization == "dynamic":
                scale = float(scales[0]) if scales.size == 1 else None
                outputs = {int(t) for op in readers if index in op["inputs"] for t in op["outputs"]}
                shared = all(np.array_equal(details[t]["quantization_parameters"]["scales"], scales)
                             for t in outputs if details[t]["dtype"] == np.int8)
                if stored.dtype != np.int8 or scale is None or not shared:
                    problem = f"{stored.dtype} with scales {scales[:3]} (one int8 scale shared by its readers expected)"
                else:
                    worst = max(float(np.max(np.abs(stored[i:i + chunk] * scale - expected[i:i + chunk]),
                                             initial=0.0)) for i in range(0, len(expected), chunk))
                    if worst > 0.5 * scale * (1 + 1e-5) + 1e-7:
                        problem = f"values off by up to {worst:.3g} (half an int8 step is {0.5 * scale:.3g})"
            else:
                want = np.float16 if quantization == "float16" else np.float32
                if stored.dtype != want or not all(np.array_equal(stored[i:i + chunk], expected[i:i + chunk].astype(want))
                                                   for i in range(0, len(expected), chunk)):
                    problem = f"{stored.dtype} values that differ from the layer's {np.dtype(want).name} weights"
            if problem:
                raise UserError(f"The exported LiteRT file ({quantization or 'float32'}) does not hold the embedding "
                                f"table of layer {layer.name!r}: {problem}. It was not written.")


def _table_weights(layer) -> list:
    """The embedding tables a lookup layer holds: a :class:`MergedEmbedding`'s tables, else its ``embeddings``."""
    from tfafm.layers.lookup import MergedEmbedding

    return list(layer.tables) if isinstance(layer, MergedEmbedding) else [layer.embeddings]


def _plain_keras_embedding(layer) -> bool:
    """A user's ``keras.layers.Embedding`` as Keras defines it (not quantized, no LoRA)."""
    import keras

    return type(layer) is keras.layers.Embedding and not layer.quantization_mode and not layer.lora_enabled


def _int8_symmetric(table: np.ndarray, chunk: int = 1 << 16) -> tuple[float, np.ndarray]:
    """Per-tensor symmetric int8 quantization (LiteRT's dynamic-range scheme), chunk by chunk."""
    peak = max((float(np.max(np.abs(table[i:i + chunk]))) for i in range(0, len(table), chunk)), default=0.0)
    scale = max(peak, 1e-30) / 127.0
    data = np.empty(table.shape, dtype=np.int8)
    for i in range(0, len(table), chunk):
        data[i:i + chunk] = np.clip(np.round(table[i:i + chunk] / scale), -127, 127)
    return scale, data


def _reads(graph, source: int, target: int) -> bool:
    """Whether an operator turns tensor ``source`` into tensor ``target``."""
    return any(source in list(op.inputs) and target in list(op.outputs) for op in graph.operators)


def _check_size(model, quantization: str | None) -> None:
    """Refuses, before converting, a model whose weights cannot fit one flatbuffer."""
    size = model.count_params() * _BYTES_PER_WEIGHT[quantization]
    if size > FLATBUFFER_LIMIT * 0.95:
        raise UserError(
            f"Model {model.name!r} has {model.count_params():,} weights, {size / 2**30:.2f} GiB as "
            f"{quantization or 'float32'}: LiteRT files are flatbuffers, limited to 2 GiB. Compress it further, "
            "use quantization='dynamic' (1 byte per weight), cap the vocabularies (max_vocabulary), or export "
            "to SavedModel / ONNX instead."
        )


def _maybe_fuse(model, fuse: bool, notes: list[str] | None, rows, quantization: str | None):
    """The fused form of ``model`` for a ``quantization`` file (when it has low-rank embeddings and
    ``fuse``), checked on ``rows`` to compute what ``model`` computes
    (:func:`~tfafm.export.verify.verify_rewrite`)."""
    if not fuse or not _has_low_rank_embedding(model):
        return model
    from tfafm.compression.fusion import fuse as fuse_model
    from tfafm.export.verify import verify_rewrite

    fused, report = fuse_model(model, quantization)
    verify_rewrite(model, fused, rows, "fused form")
    if notes is not None:
        notes.extend(report.notes)
    return fused


def _has_low_rank_embedding(model) -> bool:
    from tfafm.graph import iter_layers
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


def _configure(converter, quantization: str | None) -> None:
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if quantization is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32


_REPRESENTATIVE_BLOCK = 64


def _representative(data, order: list[str], shapes: dict, steps: int):
    """A generator function yielding input lists (in the converter's input order)."""
    import tensorflow as tf

    def batches():
        if isinstance(data, Mapping):
            yield data
        elif isinstance(data, tf.data.Dataset):
            for element in data:
                yield element[0] if isinstance(element, (tuple, list)) else element
        else:
            raise UserError(
                f"representative_data must be a tf.data.Dataset or a dict of arrays, got {type(data).__name__}."
            )

    def generate():
        # The calibrator resizes its inputs once: every batch it sees has the same number of rows, so the
        # rows are re-cut into blocks of BLOCK (a smaller last block only when the data has fewer rows).
        pending, held, produced = [], 0, 0
        for features in batches():
            missing = [name for name in order if name not in features]
            if missing:
                raise UserError(f"representative_data lacks feature(s) {missing}.")
            pending.append([np.asarray(features[name]).reshape(-1, *shapes[name]) for name in order])
            held += len(pending[-1][0])
            while held >= _REPRESENTATIVE_BLOCK:
                if produced >= steps:
                    return
                columns = [np.concatenate(parts) for parts in zip(*pending)]
                yield [column[:_REPRESENTATIVE_BLOCK] for column in columns]
                produced += 1
                pending = [[column[_REPRESENTATIVE_BLOCK:] for column in columns]]
                held -= _REPRESENTATIVE_BLOCK
        if produced == 0 and held:
            yield [np.concatenate(parts) for parts in zip(*pending)]

    return generate


def _unsupported_error(error: Exception, model, frozen) -> Exception:
    """An UnsupportedLayerError naming the non-builtin ops and their Keras layers, or ``error`` itself."""
    message = str(error)
    ops = set(_FLEX_OP.findall(message))
    for listed in _SELECT_LIST.findall(message):
        ops.update(op.strip() for op in listed.split(",") if op.strip())
    if ops - {"Placeholder"}:
        ops.discard("Placeholder")  # the handle of a lookup table listed beside it, not an op of the model's own
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
    return UnsupportedLayerError(text)


def _graph_nodes(graph_def) -> Iterable:
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def _layers_using(ops: set[str], model, frozen) -> dict[str, list[str]]:
    """Maps each op type to the Keras layers whose name scope contains such an op."""
    from tfafm.graph import iter_layers, layer_of_node

    names = [layer.name for layer in iter_layers(model)]
    found: dict[str, list[str]] = {op: [] for op in ops}
    for node in _graph_nodes(frozen.graph.as_graph_def()):
        if node.op not in ops:
            continue
        layer = layer_of_node(node.name, names)
        if layer and layer not in found[node.op]:
            found[node.op].append(layer)
    return found


def _non_builtin_layers(model) -> list[str]:
    from tfafm.graph import iter_layers

    return [
        f"{layer.name} ({type(layer).__name__})"
        for layer in iter_layers(model)
        if not type(layer).__module__.startswith(_SAFE_MODULES)
    ]


