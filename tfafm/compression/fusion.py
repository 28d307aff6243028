"""``fuse()``: fold low-rank embedding projections into the Dense layers they feed.

A :class:`LowRankEmbedding` computes ``table[ids] @ P + mu``. Where that
output reaches a ``Dense`` (or :class:`LowRankDense`) only through
``Flatten`` / ``Reshape`` / ``Concatenate``, the affine map folds into the
Dense's kernel and bias: the fused model gathers ``k``-wide rows and feeds
them straight into a smaller first layer. Every other consumer (FM, cross,
attention, bilinear, ...) needs the ``d``-wide vectors: for those the fused
model keeps the projection as a plain ``Dense(d)`` computed once per
embedding and shared by all such consumers.

The model is rebuilt with ``keras.models.clone_model``. Each embedding's
projection is applied right away and the result remembered as *segments*
(code tensor, projection, bias); a consumer that can fold reads the
segments, any other consumer simply uses the projected tensor (unused
projections are not part of the final model). Folding never fails: when a
:class:`LowRankDense` would receive an input narrower than its rank, its
two factors are merged into one ``Dense`` instead; the returned
:class:`FusionReport` says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from tfafm.compression.keras_graph import as_functional, call_counts, require_graph_model
from tfafm.layers.lookup import InRangeEmbedding
from tfafm.layers.low_rank import LowRankDense, LowRankEmbedding


@dataclasses.dataclass
class _Segment:
    """A slice of a concatenated vector: a raw tensor, or a code seen through a projection."""

    tensor: Any
    projection: np.ndarray | None = None  # (k, d)
    bias: np.ndarray | None = None  # (d,)

    @property
    def width(self) -> int:
        return self.tensor.shape[-1] if self.projection is None else self.projection.shape[1]


@dataclasses.dataclass
class FusionReport:
    """What :func:`fuse` did: embeddings folded into Dense layers, factor pairs merged, notes."""

    folded: list[str] = dataclasses.field(default_factory=list)
    merged: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


def _fold(kernel: np.ndarray, segments: list[_Segment]) -> tuple[np.ndarray, np.ndarray]:
    """Kernel rows and extra bias of a layer seen from the segments' own tensors."""
    rows, extra_bias, offset = [], np.zeros(kernel.shape[1]), 0
    for segment in segments:
        block = kernel[offset: offset + segment.width]
        offset += segment.width
        if segment.projection is None:
            rows.append(block)
        else:
            rows.append(segment.projection @ block)
            extra_bias += segment.bias @ block
    return np.concatenate(rows, axis=0), extra_bias


def _weights(layer) -> dict[str, np.ndarray]:
    return {w.path.split("/")[-1]: np.asarray(w.numpy(), dtype=np.float64) for w in layer.weights}


class _Fuser:
    def __init__(self, model: keras.Model):
        self.calls = call_counts(model)
        self.originals: dict[int, Any] = {}
        self.copies: list[tuple[Any, Any]] = []
        self.segments: dict[int, list[_Segment]] = {}
        self.report = FusionReport()

    # --------------------------------------------------------------- clone_model hooks

    def clone(self, layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer
        copy = layer.__class__.from_config(layer.get_config())
        self.originals[id(copy)] = layer
        if not isinstance(layer, LowRankEmbedding):
            self.copies.append((layer, copy))
        return copy

    def call(self, op, *args, **kwargs):
        original = self.originals.get(id(op), op)
        if isinstance(original, LowRankEmbedding):
            return self._embed(original, *args, **kwargs)
        if isinstance(original, keras.layers.Concatenate):
            return self._concatenate(op, original, *args, **kwargs)
        if isinstance(original, (keras.layers.Flatten, keras.layers.Reshape)):
            return self._flatten(op, original, *args, **kwargs)
        if isinstance(original, (keras.layers.Dense, LowRankDense)) and not kwargs and len(args) == 1:
            segments = self.segments.get(id(args[0]))
            if segments is not None and len(args[0].shape) == 2 and self.calls.get(id(original)) == 1:
                if self._foldable(original, segments):
                    return self._dense(original, segments)
        return op(*args, **kwargs)

    def _foldable(self, layer, segments: list[_Segment]) -> bool:
        width = sum(s.tensor.shape[-1] for s in segments)
        if isinstance(layer, LowRankDense) and layer.inner_activation is not None and width < layer.rank:
            self.report.notes.append(f"{layer.name}: not folded (its input would be {width} wide, below its "
                                     f"rank {layer.rank}, and it has an inner activation)")
            return False
        return True

    # --------------------------------------------------------------- handlers

    def _embed(self, layer: LowRankEmbedding, ids, **kwargs):
        table_class = InRangeEmbedding if layer.ids_in_range else keras.layers.Embedding
        table = table_class(layer.input_dim, layer.rank, mask_zero=layer.mask_zero, name=layer.name,
                            dtype=layer.dtype_policy)
        code = table(ids, **kwargs)
        table.set_weights([layer.embeddings.numpy()])
        projection = keras.layers.Dense(layer.output_dim, name=f"{layer.name}_projection", dtype=layer.dtype_policy)
        vectors = projection(code)
        projection.set_weights([layer.projection.numpy(), layer.bias.numpy()])
        self.segments[id(vectors)] = [_Segment(code, layer.projection.numpy().astype(np.float64),
                                               layer.bias.numpy().astype(np.float64))]
        return vectors

    def _concatenate(self, op, layer, inputs, **kwargs):
        outputs = op(inputs, **kwargs)
        if (any(id(x) in self.segments for x in inputs) and not kwargs and layer.axis in (-1, 1)
                and all(len(x.shape) == 2 for x in inputs)):
            self.segments[id(outputs)] = [s for x in inputs for s in self.segments.get(id(x), [_Segment(x)])]
        return outputs

    def _flatten(self, op, layer, x, **kwargs):
        outputs = op(x, **kwargs)
        segments = self.segments.get(id(x))
        flattens = isinstance(layer, keras.layers.Flatten) or tuple(layer.target_shape) in (
            (int(np.prod(x.shape[1:])),), (-1,))
        if segments and flattens and all(d == 1 for s in segments for d in s.tensor.shape[1:-1]):
            self.segments[id(outputs)] = [
                dataclasses.replace(s, tensor=keras.layers.Reshape((s.tensor.shape[-1],))(s.tensor))
                if len(s.tensor.shape) > 2 else s
                for s in segments
            ]
        return outputs

    def _dense(self, layer, segments: list[_Segment]):
        weights = _weights(layer)
        low_rank = isinstance(layer, LowRankDense)
        kernel_name, bias_name = ("down_kernel", "down_bias") if low_rank else ("kernel", "bias")
        new_kernel, extra_bias = _fold(weights[kernel_name], segments)
        new_bias = weights.get(bias_name, 0.0) + extra_bias
        tensors = [s.tensor for s in segments]
        x = tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(name=f"{layer.name}_input")(tensors)
        self.report.folded.append(layer.name)
        if low_rank and new_kernel.shape[0] < layer.rank:
            merged = keras.layers.Dense(layer.units, activation=layer.activation, name=layer.name,
                                        dtype=layer.dtype_policy)
            outputs = merged(x)
            merged.set_weights([(new_kernel @ weights["up_kernel"]).astype(np.float32),
                                (new_bias @ weights["up_kernel"] + weights["up_bias"]).astype(np.float32)])
            self.report.merged.append(layer.name)
            self.report.notes.append(f"{layer.name}: folded input is {new_kernel.shape[0]} wide, below rank "
                                     f"{layer.rank}; its two factors were merged into one Dense")
            return outputs
        fused = layer.__class__.from_config({**layer.get_config(), "use_bias": True})
        outputs = fused(x)
        values = {**weights, kernel_name: new_kernel, bias_name: new_bias}
        for weight in fused.weights:
            weight.assign(values[weight.path.split("/")[-1]].astype(np.float32))
        return outputs


def fuse(model: keras.Model, return_report: bool = False):
    """Returns a copy of ``model`` with low-rank embedding projections folded away.

    Outputs are unchanged up to float rounding; ``model`` is not modified.
    With ``return_report=True`` returns ``(fused_model, FusionReport)``.
    """
    require_graph_model(model)
    model = as_functional(model)
    fuser = _Fuser(model)
    fused = keras.models.clone_model(model, clone_function=fuser.clone, call_function=fuser.call, recursive=True)
    for original, copy in fuser.copies:
        if original.weights and copy.built:
            copy.set_weights(original.get_weights())
    return (fused, fuser.report) if return_report else fused
