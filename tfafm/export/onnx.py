"""Export to ONNX through tf2onnx, and an onnxruntime runner.

:class:`OnnxRunner` imports neither TensorFlow nor the rest of tfafm.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np


def onnx(model, path: str, opset: int | None = None) -> str:
    """Converts ``model`` to an ONNX file at ``path`` (written atomically).

    Traced with ``tf2onnx.convert.from_function`` from a function with one
    named ``(None, 1)`` input per feature (int32 ids / float32 dense values);
    the graph's inputs carry the feature names and its single output is
    ``prediction`` ``(batch, 1)``. ``opset=None`` uses tf2onnx's default.

    Returns:
        ``path``.
    """
    import tf2onnx

    from tfafm.export.signature import positional_function
    from tfafm.io_utils import atomic_path

    function, specs = positional_function(model)
    with atomic_path(path) as tmp:
        tf2onnx.convert.from_function(function, input_signature=specs, opset=opset, output_path=tmp)
    return path


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
