"""Low-rank replacements of ``Dense`` and ``Embedding`` layers.

Both store two thin factors instead of one wide matrix. They are built from a
trained layer with :meth:`LowRankDense.from_dense` /
:meth:`LowRankEmbedding.from_embedding`, either from output-feature
statistics (Atomic Feature Mimicking, ``method="afm"``) or from a truncated
SVD of the weights (``method="svd"``).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from tfafm.compression.factorize import (
    factor_dense,
    factor_embedding,
)
from tfafm.compression.statistics import LayerStatistics
from tfafm.layers.lookup import gather_rows

_PACKAGE = "tfafm"


def _check_rank(layer_name: str, rank: int, limit: int) -> int:
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 1 <= rank <= limit:
        raise ValueError(f"Layer {layer_name!r}: rank must be an integer in [1, {limit}], got {rank!r}.")
    return int(rank)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LowRankDense(keras.layers.Layer):
    """``activation(inner_activation(x @ down + b_down) @ up + b_up)``.

    A rank-``rank`` stand-in for ``Dense(units)``: ``d_in * units`` weights
    become ``rank * (d_in + units)``. Without ``inner_activation`` it is a
    linear map of rank ``rank``; with one, it is a small bottleneck MLP that
    should be fine-tuned after compression.

    Args:
        units: output dimension.
        rank: width of the inner factor.
        activation: activation applied to the output (as in ``Dense``).
        inner_activation: activation between the two factors, or None.
        use_bias: whether both factors carry a bias.
        kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer: as in ``Dense``, for both factors.
    """

    def __init__(
        self,
        units: int,
        rank: int,
        activation=None,
        inner_activation=None,
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.units = int(units)
        self.rank = _check_rank(self.name, rank, self.units)
        self.activation = keras.activations.get(activation)
        self.inner_activation = (
            None if inner_activation is None else keras.activations.get(inner_activation)
        )
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        _check_rank(self.name, self.rank, min(input_dim, self.units))
        self.down_kernel = self.add_weight(
            name="down_kernel", shape=(input_dim, self.rank),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
        )
        self.up_kernel = self.add_weight(
            name="up_kernel", shape=(self.rank, self.units),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
        )
        if self.use_bias:
            self.down_bias = self.add_weight(
                name="down_bias", shape=(self.rank,),
                initializer=self.bias_initializer, regularizer=self.bias_regularizer,
            )
            self.up_bias = self.add_weight(
                name="up_bias", shape=(self.units,),
                initializer=self.bias_initializer, regularizer=self.bias_regularizer,
            )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def factor(self, inputs):
        """The rank-``rank`` code ``inner_activation(x @ down + b_down)``."""
        z = ops.matmul(inputs, self.down_kernel)
        if self.use_bias:
            z = ops.add(z, self.down_bias)
        return self.inner_activation(z) if self.inner_activation is not None else z

    def call(self, inputs):
        y = ops.matmul(self.factor(inputs), self.up_kernel)
        if self.use_bias:
            y = ops.add(y, self.up_bias)
        return self.activation(y) if self.activation is not None else y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "rank": self.rank,
            "activation": keras.activations.serialize(self.activation),
            "inner_activation": keras.activations.serialize(self.inner_activation)
            if self.inner_activation is not None else None,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
        }

    @classmethod
    def from_dense(
        cls,
        layer: keras.layers.Dense,
        rank: int,
        stats: LayerStatistics | None = None,
        method: str = "afm",
        inner_activation=None,
    ) -> "LowRankDense":
        """Factors a built ``Dense`` layer.

        With ``method="afm"`` (needs ``stats`` of the layer's pre-activation
        outputs) the output keeps its top-``rank`` principal directions and the
        rest is replaced by the mean; ``method="svd"`` truncates the SVD of the
        kernel. At full rank without ``inner_activation`` both are exact.
        """
        if not isinstance(layer, keras.layers.Dense) or not layer.built:
            raise ValueError(f"from_dense needs a built keras.layers.Dense, got {layer!r}.")
        kernel = np.asarray(layer.kernel.numpy(), dtype=np.float64)
        bias = np.asarray(layer.bias.numpy(), dtype=np.float64) if layer.use_bias else None
        _check_rank(layer.name, rank, min(kernel.shape))
        factors = factor_dense(layer.name, kernel, bias, int(rank), stats, method)
        new = cls(
            units=layer.units,
            rank=rank,
            activation=layer.activation,
            inner_activation=inner_activation,
            use_bias=True,
            kernel_regularizer=layer.kernel_regularizer,
            bias_regularizer=layer.bias_regularizer,
            name=layer.name,
            dtype=layer.dtype_policy,
        )
        new.build((None, kernel.shape[0]))
        new.set_weights([f.astype(np.float32) for f in factors])
        return new


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LowRankEmbedding(keras.layers.Layer):
    """``table[ids] @ projection + bias``: a ``(V, rank)`` table standing in for ``(V, d)``.

    Args:
        input_dim: vocabulary size ``V``.
        output_dim: embedding width ``d`` the rest of the model sees.
        rank: width ``k`` of the stored rows.
        embeddings_initializer, embeddings_regularizer: for the table.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        rank: int,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.rank = _check_rank(self.name, rank, min(self.input_dim, self.output_dim))
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.input_dim, self.rank),
            initializer=self.embeddings_initializer, regularizer=self.embeddings_regularizer,
        )
        self.projection = self.add_weight(
            name="projection", shape=(self.rank, self.output_dim), initializer="glorot_uniform"
        )
        self.bias = self.add_weight(name="bias", shape=(self.output_dim,), initializer="zeros")

    def lookup(self, ids):
        """The stored ``rank``-wide rows for ``ids``."""
        return gather_rows(self.embeddings, ids)

    def call(self, ids):
        return ops.add(ops.matmul(self.lookup(ids), self.projection), self.bias)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "rank": self.rank,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer),
        }

    @classmethod
    def from_embedding(
        cls,
        layer: keras.layers.Embedding,
        rank: int,
        stats: LayerStatistics | None = None,
        method: str = "afm",
    ) -> "LowRankEmbedding":
        """Factors a built ``Embedding``: ``E ~ (E - mu) U_k U_k^T + mu`` (AFM) or truncated SVD."""
        if not isinstance(layer, keras.layers.Embedding) or not layer.built:
            raise ValueError(f"from_embedding needs a built keras.layers.Embedding, got {layer!r}.")
        table = np.asarray(layer.embeddings.numpy(), dtype=np.float64)
        _check_rank(layer.name, rank, min(table.shape))
        factors = factor_embedding(layer.name, table, int(rank), stats, method)
        new = cls(
            layer.input_dim, layer.output_dim, rank,
            embeddings_regularizer=layer.embeddings_regularizer,
            name=layer.name, dtype=layer.dtype_policy,
        )
        new.build()
        new.set_weights([f.astype(np.float32) for f in factors])
        return new
