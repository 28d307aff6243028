"""Dense layers computed block by block over their input features."""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from tfafm.layers.low_rank import LowRankDense


def _checked_blocks(blocks: Sequence[int]) -> list[int]:
    widths = [int(width) for width in blocks]
    if not widths or min(widths) < 1:
        raise ValueError(f"Blockwise layers need positive block widths, got {list(blocks)}.")
    return widths


def _check_covers(name: str, blocks: list[int], input_shape) -> None:
    if input_shape[-1] != sum(blocks):
        raise ValueError(f"Layer {name!r}: blocks {blocks} sum to {sum(blocks)}, "
                         f"the input has {input_shape[-1]} features.")


def blockwise_matmul(inputs, kernel, blocks: Sequence[int]):
    """``inputs @ kernel`` as the sum of one matmul per block of consecutive input features."""
    outputs, start = None, 0
    for width in blocks:
        part = ops.matmul(inputs[..., start:start + width], kernel[start:start + width])
        outputs = part if outputs is None else ops.add(outputs, part)
        start += width
    return outputs


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
        self.blocks = _checked_blocks(blocks)

    def build(self, input_shape) -> None:
        _check_covers(self.name, self.blocks, input_shape)
        super().build(input_shape)

    def call(self, inputs, training=None):
        outputs = blockwise_matmul(inputs, self.kernel, self.blocks)
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "blocks": self.blocks}


@keras.saving.register_keras_serializable(package="tfafm")
class BlockwiseLowRankDense(LowRankDense):
    """A :class:`~tfafm.layers.LowRankDense` (same weights, same output) whose first factor's matmul is
    split over consecutive blocks of input features, as :class:`BlockwiseDense` splits a Dense's: under
    dynamic-range int8 each block keeps its own input scale.

    Example (rank 1 and "ones" factors: the code sums each row, the up factor copies it):

    >>> import numpy as np
    >>> layer = BlockwiseLowRankDense(2, rank=1, blocks=[2, 1], kernel_initializer="ones")
    >>> layer(np.array([[1.0, 2.0, 3.0]])).numpy().tolist()
    [[6.0, 6.0]]
    """

    def __init__(self, units: int, rank: int, blocks: Sequence[int], **kwargs: Any):
        super().__init__(units, rank, **kwargs)
        self.blocks = _checked_blocks(blocks)

    def build(self, input_shape) -> None:
        _check_covers(self.name, self.blocks, input_shape)
        super().build(input_shape)

    def _down(self, inputs):
        return blockwise_matmul(inputs, self.down_kernel, self.blocks)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "blocks": self.blocks}
