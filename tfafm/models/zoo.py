"""Builders of the classic CTR architectures as functional Keras models.

Every builder takes a :class:`~tfafm.schema.Schema` plus hyper-parameters and
follows the conventions in :mod:`tfafm.models.components`.
"""

from __future__ import annotations

from typing import Sequence

import keras
import keras_rs

from tfafm.models.layers import (
    CompressedInteraction,
    CrossLayerV1,
    FactorizationMachine,
    FieldMean,
    FieldReweight,
    MultiHeadSelfAttention,
    PairwiseProduct,
)
from tfafm.models.components import (
    EmbeddingFactory,
    deep_input,
    dense_vector,
    feature_inputs,
    field_matrix,
    first_order,
    mlp,
    prediction,
    uniform_embedding_dim,
)
from tfafm.schema import Schema

_HIDDEN = (400, 400, 400)


def _logit(x, name: str):
    return keras.layers.Dense(1, name=name)(x)


def widedeep(schema: Schema, hidden_units: Sequence[int] = _HIDDEN, dropout: float = 0.0) -> keras.Model:
    """Wide & Deep (Cheng et al., 2016): a linear model plus an MLP over embeddings."""
    inputs = feature_inputs(schema)
    factory, dense = EmbeddingFactory(schema, inputs), dense_vector(schema, inputs)
    deep = mlp(deep_input(factory.embed(), dense), hidden_units, "deep", dropout=dropout)
    return prediction([first_order(factory, dense), _logit(deep, "deep_logit")], inputs, "widedeep")


def deepfm(schema: Schema, hidden_units: Sequence[int] = _HIDDEN, dropout: float = 0.0) -> keras.Model:
    """DeepFM (Guo et al., 2017): linear + FM + MLP over shared embeddings."""
    uniform_embedding_dim(schema, "deepfm")
    inputs = feature_inputs(schema)
    factory, dense = EmbeddingFactory(schema, inputs), dense_vector(schema, inputs)
    embeddings = factory.embed()
    fm = FactorizationMachine(name="fm")(field_matrix(embeddings))
    deep = mlp(deep_input(embeddings, dense), hidden_units, "deep", dropout=dropout)
    return prediction([first_order(factory, dense), fm, _logit(deep, "deep_logit")], inputs, "deepfm")


def nfm(schema: Schema, hidden_units: Sequence[int] = (400, 400), dropout: float = 0.0) -> keras.Model:
    """NFM (He & Chua, 2017): bi-interaction pooling feeding an MLP, plus a linear term."""
    uniform_embedding_dim(schema, "nfm")
    inputs = feature_inputs(schema)
    factory, dense = EmbeddingFactory(schema, inputs), dense_vector(schema, inputs)
    pooled = FactorizationMachine(reduce_sum=False, name="bi_interaction")(field_matrix(factory.embed()))
    deep = mlp(pooled, hidden_units, "deep", dropout=dropout)
    return prediction([first_order(factory, dense), _logit(deep, "deep_logit")], inputs, "nfm")


def xdeepfm(
    schema: Schema,
    hidden_units: Sequence[int] = _HIDDEN,
    cin_layer_sizes: Sequence[int] = (128, 128),
    dropout: float = 0.0,
) -> keras.Model:
    """xDeepFM (Lian et al., 2018): linear + CIN + MLP."""
    uniform_embedding_dim(schema, "xdeepfm")
    inputs = feature_inputs(schema)
    factory, dense = EmbeddingFactory(schema, inputs), dense_vector(schema, inputs)
    embeddings = factory.embed()
    cin = CompressedInteraction(cin_layer_sizes, name="cin")(field_matrix(embeddings))
    deep = mlp(deep_input(embeddings, dense), hidden_units, "deep", dropout=dropout)
    logits = [first_order(factory, dense), _logit(cin, "cin_logit"), _logit(deep, "deep_logit")]
    return prediction(logits, inputs, "xdeepfm")


def _cross_model(schema, cross_layer, num_cross, structure, hidden_units, dropout, name) -> keras.Model:
    """A cross network over the deep input, stacked under or parallel to an MLP."""
    if structure not in ("stacked", "parallel"):
        raise ValueError(f"{name} structure must be 'stacked' or 'parallel', got {structure!r}.")
    inputs = feature_inputs(schema)
    factory, dense = EmbeddingFactory(schema, inputs), dense_vector(schema, inputs)
    x0 = deep_input(factory.embed(), dense)
    cross = x0
    for i in range(num_cross):
        cross = cross_layer(name=f"cross_{i}")(x0, cross)
    if structure == "stacked":
        top = mlp(cross, hidden_units, "deep", dropout=dropout)
    else:
        deep = mlp(x0, hidden_units, "deep", dropout=dropout)
        top = keras.layers.Concatenate(name="cross_deep")([cross, deep])
    return prediction([_logit(top, "logit")], inputs, name)


def dcn(
    schema: Schema, hidden_units: Sequence[int] = _HIDDEN, num_cross: int = 3, dropout: float = 0.0
) -> keras.Model:
    """DCN (Wang et al., 2017): a v1 cross network in parallel with an MLP."""
    return _cross_model(schema, CrossLayerV1, num_cross, "parallel", hidden_units, dropout, "dcn")


def dcnv2(
    schema: Schema,
    hidden_units: Sequence[int] = _HIDDEN,
    num_cross: int = 3,
    structure: str = "stacked",
    dropout: float = 0.0,
) -> keras.Model:
    """DCN-V2 (Wang et al., 2021) with keras_rs ``FeatureCross`` layers, stacked or parallel."""
    return _cross_model(schema, keras_rs.layers.FeatureCross, num_cross, structure, hidden_units,
                        dropout, "dcnv2")


def autoint(
    schema: Schema,
    hidden_units: Sequence[int] = _HIDDEN,
    num_attention_layers: int = 2,
    attention_dim: int = 32,
    num_heads: int = 2,
    dropout: float = 0.0,
) -> keras.Model:
    """AutoInt+ (Song et al., 2019): multi-head self-attention over fields plus an MLP."""
    uniform_embedding_dim(schema, "autoint")
    inputs = feature_inputs(schema)
    factory, dense = EmbeddingFactory(schema, inputs), dense_vector(schema, inputs)
    embeddings = factory.embed()
    x = field_matrix(embeddings)
    for i in range(num_attention_layers):
        # Query, key, value and residual projections as one Dense (fewer, larger ops), then split.
        projected = keras.layers.Dense(4 * attention_dim, use_bias=False, name=f"attention_{i}_projection")(x)
        q, k, v, residual = keras.ops.split(projected, 4, axis=-1)
        attended = MultiHeadSelfAttention(num_heads, name=f"attention_{i}")(q, k, v)
        x = keras.layers.Activation("relu", name=f"attention_{i}_out")(
            keras.layers.Add(name=f"attention_{i}_add")([attended, residual])
        )
    attention_logit = _logit(keras.layers.Flatten(name="attention_flat")(x), "attention_logit")
    deep = mlp(deep_input(embeddings, dense), hidden_units, "deep", dropout=dropout)
    return prediction([attention_logit, _logit(deep, "deep_logit")], inputs, "autoint")


def fibinet(
    schema: Schema,
    hidden_units: Sequence[int] = _HIDDEN,
    reduction_ratio: int = 3,
    dropout: float = 0.0,
) -> keras.Model:
    """FiBiNET (Huang et al., 2019): SENET field re-weighting and bilinear interactions."""
    dim = uniform_embedding_dim(schema, "fibinet")
    if len(schema.sparse) < 2:
        raise ValueError("fibinet needs at least two sparse features.")
    inputs = feature_inputs(schema)
    factory, dense = EmbeddingFactory(schema, inputs), dense_vector(schema, inputs)
    fields = field_matrix(factory.embed())
    num_fields = len(schema.sparse)
    squeeze = FieldMean(name="senet_squeeze")(fields)
    excite = keras.layers.Dense(max(1, num_fields // reduction_ratio), activation="relu", name="senet_reduce")(squeeze)
    excite = keras.layers.Dense(num_fields, activation="relu", name="senet_expand")(excite)
    reweighted = FieldReweight(name="senet_reweight")(fields, excite)
    pairs = []
    for source, name in ((fields, "bilinear"), (reweighted, "senet_bilinear")):
        projected = keras.layers.Dense(dim, use_bias=False, name=f"{name}_weight")(source)
        pairs.append(keras.layers.Flatten(name=f"{name}_flat")(PairwiseProduct(name=name)(projected, source)))
    if dense is not None:
        pairs.append(dense)
    deep = mlp(keras.layers.Concatenate(name="deep_input")(pairs), hidden_units, "deep", dropout=dropout)
    return prediction([first_order(factory, dense), _logit(deep, "deep_logit")], inputs, "fibinet")


def dlrm(
    schema: Schema,
    bottom_units: Sequence[int] = (256, 64),
    hidden_units: Sequence[int] = _HIDDEN,
    dropout: float = 0.0,
) -> keras.Model:
    """DLRM (Naumov et al., 2019): bottom MLP on dense features, dot interactions, top MLP.

    ``bottom_units`` are the bottom MLP's hidden layers; its output layer has
    the embedding width so the dense vector joins the dot interactions.
    """
    dim = uniform_embedding_dim(schema, "dlrm")
    inputs = feature_inputs(schema)
    factory, dense = EmbeddingFactory(schema, inputs), dense_vector(schema, inputs)
    vectors = factory.embed()
    if dense is not None:
        bottom = mlp(dense, bottom_units, "bottom")
        vectors.append(keras.layers.Dense(dim, activation="relu", name="bottom_out")(bottom))
    interactions = keras_rs.layers.DotInteraction(name="dot_interaction")(vectors)
    top_input = keras.layers.Concatenate(name="top_input")([interactions, vectors[-1]])
    top = mlp(top_input, hidden_units, "top", dropout=dropout)
    return prediction([_logit(top, "logit")], inputs, "dlrm")


BUILDERS = {
    "widedeep": widedeep,
    "deepfm": deepfm,
    "dcn": dcn,
    "dcnv2": dcnv2,
    "xdeepfm": xdeepfm,
    "autoint": autoint,
    "fibinet": fibinet,
    "nfm": nfm,
    "dlrm": dlrm,
}
