"""Feature-interaction layers used by the model zoo.

Each layer takes the field matrix ``(batch, fields, dim)`` built from the
per-field embeddings (or, for the cross layer, a flat vector) and is made of
ops that LiteRT, SavedModel and ONNX all support natively.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from tfafm.errors import UserError
from tfafm.layers.lookup import gather_rows

_PACKAGE = "tfafm"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClipToVocabulary(keras.layers.Layer):
    """Guards the ids of every sparse field at once: out-of-range ids become 0.

    Takes a list of ``(batch, 1)`` id tensors, one per field, and returns a
    list of ``(batch,)`` int32 tensors in which any id outside
    ``[0, vocabulary_sizes[i])`` (negative, too large, unseen) is replaced by
    the out-of-vocabulary id 0. Keras, SavedModel, LiteRT and ONNX therefore
    agree, and no lookup reads outside its table. All fields are checked in one
    vectorised comparison (a handful of ops instead of several per field, which
    matters for batch-1 latency on phones).

    Args:
        vocabulary_sizes: per field, the ids let through.
        pruned_from: per field, the vocabulary the ids come from, where compression
            pruned the rows of its rare ids (:mod:`tfafm.compression.rare_ids`): ids in
            ``[vocabulary_sizes[i], pruned_from[i])`` are valid and read row 0 by design.
            What a schema's ``vocabulary_size`` is checked against. None: the same as
            ``vocabulary_sizes``.
        stacked: return one ``(batch, fields)`` int32 tensor instead of the list of
            per-field ones (what :class:`~tfafm.layers.lookup.MergedEmbedding` reads,
            without a split and a re-stack).
    """

    def __init__(self, vocabulary_sizes: Sequence[int], pruned_from: Sequence[int] | None = None,
                 stacked: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.stacked = bool(stacked)
        sizes = [int(v) for v in vocabulary_sizes]
        if not sizes or min(sizes) < 1:
            raise UserError(f"vocabulary_sizes must be positive integers, got {vocabulary_sizes}.")
        self.vocabulary_sizes = sizes
        self.pruned_from = None if pruned_from is None else [int(v) for v in pruned_from]
        if self.pruned_from is not None and (len(self.pruned_from) != len(sizes)
                                             or any(p < v for p, v in zip(self.pruned_from, sizes))):
            raise UserError(f"pruned_from must be as many sizes as vocabulary_sizes, none smaller, got "
                            f"{pruned_from} for {sizes}.")

    @property
    def source_sizes(self) -> list[int]:
        """Per field, the vocabulary its ids come from (``pruned_from``, else ``vocabulary_sizes``)."""
        return self.pruned_from if self.pruned_from is not None else self.vocabulary_sizes

    def call(self, ids):
        columns = [x if len(x.shape) == 2 else ops.reshape(x, (-1, 1)) for x in ids]
        stacked = ops.concatenate([ops.cast(x, "int32") for x in columns], axis=-1)
        sizes = ops.convert_to_tensor(self.vocabulary_sizes, dtype="int32")
        # Too large -> 0, then negative -> 0: three ops (a comparison, a select against a scalar, a maximum).
        guarded = ops.maximum(ops.where(ops.less(stacked, sizes), stacked, 0), 0)
        return guarded if self.stacked else ops.unstack(guarded, num=len(self.vocabulary_sizes), axis=1)

    def compute_output_spec(self, ids):
        if self.stacked:
            return keras.KerasTensor((ids[0].shape[0], len(self.vocabulary_sizes)), dtype="int32")
        return [keras.KerasTensor((x.shape[0],), dtype="int32") for x in ids]

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "vocabulary_sizes": self.vocabulary_sizes}
        if self.pruned_from is not None:
            config["pruned_from"] = self.pruned_from
        return {**config, "stacked": True} if self.stacked else config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LinearTerms(keras.layers.Layer):
    """The first-order term ``sum_f w_f[id_f]`` of all sparse fields, from one table.

    Per-field scalar weights live in a single ``(sum(vocabulary_sizes), 1)``
    table addressed with per-field offsets: one gather for all fields.
    Input: the list of ``(batch,)`` guarded ids; output ``(batch, 1)``.
    """

    def __init__(self, vocabulary_sizes: Sequence[int], **kwargs: Any):
        super().__init__(**kwargs)
        self.vocabulary_sizes = [int(v) for v in vocabulary_sizes]
        self.offsets = [0]
        for size in self.vocabulary_sizes[:-1]:
            self.offsets.append(self.offsets[-1] + size)

    def build(self, input_shape=None):
        self.weights_table = self.add_weight(
            name="weights", shape=(sum(self.vocabulary_sizes), 1), initializer="zeros"
        )

    def call(self, ids):
        stacked = ops.stack([ops.cast(x, "int32") for x in ids], axis=1)
        rows = stacked + ops.convert_to_tensor(self.offsets, dtype="int32")
        return ops.sum(gather_rows(self.weights_table, rows), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocabulary_sizes": self.vocabulary_sizes}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StackFields(keras.layers.Layer):
    """Stacks per-field ``(batch, dim)`` vectors into the field matrix ``(batch, fields, dim)``."""

    def call(self, vectors):
        return ops.stack(vectors, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], len(input_shape), input_shape[0][-1])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FactorizationMachine(keras.layers.Layer):
    """Second-order FM interaction ``0.5 * ((sum_f v_f)^2 - sum_f v_f^2)``.

    Input ``(batch, fields, dim)``. With ``reduce_sum=True`` (FM) the output is
    the scalar interaction ``(batch, 1)``; otherwise (NFM's bi-interaction
    pooling) the ``(batch, dim)`` vector.
    """

    def __init__(self, reduce_sum: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.reduce_sum = bool(reduce_sum)

    def call(self, fields):
        square_of_sum = ops.square(ops.sum(fields, axis=1))
        sum_of_square = ops.sum(ops.square(fields), axis=1)
        pooled = 0.5 * (square_of_sum - sum_of_square)
        return ops.sum(pooled, axis=-1, keepdims=True) if self.reduce_sum else pooled

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1 if self.reduce_sum else input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "reduce_sum": self.reduce_sum}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CodeFactorizationMachine(keras.layers.Layer):
    """The FM interaction of fields given as codes: field ``f`` is ``v_f = c_f P_f + b_f``.

    Input: the fields' codes concatenated, ``C`` of shape ``(batch, K)`` with
    ``K = sum k_f``. Output ``(batch, 1)``: ``0.5 * (|sum_f v_f|^2 - sum_f
    |v_f|^2)``, computed without ever forming the ``d``-wide field vectors.
    Write ``b_f = h_f P_f + r_f`` (``r_f`` orthogonal to the rows of ``P_f``)
    and ``P_f P_f^T = R_f R_f^T`` (``R_f`` is ``k_f x k_f``); then

        sum_f v_f      = C P + sum_f b_f                  (P: the P_f stacked, K x d)
        sum_f |v_f|^2  = |(C + h) R|^2 + sum_f |r_f|^2     (R = blockdiag(R_f), K x K)

    so ONE matmul gives both, ``x = C [P | R] + [sum_f b_f | h R]``, and the
    output is half the sum of squares of the first ``d`` columns of ``x``
    minus those of the last ``K`` minus ``constant = sum_f |r_f|^2``: a
    matmul, a square, a product by the signs and a sum. :func:`tfafm.fuse`
    builds it for an FM fed by low-rank embeddings.

    A field given as it is (``v_f = c_f``, a table left whole) needs no root:
    its columns of ``C`` are listed in ``raw_columns``, ``R`` covers the other
    ``K - len(raw_columns)`` code columns only, and the squares of the raw
    columns are taken off directly: ``C`` joins ``x`` (one concatenation), and
    the one square and the one product by fixed signs take them off too (a
    gather of the columns would cost a batch of rows dearly), so the kernel
    stores no ``(K, K)`` block for them.

    Columns of ``C`` that belong to no field (read beside the codes to save a
    slice) have zero rows in the kernel and are neither raw nor rooted: give
    the root's width as ``root_width`` then.

    Args:
        dim: the field width ``d``.
        raw_columns: indices of the columns of ``C`` that are fields as they are.
        root_width: the width of ``R`` (default: ``K - len(raw_columns)``).

    Weights: ``kernel`` ``(K, d + root_width)``, ``bias`` of its width,
    ``constant`` ``(1,)``.
    """

    def __init__(self, dim: int, raw_columns: Sequence[int] = (), root_width: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.raw_columns = [int(c) for c in raw_columns]
        self.root_width = None if root_width is None else int(root_width)

    def build(self, input_shape):
        root = input_shape[-1] - len(self.raw_columns) if self.root_width is None else self.root_width
        width = self.dim + root
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], width))
        self.bias = self.add_weight(name="bias", shape=(width,), initializer="zeros")
        self.constant = self.add_weight(name="constant", shape=(1,), initializer="zeros")

    def call(self, codes):
        x = ops.matmul(codes, self.kernel) + self.bias
        halves = [0.5] * self.dim + [-0.5] * (self.kernel.shape[1] - self.dim)
        if self.raw_columns:  # the codes' squares beside x's: one square and one sum for both
            raw = np.zeros(codes.shape[-1])
            raw[self.raw_columns] = -0.5
            x = ops.concatenate([x, ops.cast(codes, x.dtype)], axis=-1)
            halves += raw.tolist()
        # A product and a sum, not a matmul by one column (see tfafm.layers.DotProductDense).
        signs = ops.convert_to_tensor(halves, dtype=self.compute_dtype)
        return ops.sum(ops.square(x) * signs, axis=-1, keepdims=True) - 0.5 * self.constant

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "dim": self.dim, "raw_columns": self.raw_columns}
        return config if self.root_width is None else {**config, "root_width": self.root_width}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CodeProjections(keras.layers.Layer):
    """Fields ``v_f = c_f P_f + b_f`` of ``fields`` fields from their concatenated codes, at once.

    Input ``(batch, K)``: the fields' codes side by side (field ``f`` is
    ``k_f`` wide). The codes are gathered into ``(batch, fields, max k_f)``
    (``code_index`` lists, per field, its columns, padded with column 0 whose
    projection rows are zero) and multiplied by the stacked, zero-padded
    projections ``(fields, max k_f, d)`` in one batched matmul. Output
    ``(batch, fields, d)``. Unlike one dense block-diagonal matrix it stores no
    zeros beyond the padding. :func:`tfafm.fuse` builds it.

    Args:
        code_index: ``fields * max k_f`` column indices into the codes.
        fields: number of fields.
        dim: field width ``d``.
    """

    def __init__(self, code_index: Sequence[int], fields: int, dim: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.code_index = [int(i) for i in code_index]
        self.fields = int(fields)
        self.dim = int(dim)
        if len(self.code_index) % self.fields:
            raise UserError(f"Layer {self.name!r}: code_index length {len(self.code_index)} is not a multiple "
                            f"of fields={self.fields}.")

    def build(self, input_shape=None):
        width = len(self.code_index) // self.fields
        self.projections = self.add_weight(name="projections", shape=(self.fields, width, self.dim))
        self.bias = self.add_weight(name="bias", shape=(self.fields, self.dim), initializer="zeros")

    def call(self, codes):
        width = len(self.code_index) // self.fields
        gathered = ops.take(codes, ops.convert_to_tensor(self.code_index, "int32"), axis=1)
        per_field = ops.reshape(gathered, (-1, self.fields, width))
        return ops.einsum("bfk,fkd->bfd", per_field, self.projections) + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.fields, self.dim)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "code_index": self.code_index, "fields": self.fields, "dim": self.dim}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CrossLayerV1(keras.layers.Layer):
    """One layer of the DCN (v1) cross network: ``x0 * (x . w) + b + x``."""

    def build(self, x0_shape, x_shape=None):
        dim = x0_shape[-1]
        self.kernel = self.add_weight(name="kernel", shape=(dim, 1), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(dim,), initializer="zeros")

    def call(self, x0, x):
        # x . w as a product and a sum, not a matmul by one column (see tfafm.layers.DotProductDense).
        return x0 * ops.sum(x * ops.reshape(self.kernel, (-1,)), axis=-1, keepdims=True) + self.bias + x

    def compute_output_shape(self, x0_shape, x_shape=None):
        return x0_shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CompressedInteraction(keras.layers.Layer):
    """xDeepFM's Compressed Interaction Network (CIN).

    For each layer ``k``: ``Z = X_k (outer, per embedding dim) X_0``, then
    ``X_{k+1} = act(Z W_k)``; the output is the concatenation of every
    ``X_k`` summed over the embedding dimension, ``(batch, sum(layer_sizes))``.

    Compression: the layer implements :class:`~tfafm.layers.CompressibleLayer`
    (its matrices are ``kernel_0``, ``kernel_1``, ...). A layer ``k`` with
    ``ranks[k]`` set computes ``act((Z D_k + d_k) U_k + u_k)`` instead, with
    ``D_k`` of shape ``(h_k * fields, rank)`` and ``U_k`` ``(rank, size)``,
    without ever forming ``Z`` (``h_k * fields`` values per row and embedding
    dim): ``Z D_k = sum_j x0_j (X_k D_kj)``, one matmul of ``X_k`` by ``D_k``
    seen as ``(h_k, fields * rank)``, a product by ``X_0`` and a sum over the
    fields (xDeepFM compressed at ``target_ratio=4``, dynamic-int8 LiteRT:
    3.6x faster for 256 rows than with ``Z`` formed).

    Args:
        layer_sizes: feature maps per CIN layer.
        activation: activation of every layer.
        ranks: per layer, None (full kernel) or the rank of its factors.
    """

    def __init__(self, layer_sizes: Sequence[int] = (128, 128), activation: str = "relu",
                 ranks: Sequence[int | None] | None = None, **kwargs):
        super().__init__(**kwargs)
        if not layer_sizes or any(int(s) < 1 for s in layer_sizes):
            raise UserError(f"layer_sizes must be positive integers, got {layer_sizes}.")
        self.layer_sizes = [int(s) for s in layer_sizes]
        self.activation = keras.activations.get(activation)
        ranks = [None] * len(self.layer_sizes) if ranks is None else list(ranks)
        if len(ranks) != len(self.layer_sizes) or any(r is not None and int(r) < 1 for r in ranks):
            raise UserError(f"Layer {self.name!r}: ranks must give None or a positive rank per CIN layer "
                            f"({len(self.layer_sizes)}), got {ranks}.")
        self.ranks = [None if r is None else int(r) for r in ranks]

    def build(self, input_shape):
        fields = input_shape[1]
        self.num_fields = fields
        previous = fields
        self.kernels = []
        for i, (size, rank) in enumerate(zip(self.layer_sizes, self.ranks)):
            rows = previous * fields
            if rank is None:
                self.kernels.append(self.add_weight(name=f"kernel_{i}", shape=(rows, size),
                                                    initializer="glorot_uniform"))
            else:
                self.kernels.append((
                    self.add_weight(name=f"down_kernel_{i}", shape=(rows, rank), initializer="glorot_uniform"),
                    self.add_weight(name=f"down_bias_{i}", shape=(rank,), initializer="zeros"),
                    self.add_weight(name=f"up_kernel_{i}", shape=(rank, size), initializer="glorot_uniform"),
                    self.add_weight(name=f"up_bias_{i}", shape=(size,), initializer="zeros"),
                ))
            previous = size

    @staticmethod
    def _factored_product(xk_rows, x0_rows, kernel):
        """``(outer(xk, x0) D + d) U + u`` per row without the ``hk * fields``-wide outer product:
        ``sum_ij xk_i x0_j D[(i, j)] = sum_j x0_j (xk D_j)``, one matmul of ``xk`` by ``D`` seen as
        ``(hk, fields * rank)``, then a product by ``x0`` and a sum over the fields."""
        down, down_bias, up, up_bias = kernel
        hk, fields, rank = xk_rows.shape[-1], x0_rows.shape[-1], down.shape[-1]
        spread = ops.reshape(ops.matmul(xk_rows, ops.reshape(down, (hk, fields * rank))), (-1, fields, rank))
        code = ops.sum(spread * ops.expand_dims(x0_rows, -1), axis=1) + down_bias
        return ops.matmul(code, up) + up_bias

    def _forward(self, fields):
        num_fields, dim = fields.shape[1], fields.shape[2]
        x0 = ops.transpose(fields, (0, 2, 1))  # (batch, dim, fields)
        xk = x0
        pooled, products = [], []
        for kernel in self.kernels:
            hk = xk.shape[-1]
            # One row per (sample, embedding dim): the products are plain matrix products.
            if isinstance(kernel, tuple):
                product = self._factored_product(ops.reshape(xk, (-1, hk)), ops.reshape(x0, (-1, num_fields)),
                                                 kernel)
            else:
                outer = ops.expand_dims(xk, -1) * ops.expand_dims(x0, -2)  # (batch, dim, hk, fields)
                product = ops.matmul(ops.reshape(outer, (-1, hk * num_fields)), kernel)  # (batch * dim, size)
            products.append(product)
            xk = ops.reshape(self.activation(product), (-1, dim, product.shape[-1]))
            pooled.append(ops.sum(xk, axis=1))
        return ops.concatenate(pooled, axis=-1), products

    def call(self, fields):
        return self._forward(fields)[0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], sum(self.layer_sizes))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "layer_sizes": self.layer_sizes,
            "activation": keras.activations.serialize(self.activation),
            "ranks": self.ranks,
        }

    # ------------------------------------------------------- compression protocol

    def tfafm_matrices(self) -> dict:
        """The full (not yet factored) CIN kernels, ``kernel_i``: ``(h_i * fields, size_i)``."""
        from tfafm.layers.protocol import Matrix

        return {f"kernel_{i}": Matrix(kernel.numpy()) for i, kernel in enumerate(self.kernels)
                if not isinstance(kernel, tuple)}

    def tfafm_call(self, fields):
        outputs, products = self._forward(fields)
        return outputs, {f"kernel_{i}": p for i, p in enumerate(products) if not isinstance(self.kernels[i], tuple)}

    def tfafm_factored(self, factors: dict):
        """A built copy whose layers named in ``factors`` use them (the others keep their weights)."""
        ranks = [factors[f"kernel_{i}"].rank if f"kernel_{i}" in factors else rank
                 for i, rank in enumerate(self.ranks)]
        new = CompressedInteraction(self.layer_sizes, self.activation, ranks, name=self.name,
                                    dtype=self.dtype_policy)
        new.build((None, self.num_fields, None))
        for i, (old, fresh) in enumerate(zip(self.kernels, new.kernels)):
            if f"kernel_{i}" in factors:
                f = factors[f"kernel_{i}"]
                for variable, value in zip(fresh, (f.down, f.down_bias, f.up, f.up_bias)):
                    variable.assign(value)
            else:
                for variable, value in zip(keras.tree.flatten(fresh), keras.tree.flatten(old)):
                    variable.assign(value)
        return new


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiHeadSelfAttention(keras.layers.Layer):
    """Scaled dot-product attention over fields, given projected Q, K and V.

    The projections are plain ``Dense`` layers outside this layer (so they can
    be compressed); this layer splits heads, attends and merges them back.
    Inputs ``(batch, fields, heads * head_dim)`` each.
    """

    def __init__(self, num_heads: int = 2, **kwargs: Any):
        super().__init__(**kwargs)
        if int(num_heads) < 1:
            raise UserError(f"num_heads must be >= 1, got {num_heads}.")
        self.num_heads = int(num_heads)

    def _split(self, x):
        fields, width = x.shape[1], x.shape[2]
        x = ops.reshape(x, (-1, fields, self.num_heads, width // self.num_heads))
        return ops.transpose(x, (0, 2, 1, 3))

    def call(self, query, key, value):
        width = query.shape[-1]
        if width % self.num_heads:
            raise UserError(f"Attention width {width} is not divisible by num_heads={self.num_heads}.")
        q, k, v = self._split(query), self._split(key), self._split(value)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / float(width // self.num_heads) ** 0.5
        attended = ops.matmul(ops.softmax(scores, axis=-1), v)
        attended = ops.transpose(attended, (0, 2, 1, 3))
        return ops.reshape(attended, (-1, query.shape[1], width))

    def compute_output_shape(self, query_shape, key_shape=None, value_shape=None):
        return query_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_heads": self.num_heads}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PairwiseProduct(keras.layers.Layer):
    """FiBiNET's bilinear pairs: ``p_ij = left_i * right_j`` for all fields i < j.

    ``left`` is the field matrix already multiplied by the bilinear weight (a
    ``Dense`` layer outside), ``right`` the field matrix; output
    ``(batch, fields * (fields - 1) / 2, dim)``.
    """

    def call(self, left, right):
        fields = left.shape[1]
        rows = [i for i in range(fields) for _ in range(i + 1, fields)]
        cols = [j for i in range(fields) for j in range(i + 1, fields)]
        return ops.take(left, rows, axis=1) * ops.take(right, cols, axis=1)

    def compute_output_shape(self, left_shape, right_shape=None):
        fields = left_shape[1]
        return (left_shape[0], fields * (fields - 1) // 2, left_shape[2])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FieldReweight(keras.layers.Layer):
    """Scales each field's embedding by a per-field weight (FiBiNET's SENET).

    Inputs: field matrix ``(batch, fields, dim)`` and weights ``(batch, fields)``.
    """

    def call(self, fields, weights):
        return fields * ops.expand_dims(weights, -1)

    def compute_output_shape(self, fields_shape, weights_shape=None):
        return fields_shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FieldMean(keras.layers.Layer):
    """Mean over the embedding dimension: ``(batch, fields, dim) -> (batch, fields)``."""

    def call(self, fields):
        return ops.mean(fields, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[:2]
