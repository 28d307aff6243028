"""``fuse()``: fold low-rank embedding projections into the Dense layers they feed.

A :class:`LowRankEmbedding` computes ``table[ids] @ P + mu``. Where that
output reaches a ``Dense`` (or :class:`LowRankDense`) only through
``Flatten`` / ``Reshape`` / ``Concatenate``, the affine map folds into the
Dense's kernel and bias: the fused model gathers ``k``-wide rows and feeds
them straight into a smaller first layer. Every other consumer (FM, cross,
attention, bilinear, ...) still needs the ``d``-wide vectors; for those the
fused model keeps the projection as a plain ``Dense(d)`` layer, computed once
per embedding and shared by all such consumers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from tfafm.compression.graph import Rebuilder, require_functional
from tfafm.layers.lookup import InRangeEmbedding
from tfafm.layers.low_rank import LowRankDense, LowRankEmbedding


@dataclasses.dataclass
class _Segment:
    """A slice of a lazily concatenated vector: a raw tensor or a projected code."""

    tensor: Any
    projection: np.ndarray | None = None  # (k, d)
    bias: np.ndarray | None = None  # (d,)
    source: str | None = None

    @property
    def width(self) -> int:
        return self.tensor.shape[-1] if self.projection is None else self.projection.shape[1]


@dataclasses.dataclass
class _Lazy:
    """A tensor not materialised yet: the concatenation of its segments along the last axis."""

    segments: list[_Segment]

    @property
    def rank(self) -> int:
        return len(self.segments[0].tensor.shape)

    @property
    def width(self) -> int:
        return sum(s.width for s in self.segments)


def _flattenable(value: _Lazy) -> bool:
    return all(all(dim == 1 for dim in s.tensor.shape[1:-1]) for s in value.segments)


def _fold(layer, kernel: np.ndarray, value: _Lazy) -> tuple[np.ndarray, np.ndarray]:
    """Kernel rows and extra bias of ``layer`` seen from the segments' own tensors."""
    rows, extra_bias, offset = [], np.zeros(kernel.shape[1]), 0
    for segment in value.segments:
        block = kernel[offset: offset + segment.width]
        offset += segment.width
        if segment.projection is None:
            rows.append(block)
        else:
            rows.append(segment.projection @ block)
            extra_bias += segment.bias @ block
    return np.concatenate(rows, axis=0), extra_bias


class _Fuser:
    def __init__(self):
        self.projections: dict[str, keras.layers.Dense] = {}
        self.materialized: dict[int, Any] = {}
        self.rebuilder = Rebuilder(self.call)

    def _projection_layer(self, segment: _Segment) -> keras.layers.Dense:
        if segment.source not in self.projections:
            k, d = segment.projection.shape
            layer = keras.layers.Dense(d, name=f"{segment.source}_projection")
            layer.build((None, k))
            layer.set_weights([segment.projection.astype(np.float32), segment.bias.astype(np.float32)])
            self.projections[segment.source] = layer
        return self.projections[segment.source]

    def materialize(self, value):
        if not isinstance(value, _Lazy):
            return value
        parts = []
        for segment in value.segments:
            if segment.projection is None:
                parts.append(segment.tensor)
                continue
            key = id(segment.tensor)
            if key not in self.materialized:
                self.materialized[key] = self._projection_layer(segment)(segment.tensor)
            parts.append(self.materialized[key])
        return parts[0] if len(parts) == 1 else keras.layers.Concatenate()(parts)

    def call(self, layer, args, kwargs, rebuilder: Rebuilder):
        lazy_args = [a for a in keras.tree.flatten((args, kwargs)) if isinstance(a, _Lazy)]
        if isinstance(layer, LowRankEmbedding):
            return self._embed(layer, args, kwargs, rebuilder)
        if lazy_args:
            handler = {
                keras.layers.Flatten: self._flatten,
                keras.layers.Reshape: self._reshape,
                keras.layers.Concatenate: self._concatenate,
                keras.layers.Dense: self._dense,
                LowRankDense: self._dense,
            }.get(type(layer))
            result = handler(layer, args, kwargs, rebuilder) if handler else NotImplemented
            if result is not NotImplemented:
                return result
            args, kwargs = keras.tree.map_structure(self.materialize, (args, kwargs))
            return rebuilder.default_call(layer, args, kwargs)
        return NotImplemented

    def _embed(self, layer: LowRankEmbedding, args, kwargs, rebuilder):
        def factory():
            table = InRangeEmbedding(layer.input_dim, layer.rank, name=layer.name)
            table.build()
            table.set_weights([layer.embeddings.numpy()])
            return table

        code = rebuilder.layer_for(layer, factory)(*args, **kwargs)
        segment = _Segment(code, layer.projection.numpy().astype(np.float64),
                           layer.bias.numpy().astype(np.float64), layer.name)
        return _Lazy([segment])

    def _flatten(self, layer, args, kwargs, rebuilder):
        value = args[0]
        if not _flattenable(value):
            return NotImplemented
        flat = [
            dataclasses.replace(s, tensor=keras.layers.Reshape((s.tensor.shape[-1],),
                                name=f"{layer.name}_{i}" if i else layer.name)(s.tensor))
            if len(s.tensor.shape) > 2 else s
            for i, s in enumerate(value.segments)
        ]
        return _Lazy(flat)

    def _reshape(self, layer, args, kwargs, rebuilder):
        value = args[0]
        if tuple(layer.target_shape) not in ((value.width,), (-1,)):
            return NotImplemented
        return self._flatten(layer, args, kwargs, rebuilder)

    def _concatenate(self, layer, args, kwargs, rebuilder):
        inputs = args[0]
        ranks = {x.rank if isinstance(x, _Lazy) else len(x.shape) for x in inputs}
        if ranks != {2} or layer.axis not in (-1, 1):
            return NotImplemented
        segments = []
        for x in inputs:
            segments.extend(x.segments if isinstance(x, _Lazy) else [_Segment(x)])
        return _Lazy(segments)

    def _dense(self, layer, args, kwargs, rebuilder):
        value = args[0]
        if not isinstance(value, _Lazy) or value.rank != 2 or len(layer._inbound_nodes) > 1:
            return NotImplemented
        if isinstance(layer, LowRankDense):
            kernel_name, bias_name = "down_kernel", "down_bias"
        else:
            kernel_name, bias_name = "kernel", "bias"
        kernel = getattr(layer, kernel_name).numpy().astype(np.float64)
        bias = getattr(layer, bias_name).numpy().astype(np.float64) if layer.use_bias else 0.0
        new_kernel, extra_bias = _fold(layer, kernel, value)
        config = {**layer.get_config(), "use_bias": True}
        fused = layer.__class__.from_config(config)
        tensors = [s.tensor for s in value.segments]
        x = tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(name=f"{layer.name}_input")(tensors)
        outputs = fused(x)
        weights = {w.path.split("/")[-1]: w for w in fused.weights}
        for weight in layer.weights:
            short_name = weight.path.split("/")[-1]
            if short_name not in (kernel_name, bias_name):
                weights[short_name].assign(weight.numpy())
        weights[kernel_name].assign(new_kernel.astype(np.float32))
        weights[bias_name].assign((bias + extra_bias).astype(np.float32))
        return outputs


def fuse(model: keras.Model) -> keras.Model:
    """Returns a copy of ``model`` with low-rank embedding projections folded away.

    Outputs are unchanged up to float rounding. Layers that are not
    :class:`LowRankEmbedding` consumers are copied with their weights.
    """
    require_functional(model)
    fuser = _Fuser()
    return fuser.rebuilder.rebuild(model, finalize=fuser.materialize)
