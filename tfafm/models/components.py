"""Building blocks shared by the model zoo: inputs, embeddings, MLPs, outputs.

Conventions every builder follows (compression and export rely on them):
one ``keras.Input`` of shape ``(1,)`` per feature, named after it; one
``Embedding`` per sparse field named ``<field>_embedding`` behind a
:class:`ClipToVocabulary` guard; plain ``Dense`` layers in MLPs; the deep
input is ``Concatenate([Flatten(embedding), ...])`` so a compressed embedding
can be fused into the first ``Dense``; a sigmoid output named ``prediction``.
"""

from __future__ import annotations

from typing import Sequence

import keras

from tfafm.layers.interactions import ClipToVocabulary
from tfafm.schema import Schema


def feature_inputs(schema: Schema) -> dict[str, keras.KerasTensor]:
    """One named input per feature: int32 ids for sparse, float32 for dense."""
    inputs = {}
    for feature in schema.features:
        dtype = "int32" if feature in schema.sparse else "float32"
        inputs[feature.name] = keras.Input(shape=(1,), dtype=dtype, name=feature.name)
    return inputs


class EmbeddingFactory:
    """Creates the id guards once per field, then embeddings of any width on top."""

    def __init__(self, schema: Schema, inputs: dict[str, keras.KerasTensor]):
        if not schema.sparse:
            raise ValueError("This model needs at least one sparse (categorical) feature.")
        self.schema = schema
        self.ids = {
            f.name: ClipToVocabulary(f.vocabulary_size, name=f"{f.name}_ids")(inputs[f.name])
            for f in schema.sparse
        }

    def embed(self, suffix: str = "embedding", output_dim: int | None = None) -> list:
        """Per-field lookups ``(batch, 1, dim)``; ``output_dim`` overrides the schema's."""
        return [
            keras.layers.Embedding(
                f.vocabulary_size,
                output_dim or f.embedding_dim,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01),
                name=f"{f.name}_{suffix}",
            )(self.ids[f.name])
            for f in self.schema.sparse
        ]


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
    """Stacks ``(batch, 1, dim)`` lookups into ``(batch, fields, dim)``."""
    if len(embeddings) == 1:
        return embeddings[0]
    return keras.layers.Concatenate(axis=1, name=name)(embeddings)


def deep_input(embeddings: list, dense: keras.KerasTensor | None, name: str = "deep_input"):
    """``Concatenate([Flatten(e) for e in embeddings] + [dense])``: the MLP's input."""
    parts = [keras.layers.Flatten(name=f"{e._keras_history.operation.name}_flat")(e) for e in embeddings]
    if dense is not None:
        parts.append(dense)
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
    weights = factory.embed(suffix="linear", output_dim=1)
    terms = keras.layers.Concatenate(axis=1, name="linear_terms")(weights) if len(weights) > 1 else weights[0]
    flat = keras.layers.Flatten(name="linear_flat")(terms)
    if dense is not None:
        flat = keras.layers.Concatenate(name="linear_input")([flat, dense])
    return keras.layers.Dense(1, name="linear_logit")(flat)
