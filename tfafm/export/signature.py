"""The input signature every export shares: one named ``(batch, 1)`` input per feature.

Sparse features are int32 ids, dense features float32 values; the batch
dimension is dynamic. Exported models return the click probability under the
name ``prediction``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

OUTPUT_NAME = "prediction"


def feature_inputs(model) -> list[tuple[str, str]]:
    """``[(name, dtype), ...]`` of ``model``'s inputs, in the model's order.

    Raises:
        ValueError: if an input is not a named ``(batch, 1)`` int32/float32 tensor.
    """
    inputs = []
    for tensor in model.inputs:
        name = tensor.name
        dtype = str(tensor.dtype)
        shape = tuple(tensor.shape)
        if len(shape) != 2 or shape[1] != 1:
            raise ValueError(
                f"Model {model.name!r} input {name!r} has shape {shape}; exports expect one "
                "(batch, 1) input per feature."
            )
        if dtype not in ("int32", "float32", "int64", "string"):
            raise ValueError(f"Model {model.name!r} input {name!r} has unsupported dtype {dtype}.")
        inputs.append((name, dtype))
    return inputs


def tensor_specs(model) -> list:
    """One ``tf.TensorSpec((None, 1), dtype, name=feature)`` per model input, in order."""
    import tensorflow as tf

    return [tf.TensorSpec((None, 1), tf.as_dtype(dtype), name=name) for name, dtype in feature_inputs(model)]


def serving_function(model):
    """A ``tf.function`` taking a dict of feature tensors, returning ``{'prediction': probs}``."""
    import tensorflow as tf

    specs = {spec.name: spec for spec in tensor_specs(model)}

    @tf.function(input_signature=[specs])
    def serve(inputs):
        return {OUTPUT_NAME: model(inputs, training=False)}

    return serve


def positional_function(model):
    """Like :func:`serving_function` but with one positional argument per feature (for tf2onnx)."""
    import tensorflow as tf

    specs = tensor_specs(model)
    names = [spec.name for spec in specs]

    def serve(*args):
        return {OUTPUT_NAME: model(dict(zip(names, args)), training=False)}

    return tf.function(serve, input_signature=specs), specs


def as_batch(features: Mapping, inputs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Casts a feature dict to the exported dtypes and shape ``(batch, 1)``; checks names."""
    missing = [name for name, _ in inputs if name not in features]
    if missing:
        raise ValueError(f"Features missing from the batch: {missing}.")
    batch = {}
    for name, dtype in inputs:
        array = np.asarray(features[name])
        if array.ndim == 1:
            array = array[:, None]
        batch[name] = array.astype(dtype if dtype != "string" else object, copy=False)
    return batch
