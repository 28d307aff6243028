"""Probe models: a model that also returns the output features of chosen layers.

:func:`build_probe` replays a Sequential or functional model with
``keras.models.clone_model`` (reusing its layers, so no weight is copied)
and replaces each call of a target layer by a :class:`FeatureTap`, which runs
the layer once and returns its outputs plus, per target matrix, the rows of
that product's pre-activation output and their weights (0 for padding
positions of a ``mask_zero`` embedding). Nested models get probes of their
own whose extra outputs are passed up, so every call of every target layer,
at any depth and through shared layers, is recorded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
from keras import ops

from tfafm.graph import as_functional, is_graph_model
from tfafm.compression.targets import Adapter


class FeatureTap(keras.layers.Layer):
    """Calls ``target`` through ``adapter.tap``: returns ``(outputs, [rows, weights, ...])``.

    Used only inside probe models (never saved): ``rows`` is ``(n, d_out)``
    float32 and ``weights`` ``(n,)`` for each key in ``keys``, or the scalar 1
    when every row counts fully (no per-row work then).
    """

    def __init__(self, adapter: Adapter, target, keys: list[str], **kwargs: Any):
        super().__init__(**kwargs)  # auto-named: a shared target gets one tap per call
        self.adapter = adapter
        self.target = target
        self.keys = list(keys)

    def call(self, *args, **kwargs):
        outputs, features = self.adapter.tap(self.target, *args, **kwargs)
        recorded = []
        self.last = {}  # the rows as computed, before any reshape: what the outputs depend on
        for key in self.keys:
            value = features[key]
            rows, weights = value if isinstance(value, tuple) else (value, None)
            self.last[key] = rows
            rows = ops.cast(ops.reshape(rows, (-1, rows.shape[-1])), "float32")
            weights = ops.ones(()) if weights is None else ops.reshape(ops.cast(weights, "float32"), (-1,))
            recorded += [rows, weights]
        return outputs, recorded


@dataclasses.dataclass
class Probe:
    """A probe model and what its extra outputs are.

    ``model(inputs)`` returns the original outputs (``num_outputs`` of them,
    flattened) followed by ``(rows, weights)`` pairs, one per entry of
    ``recorded``: ``(layer id, matrix key)``. ``taps`` holds, per entry, the
    :class:`FeatureTap` and key whose ``last`` rows (after a call, the tensors
    the outputs were computed from) are that entry's: gradients of the outputs
    are taken with respect to them.
    """

    model: keras.Model
    num_outputs: int
    recorded: list[tuple[int, str]]
    taps: list[tuple[FeatureTap, str]]

    def rows_of_last_call(self) -> list:
        """Per entry of ``recorded``, the rows as the last call computed them."""
        return [tap.last[key] for tap, key in self.taps]


def build_probe(model: keras.Model, taps: dict[int, tuple[Adapter, list[str]]]) -> Probe:
    """A probe of ``model`` recording the layers in ``taps`` (``id(layer) -> (adapter, keys)``)."""
    recorded_tensors: list = []
    recorded: list[tuple[int, str]] = []
    taps_in_order: list[tuple[FeatureTap, str]] = []
    sub_probes: dict[int, Probe] = {}

    def call(layer, *args, **kwargs):
        if is_graph_model(layer):
            if id(layer) not in sub_probes:
                sub_probes[id(layer)] = build_probe(layer, taps)
            sub = sub_probes[id(layer)]
            results = keras.tree.flatten(sub.model(*args, **kwargs))
            recorded_tensors.extend(results[sub.num_outputs:])
            recorded.extend(sub.recorded)
            taps_in_order.extend(sub.taps)
            outputs = results[:sub.num_outputs]
            return keras.tree.pack_sequence_as(layer.output, outputs)
        if id(layer) not in taps:
            return layer(*args, **kwargs)
        adapter, keys = taps[id(layer)]
        tap = FeatureTap(adapter, layer, keys)
        outputs, pairs = tap(*args, **kwargs)
        recorded_tensors.extend(pairs)
        recorded.extend((id(layer), key) for key in keys)
        taps_in_order.extend((tap, key) for key in keys)
        return outputs

    replayed = keras.models.clone_model(as_functional(model), clone_function=lambda layer: layer,
                                        call_function=call)
    outputs = list(replayed.outputs)
    probe = keras.Model(replayed.input, outputs + recorded_tensors, name=f"{model.name}_probe")
    return Probe(probe, len(outputs), recorded, taps_in_order)
