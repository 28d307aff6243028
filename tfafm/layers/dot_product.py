"""A one-unit ``Dense`` computed as a row-wise dot product."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfafm.errors import UserError


@keras.saving.register_keras_serializable(package="tfafm")
class DotProductDense(keras.layers.Dense):
    """``activation(sum(x * kernel[:, 0], axis=-1) + bias)``: a ``keras.layers.Dense`` of one unit (same
    weights, same output) computed as an elementwise product and a sum over the last axis.

    LiteRT's XNNPACK delegate computes a fully connected layer in tiles of
    output columns, so one output column costs as much as a whole tile: a
    ``Dense(1)`` over 400 features took 43 us for 256 rows where a product and
    a sum took 13 us (and at one row, 1.8 us against 0.7 us). :func:`tfafm.fuse`
    puts it in place of the float ``Dense(1)`` layers of a model (the logit
    heads, the first-order sum), except for full-integer int8 files (whose
    product would be rounded to int8 before the sum).

    Args: those of ``keras.layers.Dense``, with ``units=1``.

    Example:

    >>> import numpy as np, tfafm
    >>> layer = tfafm.layers.DotProductDense(1, kernel_initializer="ones", bias_initializer="ones")
    >>> layer(np.array([[1.0, 2.0, 3.0]])).numpy()
    array([[7.]], dtype=float32)
    """

    def __init__(self, units: int = 1, **kwargs: Any):
        if units != 1:
            raise UserError(f"DotProductDense computes one unit, got units={units}.")
        super().__init__(units, **kwargs)

    def call(self, inputs, training=None):
        if self.quantization_mode or self.lora_enabled:
            return super().call(inputs, training=training)
        outputs = ops.sum(ops.multiply(inputs, ops.reshape(self.kernel, (-1,))), axis=-1, keepdims=True)
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs
