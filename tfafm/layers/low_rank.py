"""Low-rank replacements of ``Dense``, ``Embedding`` and ``EinsumDense`` layers.

Each stores two thin factors instead of one wide matrix. They are built from a
trained layer with :meth:`LowRankDense.from_dense`,
:meth:`LowRankEmbedding.from_embedding` or
:meth:`LowRankEinsumDense.from_einsum_dense`, either from output-feature
statistics (Atomic Feature Mimicking, ``method="afm"``) or from a truncated
SVD of the weights (``method="svd"``), or from ready
:class:`~tfafm.linalg.Factors` with ``from_factors``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
from keras import ops

from tfafm.errors import UserError
from tfafm.layers.lookup import gather_rows
from tfafm.linalg.factorize import Factors, factor
from tfafm.linalg.statistics import LayerStatistics

_PACKAGE = "tfafm"


def _check_rank(layer_name: str, rank: int, limit: int) -> int:
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 1 <= rank <= limit:
        raise UserError(f"Layer {layer_name!r}: rank must be an integer in [1, {limit}], got {rank!r}.")
    return int(rank)


def _assign(layer: keras.layers.Layer, values: dict[str, np.ndarray]) -> None:
    """Assigns float arrays to the layer's own weights by their short names."""
    weights = {w.path.split("/")[-1]: w for w in layer.weights}
    for name, value in values.items():
        weights[name].assign(np.asarray(value, dtype=weights[name].dtype))


def _base_kwargs(layer: keras.layers.Layer) -> dict[str, Any]:
    """Name, dtype policy, whether it trains and activity regulariser carried over from a replaced layer."""
    return {
        "name": layer.name,
        "dtype": layer.dtype_policy,
        "trainable": layer.trainable,
        "activity_regularizer": keras.regularizers.get(getattr(layer, "activity_regularizer", None)),
    }


class _TwoFactors(keras.layers.Layer):
    """Shared options, weights and config of a layer computing ``(x D + b_D) U + b_U``.

    Subclasses give the factors' shapes (``build``) and the products (``call``).
    """

    def __init__(
        self,
        rank: int,
        activation=None,
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.rank = rank
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.supports_masking = True

    def _add_factors(self, down_shape: tuple, up_shape: tuple, up_bias_shape: tuple) -> None:
        self.down_kernel = self.add_weight(
            name="down_kernel", shape=down_shape,
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
        )
        self.up_kernel = self.add_weight(
            name="up_kernel", shape=up_shape,
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
        )
        if self.use_bias:
            self.down_bias = self.add_weight(
                name="down_bias", shape=(self.rank,),
                initializer=self.bias_initializer, regularizer=self.bias_regularizer,
            )
            self.up_bias = self.add_weight(
                name="up_bias", shape=up_bias_shape,
                initializer=self.bias_initializer, regularizer=self.bias_regularizer,
            )

    def _assign_factors(self, factors: Factors) -> None:
        _assign(self, {
            "down_kernel": factors.down.reshape(self.down_kernel.shape),
            "up_kernel": factors.up.reshape(self.up_kernel.shape),
            "down_bias": factors.down_bias,
            "up_bias": factors.up_bias.reshape(self.up_bias.shape),
        })

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "rank": self.rank,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LowRankDense(_TwoFactors):
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

    Example:

    >>> import numpy as np, tfafm
    >>> layer = tfafm.LowRankDense(3, rank=2, kernel_initializer="ones", bias_initializer="ones")
    >>> layer(np.array([[1.0, 2.0]]))  # down: 1 + 2 + 1 = 4 per code; up: 4 + 4 + 1 = 9
    <tf.Tensor: shape=(1, 3), dtype=float32, numpy=array([[9., 9., 9.]], dtype=float32)>
    """

    def __init__(self, units: int, rank: int, activation=None, inner_activation=None, **kwargs: Any):
        super().__init__(rank, activation, **kwargs)
        self.units = int(units)
        self.rank = _check_rank(self.name, rank, self.units)
        self.inner_activation = (
            None if inner_activation is None else keras.activations.get(inner_activation)
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        _check_rank(self.name, self.rank, min(input_dim, self.units))
        self._add_factors((input_dim, self.rank), (self.rank, self.units), (self.units,))
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def _down(self, inputs):
        """``inputs @ down_kernel`` (what a subclass may compute differently)."""
        return ops.matmul(inputs, self.down_kernel)

    def factor(self, inputs):
        """The rank-``rank`` code ``inner_activation(x @ down + b_down)``."""
        z = self._down(inputs)
        if self.use_bias:
            z = ops.add(z, self.down_bias)
        return self.inner_activation(z) if self.inner_activation is not None else z

    def call(self, inputs):
        inner = tuple(inputs.shape[1:-1])
        if inner and all(d is not None for d in inner):
            # (batch, ..., d_in): one reshape to rows and one back, so each factor is a plain
            # matrix product with its bias (a single FULLY_CONNECTED op on LiteRT).
            outputs = self.call(ops.reshape(inputs, (-1, inputs.shape[-1])))
            return ops.reshape(outputs, (-1, *inner, self.units))
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
            "inner_activation": keras.activations.serialize(self.inner_activation)
            if self.inner_activation is not None else None,
        }

    @classmethod
    def from_factors(
        cls, layer: keras.layers.Dense, factors: Factors, inner_activation=None
    ) -> "LowRankDense":
        """A built ``LowRankDense`` standing in for ``layer`` with the given factors."""
        new = cls(
            units=layer.units,
            rank=factors.rank,
            activation=layer.activation,
            inner_activation=inner_activation,
            use_bias=True,
            kernel_regularizer=layer.kernel_regularizer,
            bias_regularizer=layer.bias_regularizer,
            **_base_kwargs(layer),
        )
        new.build((None, factors.down.shape[0]))
        new._assign_factors(factors)
        return new

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
            raise UserError(f"from_dense needs a built keras.layers.Dense, got {layer!r}.")
        if layer.quantization_mode is not None:
            raise UserError(f"Layer {layer.name!r} is quantized ({layer.quantization_mode}): factor the "
                            "float layer before quantizing it.")
        kernel = layer.kernel.numpy()
        bias = layer.bias.numpy() if layer.use_bias else None
        _check_rank(layer.name, rank, min(kernel.shape))
        return cls.from_factors(layer, factor(layer.name, kernel, bias, int(rank), stats, method),
                                inner_activation)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LowRankEmbedding(keras.layers.Layer):
    """``table[ids] @ projection + bias``: a ``(V, rank)`` table standing in for ``(V, d)``.

    Ids follow ``keras.layers.Embedding``: a negative id ``i`` reads row
    ``V + i`` and an id ``>= V`` is an error on CPU; with ``ids_in_range=True``
    (ids already guarded, e.g. by :class:`~tfafm.models.layers.ClipToVocabulary`) the
    lookup is a plain gather without the wrap-around ops.

    Args:
        input_dim: vocabulary size ``V``.
        output_dim: embedding width ``d`` the rest of the model sees.
        rank: width ``k`` of the stored rows.
        embeddings_initializer, embeddings_regularizer: for the table.
        mask_zero: as in ``Embedding``: id 0 is padding and masked downstream.
        ids_in_range: skip the negative-id wrap-around (see above).

    Example:

    >>> import numpy as np, tfafm
    >>> layer = tfafm.LowRankEmbedding(1000, 16, rank=4)
    >>> layer(np.array([[3, 7]])).shape
    TensorShape([1, 2, 16])
    >>> layer.count_params()  # a (1000, 4) table, a (4, 16) projection and its bias; Embedding: 16,000
    4080
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        rank: int,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        mask_zero: bool = False,
        ids_in_range: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.rank = _check_rank(self.name, rank, min(self.input_dim, self.output_dim))
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.mask_zero = bool(mask_zero)
        self.ids_in_range = bool(ids_in_range)
        self.supports_masking = self.mask_zero

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
        if self.ids_in_range:
            return gather_rows(self.embeddings, ids)
        if ops.dtype(ids) not in ("int32", "int64"):
            ids = ops.cast(ids, "int32")
        return ops.take(self.embeddings, ids, axis=0)

    def call(self, ids):
        vectors = ops.add(ops.matmul(self.lookup(ids), self.projection), self.bias)
        return ops.cast(vectors, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        return ops.not_equal(inputs, 0) if self.mask_zero else None

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
            "mask_zero": self.mask_zero,
            "ids_in_range": self.ids_in_range,
        }

    @classmethod
    def from_factors(
        cls, layer: keras.layers.Embedding, factors: Factors, ids_in_range: bool = False
    ) -> "LowRankEmbedding":
        """A built ``LowRankEmbedding`` standing in for ``layer`` (``factors.down`` is the table)."""
        new = cls(
            layer.input_dim, layer.output_dim, factors.rank, embeddings_initializer="zeros",
            embeddings_regularizer=layer.embeddings_regularizer, mask_zero=layer.mask_zero,
            ids_in_range=ids_in_range, **_base_kwargs(layer),
        )  # zeros: a cheap start for a table that is overwritten at once
        new.build()
        _assign(new, {"embeddings": factors.down, "projection": factors.up,
                      "bias": factors.up_bias + factors.down_bias @ factors.up})
        return new

    @classmethod
    def from_embedding(
        cls,
        layer: keras.layers.Embedding,
        rank: int,
        stats: LayerStatistics | None = None,
        method: str = "afm",
    ) -> "LowRankEmbedding":
        """Factors a built ``Embedding``: ``E ~ (E - mu) U_k U_k^T + mu`` (AFM) or a centred truncated SVD.

        A :class:`~tfafm.layers.lookup.InRangeEmbedding` keeps its plain-gather lookup
        (``ids_in_range=True``); any other ``Embedding`` keeps Keras' id semantics.
        """
        from tfafm.layers.lookup import InRangeEmbedding

        if not isinstance(layer, keras.layers.Embedding) or not layer.built:
            raise UserError(f"from_embedding needs a built keras.layers.Embedding, got {layer!r}.")
        table = layer.embeddings.numpy()
        _check_rank(layer.name, rank, min(table.shape))
        factors = factor(layer.name, table, None, int(rank), stats, method, lookups=True)
        return cls.from_factors(layer, factors, ids_in_range=isinstance(layer, InRangeEmbedding))


@dataclasses.dataclass(frozen=True)
class EinsumMatrix:
    """How an ``EinsumDense`` equation ``x,kernel->out`` reads as a matrix product.

    ``contracted`` kernel axes meet the input, ``free`` kernel axes form the
    output's trailing axes (in order); the kernel is then the
    ``(prod(contracted), prod(free))`` matrix of the transposed, reshaped kernel.
    """

    inputs: str
    kernel: str
    output: str
    contracted: str
    free: str
    rank_letter: str

    @classmethod
    def parse(cls, equation: str) -> "EinsumMatrix":
        """Parses ``equation``; raises ``UserError`` when it is not a plain matrix product."""
        try:
            operands, output = equation.replace(" ", "").split("->")
            inputs, kernel = operands.split(",")
        except ValueError:
            raise UserError(f"einsum equation {equation!r} is not of the form 'x,kernel->out'.") from None
        plain_output = output.replace("...", "")
        contracted = "".join(c for c in kernel if c in inputs and c not in plain_output)
        free = "".join(c for c in kernel if c in plain_output and c not in inputs)
        if len(contracted) + len(free) != len(kernel) or not contracted or not free:
            raise UserError(f"einsum equation {equation!r}: every kernel axis must be either contracted "
                            "with the input or an output axis of its own.")
        if not plain_output.endswith(free):
            raise UserError(f"einsum equation {equation!r}: the kernel's output axes {free!r} must be the "
                            "trailing axes of the output, in order.")
        unused = sorted(set("abcdefghijklmnopqrstuvwxyz") - set(equation))
        return cls(inputs, kernel, output, contracted, free, unused[0])

    def sizes(self, kernel_shape) -> dict[str, int]:
        return dict(zip(self.kernel, (int(d) for d in kernel_shape)))

    def matrix_shape(self, kernel_shape) -> tuple[int, int]:
        sizes = self.sizes(kernel_shape)
        return (int(np.prod([sizes[c] for c in self.contracted])), int(np.prod([sizes[c] for c in self.free])))

    def as_matrix(self, kernel: np.ndarray) -> np.ndarray:
        """The kernel as ``(prod(contracted), prod(free))``."""
        order = [self.kernel.index(c) for c in self.contracted + self.free]
        return np.transpose(kernel, order).reshape(self.matrix_shape(kernel.shape))

    @property
    def down_equation(self) -> str:
        kept = "".join(c for c in self.inputs.replace("...", "") if c not in self.contracted)
        prefix = "..." if "..." in self.inputs else ""
        return f"{self.inputs},{self.contracted}{self.rank_letter}->{prefix}{kept}{self.rank_letter}"

    @property
    def up_equation(self) -> str:
        down_out = self.down_equation.split("->")[1]
        return f"{down_out},{self.rank_letter}{self.free}->{self.output}"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LowRankEinsumDense(_TwoFactors):
    """A rank-``rank`` stand-in for ``EinsumDense(equation)`` whose kernel had ``kernel_shape``.

    Computes ``z = einsum(down_equation, x, down) + b_down`` (``z`` ends in a
    ``rank``-wide axis) and ``y = activation(einsum(up_equation, z, up) + b_up)``,
    with ``b_up`` over the kernel's output axes. See :class:`EinsumMatrix`.

    Args:
        equation: the replaced layer's einsum equation.
        kernel_shape: the replaced layer's kernel shape.
        rank: width of the inner factor.
        activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer: as in ``EinsumDense``.
    """

    def __init__(self, equation: str, kernel_shape, rank: int, activation=None, **kwargs: Any):
        super().__init__(rank, activation, **kwargs)
        self.equation = equation
        self.kernel_shape = [int(d) for d in kernel_shape]
        self.layout = EinsumMatrix.parse(equation)
        self.rank = _check_rank(self.name, rank, min(self.layout.matrix_shape(self.kernel_shape)))

    def build(self, input_shape=None):
        sizes = self.layout.sizes(self.kernel_shape)
        contracted = tuple(sizes[c] for c in self.layout.contracted)
        free = tuple(sizes[c] for c in self.layout.free)
        self._add_factors((*contracted, self.rank), (self.rank, *free), free)

    def call(self, inputs):
        z = ops.einsum(self.layout.down_equation, inputs, self.down_kernel)
        if self.use_bias:
            z = ops.add(z, self.down_bias)
        y = ops.einsum(self.layout.up_equation, z, self.up_kernel)
        if self.use_bias:
            y = ops.add(y, self.up_bias)
        return self.activation(y) if self.activation is not None else y

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "equation": self.equation, "kernel_shape": self.kernel_shape}

    @classmethod
    def from_factors(cls, layer: keras.layers.EinsumDense, factors: Factors) -> "LowRankEinsumDense":
        """A built ``LowRankEinsumDense`` standing in for ``layer`` with the given matrix factors."""
        new = cls(
            layer.equation, tuple(layer.kernel.shape), factors.rank, activation=layer.activation,
            use_bias=True, kernel_regularizer=layer.kernel_regularizer,
            bias_regularizer=layer.bias_regularizer, **_base_kwargs(layer),
        )
        new.build()
        new._assign_factors(factors)
        return new
