"""Which weight matrices of a model compression can factor, and how, layer type by layer type.

An :class:`Adapter` knows one kind of layer: the matrices it holds (as
``y = x @ W + b``), how to run it while recording each product's output
features (for calibration), and how to build its low-rank replacement from
:class:`~tfafm.linalg.Factors`. Built in: ``Dense``, ``Embedding``,
``EinsumDense``, ``MultiHeadAttention`` (its four projections) and keras_rs
``FeatureCross``; any layer implementing :class:`~tfafm.layers.CompressibleLayer`
(such as the zoo's CIN) is handled through that protocol.

:func:`find_targets` lists a model's :class:`Target` matrices and the layers
it leaves alone with the reason (:class:`~tfafm.compression.report.SkippedLayer`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import keras_rs
import numpy as np
from keras import ops

from tfafm.graph import walk
from tfafm.compression.report import SkippedLayer
from tfafm.layers.attention import PROJECTIONS, LowRankMultiHeadAttention
from tfafm.layers.lookup import InRangeEmbedding
from tfafm.layers.low_rank import EinsumMatrix, LowRankDense, LowRankEinsumDense, LowRankEmbedding
from tfafm.layers.protocol import CompressibleLayer
from tfafm.errors import UserError
from tfafm.linalg.factorize import Factors

_LOW_RANK = (LowRankDense, LowRankEmbedding, LowRankEinsumDense)


@dataclasses.dataclass(frozen=True)
class Target:
    """One matrix compression can factor.

    Attributes:
        name: unique name, the layer's qualified name plus ``/matrix`` for
            layers holding several matrices (``mha/query``).
        layer_name: the layer's qualified name (``tower/dense``).
        layer: the layer object.
        matrix: the matrix key within the layer (``kernel``, ``query``, ...).
        kind: ``embedding``, ``dense``, ``einsum``, ``attention``, ``cross`` or ``custom``.
        input_dim, output_dim: the matrix is ``(input_dim, output_dim)``.
        bias: the original product has a bias.
        lookups: an embedding table (rows gathered, not multiplied).
        rank_bias: the factored form has a bias on its ``rank``-wide code.
    """

    name: str
    layer_name: str
    layer: Any = dataclasses.field(compare=False, repr=False)
    matrix: str
    kind: str
    input_dim: int
    output_dim: int
    bias: bool = True
    lookups: bool = False
    rank_bias: bool = True

    def params(self, rank: int | None = None) -> int:
        """Parameters at full size (``rank=None``) or factored at ``rank``."""
        n, d = self.input_dim, self.output_dim
        if rank is None:
            return n * d + (d if self.bias else 0)
        return rank * (n + d) + (rank if self.rank_bias else 0) + d

    def max_rank(self) -> int:
        """Largest rank that still saves parameters (0 when none does)."""
        full = self.params()
        rank = min(self.input_dim, self.output_dim)
        while rank >= 1 and self.params(rank) >= full:
            rank -= 1
        return rank


class Adapter:
    """How compression handles one layer type (see the module docstring)."""

    kind = "dense"
    # The methods whose code the adapter's ``tap`` and factored layer reproduce, with the implementations
    # known to compute that: a subclass with its own (a scaled output, hashed ids) computes something else.
    computes: dict[str, tuple] = {}

    def handles(self, layer) -> bool:
        raise NotImplementedError

    def own_code_reason(self, layer) -> str | None:
        """Why ``layer``'s class computes something this adapter does not know (a method of its own), or None."""
        for method, known in self.computes.items():
            if getattr(type(layer), method, None) not in known:
                return (f"its class {type(layer).__name__} has its own {method}(), which a factored layer would "
                        "not run (implement tfafm.CompressibleLayer to compress it)")
        return None

    def skip_reason(self, layer) -> str | None:
        """Why the whole layer cannot be factored correctly, or None."""
        if getattr(layer, "quantization_mode", None):
            return f"quantized ({layer.quantization_mode}): factor the float model before quantizing"
        if getattr(layer, "lora_enabled", False):
            return "LoRA is enabled on it"
        for attribute in ("kernel_constraint", "bias_constraint", "embeddings_constraint"):
            if getattr(layer, attribute, None) is not None:
                return f"it has a {attribute.replace('_', ' ')}, which a factorisation would not keep"
        return None

    def matrices(self, layer) -> dict[str, dict]:
        """``{key: Target fields}`` (``input_dim``, ``output_dim``, ``bias``, ...) of each matrix."""
        raise NotImplementedError

    def weights(self, layer, key: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The matrix ``key`` as ``(kernel (d_in, d_out), bias or None)`` numpy arrays."""
        raise NotImplementedError

    def tap(self, layer, *args, **kwargs) -> tuple[Any, dict[str, Any]]:
        """Runs ``layer`` on real tensors: ``(outputs, {key: features or (features, row_weights)})``."""
        raise NotImplementedError

    def factored(self, layer, factors: dict[str, Factors], inner_activation=None):
        """A new, built layer computing ``layer``'s function with ``factors`` for the chosen matrices."""
        raise NotImplementedError


def _array(variable) -> np.ndarray:
    return np.asarray(variable.numpy())  # not convert_to_numpy: numpy 2 warns on TF's __array__


class DenseAdapter(Adapter):
    kind = "dense"
    computes = {"call": (keras.layers.Dense.call,)}

    def handles(self, layer) -> bool:
        return isinstance(layer, keras.layers.Dense)

    def matrices(self, layer):
        return {"kernel": dict(input_dim=int(layer.kernel.shape[0]), output_dim=layer.units, bias=layer.use_bias)}

    def weights(self, layer, key):
        return _array(layer.kernel), _array(layer.bias) if layer.use_bias else None

    def tap(self, layer, inputs):
        pre = ops.matmul(inputs, layer.kernel)
        if layer.use_bias:
            pre = ops.add(pre, layer.bias)
        outputs = layer.activation(pre) if layer.activation is not None else pre
        return outputs, {"kernel": pre}

    def factored(self, layer, factors, inner_activation=None):
        return LowRankDense.from_factors(layer, factors["kernel"], inner_activation)


class EmbeddingAdapter(Adapter):
    kind = "embedding"
    computes = {"call": (keras.layers.Embedding.call, InRangeEmbedding.call)}

    def handles(self, layer) -> bool:
        return isinstance(layer, keras.layers.Embedding)

    def matrices(self, layer):
        return {"embeddings": dict(input_dim=layer.input_dim, output_dim=layer.output_dim, bias=False,
                                   lookups=True, rank_bias=False)}

    def weights(self, layer, key):
        return _array(layer.embeddings), None

    def tap(self, layer, ids):
        outputs = layer(ids)
        if not layer.mask_zero:
            return outputs, {"embeddings": outputs}
        # Padding positions (id 0) are masked downstream: they do not count.
        return outputs, {"embeddings": (outputs, ops.cast(ops.not_equal(ids, 0), "float32"))}

    def factored(self, layer, factors, inner_activation=None):
        return LowRankEmbedding.from_factors(layer, factors["embeddings"],
                                             ids_in_range=isinstance(layer, InRangeEmbedding))


def _einsum_spec(layer) -> dict:
    layout = EinsumMatrix.parse(layer.equation)
    d_in, d_out = layout.matrix_shape(layer.kernel.shape)
    return dict(input_dim=d_in, output_dim=d_out, bias=layer.bias is not None)


def _einsum_weights(layer) -> tuple[np.ndarray, np.ndarray | None]:
    layout = EinsumMatrix.parse(layer.equation)
    kernel = _array(layer.kernel)
    if layer.bias is None:
        return layout.as_matrix(kernel), None
    free = [layout.sizes(kernel.shape)[c] for c in layout.free]
    return layout.as_matrix(kernel), np.broadcast_to(_array(layer.bias), free).reshape(-1)


def _rows(tensor, width: int):
    return ops.reshape(tensor, (-1, width))


class EinsumDenseAdapter(Adapter):
    kind = "einsum"
    computes = {"call": (keras.layers.EinsumDense.call,)}

    def handles(self, layer) -> bool:
        return isinstance(layer, keras.layers.EinsumDense)

    def skip_reason(self, layer):
        try:
            layout = EinsumMatrix.parse(layer.equation)
        except UserError as error:
            return str(error)
        if layer.bias is not None and not set(layer.bias_axes) <= set(layout.free):
            return (f"its bias spans axes {layer.bias_axes!r}, not only the kernel's output axes {layout.free!r}: "
                    "a factor's bias could not hold it")
        return super().skip_reason(layer)

    def matrices(self, layer):
        return {"kernel": _einsum_spec(layer)}

    def weights(self, layer, key):
        return _einsum_weights(layer)

    def tap(self, layer, inputs):
        pre = ops.einsum(layer.equation, inputs, layer.kernel)
        if layer.bias is not None:
            pre = ops.add(pre, layer.bias)
        outputs = layer.activation(pre) if layer.activation is not None else pre
        return outputs, {"kernel": _rows(pre, _einsum_spec(layer)["output_dim"])}

    def factored(self, layer, factors, inner_activation=None):
        return LowRankEinsumDense.from_factors(layer, factors["kernel"])


class AttentionAdapter(Adapter):
    """``keras.layers.MultiHeadAttention``: its query, key, value and output projections."""

    kind = "attention"

    def own_code_reason(self, layer):
        # Its factored form is a new LowRankMultiHeadAttention: any override (the softmax, the masks, the
        # attention) of a subclass would be dropped.
        if type(layer) in (keras.layers.MultiHeadAttention, LowRankMultiHeadAttention):
            return None
        return (f"its class {type(layer).__name__} subclasses MultiHeadAttention, and a factored layer would not "
                "run its code (implement tfafm.CompressibleLayer to compress it)")

    def handles(self, layer) -> bool:
        return isinstance(layer, keras.layers.MultiHeadAttention)

    def skip_reason(self, layer):
        for name in PROJECTIONS:
            projection = self._projection(layer, name)
            reason = Adapter.skip_reason(self, projection)
            if reason:
                return f"its {name} projection: {reason}"
        return None

    @staticmethod
    def _projection(layer, name):
        if isinstance(layer, LowRankMultiHeadAttention):
            return layer.projection(name)
        return getattr(layer, {"query": "query_dense", "key": "key_dense", "value": "value_dense",
                               "attention_output": "output_dense"}[name])

    def matrices(self, layer):
        return {name: _einsum_spec(self._projection(layer, name)) for name in PROJECTIONS
                if not isinstance(self._projection(layer, name), LowRankEinsumDense)}

    def weights(self, layer, key):
        return _einsum_weights(self._projection(layer, key))

    def tap(self, layer, *args, **kwargs):
        names = ("query", "value", "key")
        given = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
        outputs = layer(*args, **kwargs)
        attended = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        sources = {"query": given["query"], "key": given.get("key", given["value"]), "value": given["value"]}
        features = {}
        for name, spec in self.matrices(layer).items():
            if name == "attention_output":  # the projection has no activation: its output is the layer's
                features[name] = _rows(attended, spec["output_dim"])
            else:
                features[name] = _rows(self._projection(layer, name)(sources[name]), spec["output_dim"])
        return outputs, features

    def factored(self, layer, factors, inner_activation=None):
        config = layer.get_config()
        ranks = {**config.pop("ranks", {}), **{name: f.rank for name, f in factors.items()}}
        new = LowRankMultiHeadAttention(ranks=ranks, **config)
        new.build_from_config(layer.get_build_config())
        for name in PROJECTIONS:
            target = new.projection(name)
            if name in factors:
                f = factors[name]
                for variable, value in zip(
                    (target.down_kernel, target.up_kernel, target.down_bias, target.up_bias),
                    (f.down, f.up, f.down_bias, f.up_bias),
                ):
                    variable.assign(np.reshape(value, variable.shape))
            else:
                target.set_weights(self._projection(layer, name).get_weights())
        fresh = {tuple(w.path.split("/")[-2:]): w for w in new.weights}
        for old in layer.weights:  # other sublayers' weights (the gate projection, if any)
            key = tuple(old.path.split("/")[-2:])
            if key[0] not in PROJECTIONS and key in fresh:
                fresh[key].assign(old)
        return new


class FeatureCrossAdapter(Adapter):
    """keras_rs ``FeatureCross`` without ``projection_dim``: its inner ``d x d`` dense."""

    kind = "cross"
    computes = {"call": (keras_rs.layers.FeatureCross.call,)}

    def handles(self, layer) -> bool:
        return isinstance(layer, keras_rs.layers.FeatureCross)

    def skip_reason(self, layer):
        if layer.projection_dim is not None:
            return f"already low-rank (projection_dim={layer.projection_dim})"
        return super().skip_reason(layer.dense)

    def matrices(self, layer):
        dim = int(layer.dense.kernel.shape[0])
        return {"kernel": dict(input_dim=dim, output_dim=dim, bias=layer.dense.use_bias, rank_bias=False)}

    def weights(self, layer, key):
        dense = layer.dense
        return _array(dense.kernel), _array(dense.bias) if dense.use_bias else None

    def tap(self, layer, x0, x=None):
        # keras_rs 0.4 FeatureCross.call, with the inner product's pre-activation kept.
        x = x0 if x is None else x
        pre = ops.matmul(x, layer.dense.kernel)
        if layer.dense.use_bias:
            pre = ops.add(pre, layer.dense.bias)
        inner = layer.dense.activation(pre) if layer.dense.activation is not None else pre
        inner = ops.cast(inner, layer.compute_dtype)
        if layer.diag_scale:
            inner = ops.add(inner, ops.multiply(layer.diag_scale, x))
        return ops.add(ops.multiply(x0, inner), x), {"kernel": pre}

    def factored(self, layer, factors, inner_activation=None):
        f = factors["kernel"]
        config = layer.get_config()
        config.update(projection_dim=f.rank, use_bias=True)
        new = keras_rs.layers.FeatureCross.from_config(config)
        dim = f.down.shape[0]
        new.build((None, dim))
        new.down_proj_dense.build((None, dim))
        new.dense.build((None, f.rank))
        new.down_proj_dense.kernel.assign(f.down)
        new.dense.kernel.assign(f.up)
        new.dense.bias.assign(f.up_bias + f.down_bias @ f.up)
        return new


class ProtocolAdapter(Adapter):
    """Any layer implementing :class:`~tfafm.layers.CompressibleLayer`."""

    kind = "custom"

    def handles(self, layer) -> bool:
        return isinstance(layer, CompressibleLayer)

    def matrices(self, layer):
        return {key: dict(input_dim=int(m.kernel.shape[0]), output_dim=int(m.kernel.shape[1]),
                          bias=m.bias is not None)
                for key, m in layer.tfafm_matrices().items()}

    def weights(self, layer, key):
        matrix = layer.tfafm_matrices()[key]
        return np.asarray(matrix.kernel), None if matrix.bias is None else np.asarray(matrix.bias)

    def tap(self, layer, *args, **kwargs):
        outputs, features = layer.tfafm_call(*args, **kwargs)
        return outputs, dict(features)

    def factored(self, layer, factors, inner_activation=None):
        return layer.tfafm_factored(dict(factors))


ADAPTERS: tuple[Adapter, ...] = (
    ProtocolAdapter(), DenseAdapter(), EmbeddingAdapter(), EinsumDenseAdapter(), AttentionAdapter(),
    FeatureCrossAdapter(),
)


def adapter_for(layer) -> Adapter | None:
    """The adapter handling ``layer``, or None (low-rank layers are never targets)."""
    if isinstance(layer, _LOW_RANK):
        return None
    return next((a for a in ADAPTERS if a.handles(layer)), None)


def find_targets(model: keras.Model) -> tuple[list[Target], list[SkippedLayer]]:
    """Every matrix of ``model`` that compression can factor with a saving, in model order,
    and every layer with weights that it leaves alone, with the reason."""
    targets, skipped = [], []
    for qualified, layer in walk(model):
        kind = type(layer).__name__
        if not layer.weights:
            continue
        if isinstance(layer, _LOW_RANK):
            skipped.append(SkippedLayer(qualified, kind, "already low-rank"))
            continue
        adapter = adapter_for(layer)
        if adapter is None:
            skipped.append(SkippedLayer(qualified, kind, "no compressible matrix known to tfafm (a custom layer can "
                                                     "implement tfafm.CompressibleLayer)"))
            continue
        if not layer.built:
            skipped.append(SkippedLayer(qualified, kind, "not built"))
            continue
        reason = adapter.own_code_reason(layer) or adapter.skip_reason(layer)
        if reason:
            skipped.append(SkippedLayer(qualified, kind, reason))
            continue
        specs = adapter.matrices(layer)
        for key, spec in specs.items():
            name = qualified if len(specs) == 1 and key in ("kernel", "embeddings") else f"{qualified}/{key}"
            target = Target(name, qualified, layer, key, adapter.kind, **spec)
            if target.max_rank() < 1:
                skipped.append(SkippedLayer(name, kind, f"no rank saves parameters ({target.input_dim}x"
                                                   f"{target.output_dim})"))
            else:
                targets.append(target)
    return targets, skipped
