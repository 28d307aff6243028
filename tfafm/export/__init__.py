"""Exports of Keras models for serving: LiteRT, SavedModel, ONNX, and a benchmark.

Every export takes one named input per model input, with a dynamic batch
axis (for tfafm's zoo: one ``(batch, 1)`` input per feature, int32 ids for
sparse features, float32 for dense ones; see :mod:`tfafm.export.signature`)
and returns named outputs (``prediction`` for a single-output model). Files
and directories are written atomically: a failed export leaves nothing at the
target path.
"""

from tfafm.export.litert_export import litert
from tfafm.export.litert_file import (
    LiteRTRunner,
    TensorInfo,
    builtin_op_names,
    litert_ops,
    litert_tensor_types,
    read_interface,
    xnnpack_partition,
)
from tfafm.export.onnx_export import OnnxRunner, onnx
from tfafm.export.request_cost import RequestCost, request_cost
from tfafm.export.saved_model_export import SavedModelRunner, saved_model
from tfafm.export.signature import Interface, interface

__all__ = [
    "Interface",
    "LiteRTRunner",
    "OnnxRunner",
    "RequestCost",
    "SavedModelRunner",
    "TensorInfo",
    "builtin_op_names",
    "interface",
    "litert",
    "litert_ops",
    "litert_tensor_types",
    "onnx",
    "read_interface",
    "request_cost",
    "saved_model",
    "xnnpack_partition",
]
