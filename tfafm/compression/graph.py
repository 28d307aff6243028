"""Walking and rebuilding functional Keras models.

``rebuild`` replays a functional model's graph on fresh ``keras.Input``s and
lets a caller decide, per layer call, what to compute; every layer it does not
replace is cloned with its weights, once per layer (so shared layers stay
shared). ``compressible_layers`` lists what compression can target.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras
import keras_rs

from tfafm.layers.low_rank import LowRankDense, LowRankEmbedding


def is_functional(model) -> bool:
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth") and bool(
        getattr(model, "_nodes_by_depth", None)
    )


def require_functional(model) -> None:
    """Raises a clear error for subclassed (non-graph) models."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model, got {type(model).__name__}.")
    if not is_functional(model):
        raise TypeError(
            f"Model {model.name!r} is a subclassed model: its graph cannot be rewritten. "
            "Build it with the functional API, or replace layers yourself with "
            "tfafm.layers.LowRankDense.from_dense / LowRankEmbedding.from_embedding."
        )


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A layer compression can factor: its kind and the shape of the matrix it replaces."""

    name: str
    kind: str  # "dense" | "embedding" | "cross"
    input_dim: int
    output_dim: int
    bias: bool = True  # whether the original layer has an output bias

    def params(self, rank: int | None = None) -> int:
        """Parameters of the layer at full size (``rank=None``) or factored at ``rank``."""
        n, d = self.input_dim, self.output_dim
        if self.kind == "embedding":
            return n * d if rank is None else n * rank + rank * d + d
        if rank is None:
            return n * d + (d if self.bias else 0)
        # LowRankDense / low-rank FeatureCross: two kernels, biases on both factors.
        return rank * (n + d) + (rank if self.kind == "dense" else 0) + d

    def max_rank(self) -> int:
        """Largest rank that still saves parameters (0 when none does)."""
        full = self.params()
        rank = min(self.input_dim, self.output_dim)
        while rank >= 1 and self.params(rank) >= full:
            rank -= 1
        return rank


def iter_layers(model: keras.Model):
    """All layers of ``model``, descending into nested functional models."""
    for layer in model.layers:
        if is_functional(layer):
            yield from iter_layers(layer)
        else:
            yield layer


def _candidate(layer) -> Candidate | None:
    if isinstance(layer, (LowRankDense, LowRankEmbedding)) or not layer.built:
        return None
    if isinstance(layer, keras.layers.Embedding):
        return Candidate(layer.name, "embedding", layer.input_dim, layer.output_dim)
    if isinstance(layer, keras.layers.Dense):
        return Candidate(layer.name, "dense", layer.kernel.shape[0], layer.units, layer.use_bias)
    if isinstance(layer, keras_rs.layers.FeatureCross) and layer.projection_dim is None:
        dim = layer.dense.kernel.shape[0]
        return Candidate(layer.name, "cross", dim, dim, layer.dense.use_bias)
    return None


def compressible_layers(model: keras.Model) -> dict[str, Candidate]:
    """Layers that can be factored with a saving, by name, in model order.

    Excludes layers already low-rank, layers where no rank saves parameters
    (such as the final ``Dense(1)`` logit layer) and unbuilt layers.
    """
    found: dict[str, Candidate] = {}
    for layer in iter_layers(model):
        candidate = _candidate(layer)
        if candidate is None or candidate.max_rank() < 1:
            continue
        if candidate.name in found:
            raise ValueError(f"Layer name {candidate.name!r} appears twice; compression needs unique names.")
        found[candidate.name] = candidate
    return found


def model_feed(model: keras.Model, features) -> dict:
    """Casts a feature dict to what ``model(...)`` takes: ``{input_name: tensor}``."""
    return dict(zip((x.name for x in model.inputs), model_inputs(model, features)))


def model_inputs(model: keras.Model, features) -> list:
    """Orders and casts a feature dict (or list) to the model's flat input list."""
    import tensorflow as tf

    if isinstance(features, dict):
        missing = [x.name for x in model.inputs if x.name not in features]
        if missing:
            raise ValueError(f"Data has no feature(s) {missing} that model {model.name!r} expects.")
        features = [features[x.name] for x in model.inputs]
    elif not isinstance(features, (list, tuple)):
        features = [features]
    flat = []
    for spec, value in zip(model.inputs, features):
        value = tf.cast(value, spec.dtype)
        if len(value.shape) == len(spec.shape) - 1:
            value = tf.expand_dims(value, -1)
        flat.append(value)
    return flat


def clone_layer(layer):
    """A fresh copy of ``layer`` (same config); weights are copied after it is built."""
    return layer.__class__.from_config(layer.get_config())


class Rebuilder:
    """Replays a functional model layer by layer.

    ``call_fn(original_layer, args, kwargs, rebuilder)`` returns the outputs for
    one layer call, or ``NotImplemented`` to get the default: the layer cloned
    once (weights copied) and called on ``args``.
    """

    def __init__(self, call_fn: Callable[..., Any]):
        self.call_fn = call_fn
        self._clones: dict[int, Any] = {}
        self._weights_copied: set[int] = set()

    def layer_for(self, layer, factory: Callable[[], Any]):
        """Returns the replacement of ``layer``, created once by ``factory``."""
        if id(layer) not in self._clones:
            self._clones[id(layer)] = factory()
        return self._clones[id(layer)]

    def default_call(self, layer, args, kwargs):
        if is_functional(layer):
            clone = self.layer_for(layer, lambda: self.rebuild(layer))
            return clone(*args, **kwargs)
        clone = self.layer_for(layer, lambda: clone_layer(layer))
        outputs = clone(*args, **kwargs)
        if id(layer) not in self._weights_copied:
            clone.set_weights(layer.get_weights())
            self._weights_copied.add(id(layer))
        return outputs

    def _dispatch(self, layer, *args, **kwargs):
        outputs = self.call_fn(layer, args, kwargs, self)
        if outputs is NotImplemented:
            outputs = self.default_call(layer, args, kwargs)
        return outputs

    def rebuild(self, model: keras.Model, finalize: Callable[[Any], Any] | None = None) -> keras.Model:
        """A new functional model with the same inputs and the replayed graph."""
        require_functional(model)
        new_inputs = [
            keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name) for x in model.inputs
        ]
        outputs = model._run_through_graph(new_inputs, call_fn=self._dispatch)
        if finalize is not None:
            outputs = keras.tree.map_structure(finalize, outputs)
        structure = keras.tree.pack_sequence_as(model._inputs_struct, new_inputs)
        return keras.Model(structure, outputs, name=model.name)
