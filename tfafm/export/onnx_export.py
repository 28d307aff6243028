"""Export to ONNX through tf2onnx, and an onnxruntime runner.

:class:`OnnxRunner` imports neither TensorFlow nor the rest of tfafm.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np


def onnx(model, path: str, opset: int | None = None, verification_data=None) -> str:
    """Converts ``model`` to an ONNX file at ``path`` (written atomically).

    The serving function (one named input per model input, dynamic batch; see
    :mod:`tfafm.export.signature`) is traced, its variables and captured
    tensors frozen into constants, and the graph converted with
    ``tf2onnx.convert.from_graph_def``. The ONNX inputs carry the model's
    input names, the outputs ``prediction`` (single-output models) or the
    model's output names. ``opset=None`` uses tf2onnx's default. Recurrent
    layers are unrolled first (:func:`tfafm.export.portable.servable`).

    The written file is loaded in onnxruntime and compared with ``model`` on
    ``verification_data`` (default: rows generated inside each input's valid
    range) before it replaces anything at ``path``
    (:func:`tfafm.export.verify.verify_export`).

    Returns:
        ``path``.

    Raises:
        tfafm.errors.UserError: tf2onnx cannot convert the model, or
            onnxruntime cannot load or run the file, or its outputs disagree
            with ``model`` (naming the op and layer where known).
    """
    import tf2onnx
    from tensorflow.python.framework import convert_to_constants

    from tfafm.export.portable import servable
    from tfafm.export.signature import check_input_names, positional_function
    from tfafm.export.verify import converter_error, verification_rows, verify_export
    from tfafm.io_utils import atomic_path
    from tfafm.errors import UserError
    from tfafm.logs import collecting, dropping

    keras_model = model
    check_input_names(keras_model, "onnx")
    rows = verification_rows(keras_model, verification_data)
    model, _ = servable(model, "onnx")
    function, _ = positional_function(model)
    concrete = function.get_concrete_function()
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
    inputs = [t.name for t in frozen.inputs]
    # outputs come flattened in sorted-key order of the serving function's dict
    outputs = dict(zip(sorted(concrete.structured_outputs), (t.name for t in frozen.outputs)))
    with atomic_path(path) as tmp, collecting("tf2onnx") as notes:
        try:
            # tf2onnx calls TensorFlow's v1 graph helpers, each of which logs a deprecation notice.
            with dropping("tensorflow", "is deprecated and will be removed in a future version"):
                tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=inputs,
                                               output_names=list(outputs.values()), opset=opset, output_path=tmp)
        except Exception as error:  # tf2onnx's ValueError / RuntimeError on ops it cannot map
            raise converter_error("tf2onnx", error, keras_model) from error
        _finish(tmp, {tensor: name for name, tensor in outputs.items()})
        try:
            verify_export(tmp, "onnx", keras_model, rows)
        except UserError as error:  # what tf2onnx logged it could not convert says why, where there is some
            unconverted = _unconverted_ops(notes)
            if not unconverted:
                raise
            raise type(error)(f"{error} (tf2onnx could not convert op(s): {', '.join(unconverted)})") from None
    return path


def _unconverted_ops(records) -> list[str]:
    """The TensorFlow op types tf2onnx's log records say it could not convert, sorted."""
    found = set()
    for record in records:
        message = record.getMessage()
        found.update(re.findall(r"Tensorflow op \[[^\]]*: (\w+)\] is not supported", message))
        found.update(re.findall(r"OP=(\w+)", message))
    return sorted(found)


def _finish(path: str, names: dict[str, str]) -> None:
    """The converted file made to serve as the Keras model does: named outputs, TensorFlow's one-hot."""
    import onnx as onnx_lib

    model = onnx_lib.load(path)
    _rename_outputs(model.graph, names)
    _one_hot_of_negative_ids_is_off(model.graph)
    onnx_lib.save(model, path)


def _rename_outputs(graph, names: dict[str, str]) -> None:
    """Gives the graph outputs their serving names (``Identity:0`` -> ``prediction``) and
    strips the ``:0`` suffix tf2onnx keeps on input names."""
    renames = {out.name: names[out.name] for out in graph.output if out.name in names}
    renames.update({i.name: i.name.split(":")[0] for i in graph.input if i.name.endswith(":0")})
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]


def _one_hot_of_negative_ids_is_off(graph) -> None:
    """ONNX's ``OneHot`` reads a negative index ``i`` as ``depth + i``, where TensorFlow's (so Keras', LiteRT's and
    the SavedModel's ``CategoryEncoding`` / ``ops.one_hot``) gives a row of zeros: each OneHot's negative indices
    become ``depth``, outside the range, which ONNX too gives as a row of zeros."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    for number, node in enumerate(graph.node):
        if node.op_type == "OneHot":
            prefix = f"tfafm_one_hot_{number}"
            ids, depth, zero, negative, indices = (f"{prefix}/{part}" for part in
                                                    ("ids", "depth", "zero", "negative", "indices"))
            graph.initializer.append(numpy_helper.from_array(np.zeros((), np.int64), zero))
            nodes += [helper.make_node("Cast", [node.input[0]], [ids], to=TensorProto.INT64),
                      helper.make_node("Cast", [node.input[1]], [depth], to=TensorProto.INT64),
                      helper.make_node("Less", [ids, zero], [negative]),
                      helper.make_node("Where", [negative, depth, ids], [indices])]
            node.input[0] = indices
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


class OnnxRunner:
    """Runs an ``.onnx`` exported by :func:`onnx` with onnxruntime on feature-dict batches."""

    _DTYPES = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32}

    def __init__(self, path: str, num_threads: int = 1):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FileNotFoundError(f"No ONNX file at {path}.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = {
            i.name: (self._DTYPES.get(i.type, np.float32), tuple(int(d) for d in i.shape[1:]))
            for i in self.session.get_inputs()
        }
        self.output = self.session.get_outputs()[0].name

    @property
    def feature_names(self) -> list[str]:
        return list(self.inputs)

    def __call__(self, features: Mapping) -> np.ndarray:
        missing = [name for name in self.inputs if name not in features]
        if missing:
            raise ValueError(f"Features missing from the batch: {missing}.")
        feed = {
            name: np.asarray(features[name]).reshape(-1, *shape).astype(dtype, copy=False)
            for name, (dtype, shape) in self.inputs.items()
        }
        return self.session.run([self.output], feed)[0]

    predict = __call__
