"""Keras layers: low-rank factors and the feature interactions of the model zoo."""

from tfafm.layers.interactions import (
    ClipToVocabulary,
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
from tfafm.layers.lookup import InRangeEmbedding
from tfafm.layers.low_rank import LowRankDense, LowRankEmbedding

__all__ = [
    "ClipToVocabulary",
    "CompressedInteraction",
    "CrossLayerV1",
    "FactorizationMachine",
    "FieldMean",
    "FieldReweight",
    "InRangeEmbedding",
    "LinearTerms",
    "LowRankDense",
    "LowRankEmbedding",
    "MultiHeadSelfAttention",
    "PairwiseProduct",
    "StackFields",
]
