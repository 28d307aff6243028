"""Building blocks shared by the model zoo: inputs, embeddings, MLPs, outputs.

Conventions every builder follows (compression and export rely on them):
one ``keras.Input`` of shape ``(1,)`` per feature, named after it; one
:class:`ClipToVocabulary` guard for all sparse ids, then one ``Embedding``
(an :class:`InRangeEmbedding`) per sparse field named ``<field>_embedding`` giving ``(batch, dim)``; plain
``Dense`` layers in MLPs; the deep input is ``Concatenate([embedding, ...,
dense])`` so a compressed embedding can be fused into the first ``Dense``;
a sigmoid output named ``prediction``. The graph is kept free of per-field
reshapes so that batch-1 inference runs few, larger ops.
"""

from __future__ import annotations

from typing import Sequence

import keras

from tfafm.models.layers import ClipToVocabulary, LinearTerms, StackFields
from tfafm.layers.lookup import InRangeEmbedding
from tfafm.schema import Schema


def feature_inputs(schema: Schema) -> dict[str, keras.KerasTensor]:
    """One named input per feature: int32 ids for sparse, float32 for dense."""
    inputs = {}
    for feature in schema.features:
        dtype = "int32" if feature in schema.sparse else "float32"
        inputs[feature.name] = keras.Input(shape=(1,), dtype=dtype, name=feature.name)
    return inputs


class EmbeddingFactory:
    """Guards all sparse ids once, then creates per-field embeddings on top."""

    def __init__(self, schema: Schema, inputs: dict[str, keras.KerasTensor]):
        if not schema.sparse:
            raise ValueError("This model needs at least one sparse (categorical) feature.")
        self.schema = schema
        guard = ClipToVocabulary([f.vocabulary_size for f in schema.sparse], name="sparse_ids")
        self.ids = guard([inputs[f.name] for f in schema.sparse])

    def embed(self) -> list:
        """Per-field lookups ``(batch, dim)``, named ``<field>_embedding``."""
        return [
            InRangeEmbedding(
                f.vocabulary_size,
                f.embedding_dim,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01),
                name=f"{f.name}_embedding",
            )(ids)
            for f, ids in zip(self.schema.sparse, self.ids)
        ]

    def linear(self) -> keras.KerasTensor:
        """The first-order term of all sparse fields, ``(batch, 1)``."""
        return LinearTerms([f.vocabulary_size for f in self.schema.sparse], name="linear_terms")(self.ids)


def uniform_embedding_dim(schema: Schema, model_name: str) -> int:
    """The single embedding width that interaction models require."""
    dims = {f.embedding_dim for f in schema.sparse}
    if len(dims) != 1:
        detail = ", ".join(f"{f.name}={f.embedding_dim}" for f in schema.sparse)
        raise ValueError(f"{model_name} needs one embedding_dim for all sparse features, got {detail}.")
    return dims.pop()


def dense_vector(schema: Schema, inputs: dict) -> keras.KerasTensor | None:
    """The dense features side by side, ``(batch, n_dense)``, or None without any."""
    tensors = [inputs[f.name] for f in schema.dense]
    if not tensors:
        return None
    if len(tensors) == 1:
        return tensors[0]
    return keras.layers.Concatenate(name="dense_features")(tensors)


def field_matrix(embeddings: list, name: str = "fields") -> keras.KerasTensor:
    """Stacks ``(batch, dim)`` lookups into ``(batch, fields, dim)``."""
    return StackFields(name=name)(embeddings)


def deep_input(embeddings: list, dense: keras.KerasTensor | None, name: str = "deep_input"):
    """``Concatenate(embeddings + [dense])``: the MLP's input."""
    parts = list(embeddings) + ([dense] if dense is not None else [])
    return parts[0] if len(parts) == 1 else keras.layers.Concatenate(name=name)(parts)


def mlp(
    x,
    hidden_units: Sequence[int],
    name: str,
    activation: str = "relu",
    dropout: float = 0.0,
):
    """A stack of ``Dense`` layers (named ``<name>_dense_<i>``) with optional dropout."""
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(int(units), activation=activation, name=f"{name}_dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"{name}_dropout_{i}")(x)
    return x


def prediction(logits: list, inputs: dict, name: str) -> keras.Model:
    """Sums the logit terms, applies the sigmoid and wraps everything in a model."""
    logit = logits[0] if len(logits) == 1 else keras.layers.Add(name="logit_sum")(logits)
    output = keras.layers.Activation("sigmoid", name="prediction")(logit)
    return keras.Model(inputs=inputs, outputs=output, name=name)


def first_order(factory: EmbeddingFactory, dense: keras.KerasTensor | None):
    """The wide/linear term: per-field scalar weights plus a linear map of dense features."""
    sparse = factory.linear()
    if dense is None:
        return sparse
    return keras.layers.Add(name="linear_logit")([sparse, keras.layers.Dense(1, name="linear_dense")(dense)])
