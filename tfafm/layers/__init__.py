"""Keras layers: the low-rank factors compression puts in place of dense layers and tables.

The feature interactions of the model zoo (and their fused forms) live in
:mod:`tfafm.models.layers`; the row lookups fusion and export use, in
:mod:`tfafm.layers.lookup`.
"""

from tfafm.layers import lookup  # noqa: F401  (registers the lookup layers with Keras)
from tfafm.layers.attention import LowRankMultiHeadAttention
from tfafm.layers.blockwise import BlockwiseDense, BlockwiseLowRankDense
from tfafm.layers.dot_product import DotProductDense
from tfafm.layers.low_rank import LowRankDense, LowRankEinsumDense, LowRankEmbedding
from tfafm.layers.protocol import CompressibleLayer, Matrix

__all__ = [
    "BlockwiseDense",
    "BlockwiseLowRankDense",
    "CompressibleLayer",
    "DotProductDense",
    "LowRankDense",
    "LowRankEinsumDense",
    "LowRankEmbedding",
    "LowRankMultiHeadAttention",
    "Matrix",
]
