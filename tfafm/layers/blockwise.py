"""A Dense computed block by block over its input features."""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfafm")
class BlockwiseDense(keras.layers.Dense):
    """``activation(sum_i x[..., block_i] @ kernel[block_i] + bias)``: a ``keras.layers.Dense`` (same
    weights, same output) whose matmul is split over consecutive blocks of input features.

    ``blocks`` are the blocks' widths, in order, summing to the input width.
    The split changes nothing in float; it matters under dynamic-range int8
    (LiteRT), where each matmul quantizes each row of its input with one
    scale: a block of small values (embedding products, say) beside one of
    large ones (raw dense features) keeps its own scale and its precision
    (:mod:`tfafm.export.hybrid` decides where).

    Example (the "ones" kernel sums each row; the bias adds 1):

    >>> import numpy as np
    >>> layer = BlockwiseDense(1, blocks=[2, 1], kernel_initializer="ones", bias_initializer="ones")
    >>> layer(np.array([[1.0, 2.0, 3.0]])).numpy().tolist()
    [[7.0]]
    """

    def __init__(self, units: int, blocks: Sequence[int], **kwargs: Any):
        super().__init__(units, **kwargs)
        self.blocks = [int(width) for width in blocks]
        if not self.blocks or min(self.blocks) < 1:
            raise ValueError(f"BlockwiseDense needs positive block widths, got {list(blocks)}.")

    def build(self, input_shape) -> None:
        if input_shape[-1] != sum(self.blocks):
            raise ValueError(f"Layer {self.name!r}: blocks {self.blocks} sum to {sum(self.blocks)}, "
                             f"the input has {input_shape[-1]} features.")
        super().build(input_shape)

    def call(self, inputs, training=None):
        outputs, start = None, 0
        for width in self.blocks:
            part = ops.matmul(inputs[..., start:start + width], self.kernel[start:start + width])
            outputs = part if outputs is None else ops.add(outputs, part)
            start += width
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "blocks": self.blocks}
