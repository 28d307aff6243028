"""Exports of tfafm models for serving: LiteRT, SavedModel, ONNX, and a benchmark.

Every export takes one named ``(batch, 1)`` input per feature (int32 ids for
sparse features, float32 for dense ones; see :mod:`tfafm.export.signature`)
and returns the click probability. Files and directories are written
atomically: a failed export leaves nothing at the target path.
"""

from tfafm.export.litert import (
    LiteRTRunner,
    TensorInfo,
    builtin_op_names,
    litert,
    litert_ops,
    litert_tensor_types,
)
from tfafm.export.onnx import OnnxRunner, onnx
from tfafm.export.saved_model import SavedModelRunner, saved_model

__all__ = [
    "LiteRTRunner",
    "OnnxRunner",
    "SavedModelRunner",
    "TensorInfo",
    "builtin_op_names",
    "litert",
    "litert_ops",
    "litert_tensor_types",
    "onnx",
    "saved_model",
]
