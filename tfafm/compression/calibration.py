"""Streaming calibration: the output-feature moments of a model's compressible matrices.

One pass over the data. Each batch runs once through a probe of the model
(:mod:`tfafm.compression.probe`) inside one ``tf.function`` that also forms,
per target matrix, the count, sum and Gram matrix of its output rows
(pre-activation for ``Dense``, looked-up rows for an ``Embedding``, the inner
product of a ``FeatureCross`` or attention projection), shifted by a
constant close to their mean (the first batch's). The per-batch Gram runs in
float32, the layer's own compute precision (it is the costly part; centring
keeps its rounding relative to the covariance itself); every sum across
batches is float64, in numpy. Memory is O(d^2) per matrix, whatever the
number of rows; batches may have any sizes, in any order.

Under a ``tf.distribute`` strategy the batches are split across replicas and
each local replica's moments are added in float64; with several workers
(``MultiWorkerMirroredStrategy``) every worker's totals are summed once at
the end, array by array (``strategy.reduce`` per leaf), after being re-centred
on a common shift.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf

from tfafm.compression.keras_graph import model_inputs, pack_inputs, require_graph_model
from tfafm.compression.probe import build_probe
from tfafm.compression.targets import Target, adapter_for, find_targets
from tfafm.errors import UserError
from tfafm.linalg.statistics import LayerStatistics, Statistics
from tfafm.progress import progress_bar

_NOISY_BELOW = 10  # warn when a matrix sees fewer rows than this many times its width


def _features_of(element):
    return element[0] if isinstance(element, (tuple, list)) and len(element) in (2, 3) else element


def _is_array_data(data) -> bool:
    if isinstance(data, dict):
        return all(hasattr(v, "shape") for v in data.values())
    if isinstance(data, (list, tuple)):
        return bool(data) and all(hasattr(v, "shape") for v in data)
    return hasattr(data, "shape") and not isinstance(data, tf.data.Dataset)


def _as_dataset(data, batch_size: int) -> tf.data.Dataset:
    if isinstance(data, tf.data.Dataset):
        return data.map(lambda *element: _features_of(element[0] if len(element) == 1 else element))
    if _is_array_data(data):
        if isinstance(data, list):
            data = tuple(data)
        return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
    raise UserError(
        "Calibration data must be a tf.data.Dataset of feature batches (or (features, labels) batches), "
        f"a dict of arrays, an array or a list of arrays; got {type(data).__name__}."
    )


def resolve_targets(model: keras.Model, names: Iterable[str] | None) -> list[Target]:
    """The targets named by ``names`` (target names, or layer names for all their matrices)."""
    targets, skipped = find_targets(model)
    if names is None:
        return targets
    if isinstance(names, str):
        names = [names]
    by_name = {t.name: t for t in targets}
    chosen: dict[str, Target] = {}
    for name in names:
        matches = [by_name[name]] if name in by_name else [
            t for t in targets if name in (t.layer_name, t.layer.name)
        ]
        if not matches:
            why = next((s.reason for s in skipped if name in (s.name, s.name.rsplit("/", 1)[-1])), None)
            detail = f": {why}" if why else f" (compressible: {', '.join(by_name) or 'none'})"
            raise UserError(f"Cannot calibrate layer {name!r} of model {model.name!r}{detail}.")
        chosen.update((t.name, t) for t in matches)
    return list(chosen.values())


class _Moments:
    """float64 running count, shifted sum and shifted Gram of one target's rows."""

    def __init__(self, shift: np.ndarray):
        dim = shift.shape[0]
        self.shift = shift.astype(np.float64)
        self.count = 0.0
        self.total = np.zeros(dim)
        self.outer = np.zeros((dim, dim))

    def add(self, count, total, outer) -> None:
        self.count += float(count)
        self.total += np.asarray(total, dtype=np.float64)
        self.outer += np.asarray(outer, dtype=np.float64)

    def recentre(self, shift: np.ndarray) -> None:
        """Re-expresses the moments around ``shift`` (exact in float64)."""
        delta = self.shift - shift
        self.outer += np.outer(delta, self.total) + np.outer(self.total, delta) + self.count * np.outer(delta, delta)
        self.total += self.count * delta
        self.shift = shift


def _local_results(strategy, value) -> list:
    return list(strategy.experimental_local_results(value))


def _sum_across_workers(strategy, array: np.ndarray, local_replicas: int) -> np.ndarray:
    """Sums a host array over the workers of a multi-worker strategy."""
    calls = itertools.count()

    def value(context):  # this worker's array on its first replica, zeros on the others
        return tf.constant(array) if next(calls) % local_replicas == 0 else tf.zeros(np.shape(array), tf.float64)

    per_replica = strategy.experimental_distribute_values_from_function(value)
    return np.asarray(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))


def calibrate(
    model: keras.Model,
    data,
    layers: Iterable[str] | None = None,
    steps: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    batch_size: int = 1024,
    progress: bool = True,
    min_rows: int | None = None,
) -> Statistics:
    """Collects output-feature statistics of ``model``'s compressible matrices.

    Args:
        model: a built ``keras.Sequential`` or functional model (nested
            models, shared layers, several inputs and outputs are fine).
        data: a ``tf.data.Dataset`` of feature batches or ``(features,
            labels)`` batches, a dict of arrays, an array or a list of arrays
            (batched by ``batch_size``). Batches may have any sizes.
        layers: target or layer names to collect (a layer name stands for all
            its matrices); default: every compressible matrix.
        steps: stop after this many batches (default: all of ``data``).
        strategy: a ``tf.distribute`` strategy; default: the current one.
        batch_size: rows per batch for array data.
        progress: show progress (a bar on a terminal, periodic lines otherwise).
        min_rows: refuse a matrix seen on fewer rows than this (default: twice
            its output width; 0 disables the check).

    Returns:
        :class:`Statistics` keyed by target name (the layer's qualified name,
        plus ``/matrix`` for layers with several matrices).

    Raises:
        tfafm.errors.UserError: unknown layers, empty or too little data,
            non-finite or constant outputs (naming the layer).
    """
    require_graph_model(model)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UserError(f"steps must be a positive integer, got {steps!r}.")
    targets = resolve_targets(model, layers)
    if not targets:
        raise UserError(f"Model {model.name!r} has no compressible layers to calibrate.")
    strategy = strategy or tf.distribute.get_strategy()
    taps: dict[int, tuple] = {}
    for target in targets:
        adapter, keys = taps.setdefault(id(target.layer), (adapter_for(target.layer), []))
        keys.append(target.matrix)
    probe = build_probe(model, taps)
    names = {(id(t.layer), t.matrix): t.name for t in targets}

    def recorded(features):
        results = probe.model(pack_inputs(model, model_inputs(model, features)), training=False)
        results = keras.tree.flatten(results)[probe.num_outputs:]
        return [(results[2 * i], results[2 * i + 1]) for i in range(len(probe.recorded))]

    dataset = _as_dataset(data, batch_size)
    if steps is not None:
        dataset = dataset.take(steps)
    first = next(iter(dataset), None)
    if first is None:
        raise UserError("Calibration data is empty: no batch to calibrate on.")
    shifts = {}
    for key, (rows, weights) in zip(probe.recorded, recorded(first)):
        w = weights.numpy().astype(np.float64)
        mean = (w @ rows.numpy().astype(np.float64)) / max(w.sum(), 1.0)
        shifts[names[key]] = np.where(np.isfinite(mean), mean, 0.0)

    shift_constants = [tf.constant(shifts[names[key]], tf.float32) for key in probe.recorded]

    def replica_moments(features):
        moments = []
        for (rows, weights), shift in zip(recorded(features), shift_constants):
            centred = (rows - shift) * weights[:, None]
            moments.append((tf.reduce_sum(weights), tf.reduce_sum(centred, axis=0),
                            tf.matmul(centred, centred, transpose_a=True)))
        return moments

    @tf.function(autograph=False, reduce_retracing=True)
    def step(features):
        return strategy.run(replica_moments, args=(features,))

    accumulators = {name: _Moments(shift) for name, shift in shifts.items()}
    distributed = strategy.experimental_distribute_dataset(dataset)
    cardinality = int(dataset.cardinality())
    total = steps if cardinality < 0 else cardinality
    local_replicas = 1
    with progress_bar("calibrating", total if total and total > 0 else None, enabled=progress) as advance:
        for features in distributed:
            per_target = step(features)
            for key, moments in zip(probe.recorded, per_target):
                replicas = [_local_results(strategy, m) for m in moments]
                local_replicas = len(replicas[0])
                for count, total_sum, outer in zip(*replicas):
                    accumulators[names[key]].add(count.numpy(), total_sum.numpy(), outer.numpy())
            advance()

    stats = Statistics()
    for target in targets:
        moments = accumulators[target.name]
        workers = strategy.num_replicas_in_sync // local_replicas
        if workers > 1:
            moments.recentre(_sum_across_workers(strategy, moments.shift, local_replicas) / workers)
            moments.count = float(_sum_across_workers(strategy, np.float64(moments.count), local_replicas))
            moments.total = _sum_across_workers(strategy, moments.total, local_replicas)
            moments.outer = _sum_across_workers(strategy, moments.outer, local_replicas)
        layer_stats = LayerStatistics(moments.count, moments.total, moments.outer, moments.shift)
        limit = 2 * layer_stats.dim if min_rows is None else int(min_rows)
        layer_stats.check(target.name, min_rows=limit)
        if layer_stats.count < _NOISY_BELOW * layer_stats.dim:
            warnings.warn(
                f"Layer {target.name!r}: {int(layer_stats.count)} calibration rows for a {layer_stats.dim}-wide "
                f"output; its principal directions are noisy below about {_NOISY_BELOW}x the width.",
                stacklevel=2,
            )
        stats[target.name] = layer_stats
    return stats

