"""Keras layers: low-rank factors and the feature interactions of the model zoo."""

from tfafm.layers.attention import LowRankMultiHeadAttention
from tfafm.layers.interactions import (
    ClipToVocabulary,
    CodeFactorizationMachine,
    CodeProjections,
    CompressedInteraction,
    CrossLayerV1,
    FactorizationMachine,
    FieldMean,
    FieldReweight,
    LinearTerms,
    MultiHeadSelfAttention,
    PairwiseProduct,
    StackFields,
)
from tfafm.layers.lookup import InRangeEmbedding, MergedEmbedding
from tfafm.layers.low_rank import LowRankDense, LowRankEinsumDense, LowRankEmbedding
from tfafm.layers.protocol import CompressibleLayer, Matrix

__all__ = [
    "ClipToVocabulary",
    "CodeFactorizationMachine",
    "CodeProjections",
    "CompressibleLayer",
    "CompressedInteraction",
    "CrossLayerV1",
    "FactorizationMachine",
    "FieldMean",
    "FieldReweight",
    "InRangeEmbedding",
    "LinearTerms",
    "LowRankDense",
    "LowRankEinsumDense",
    "LowRankEmbedding",
    "LowRankMultiHeadAttention",
    "Matrix",
    "MergedEmbedding",
    "MultiHeadSelfAttention",
    "PairwiseProduct",
    "StackFields",
]
