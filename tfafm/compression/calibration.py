"""Streaming calibration: the output-feature moments of a model's compressible matrices.

One pass over the data. Each batch runs once through a probe of the model
(:mod:`tfafm.compression.probe`) inside one ``tf.function`` (traced once for
all batch sizes) that also forms, per target matrix, the count, mean and Gram
matrix about that mean of its output rows (pre-activation for ``Dense``,
looked-up rows for an ``Embedding``, the inner product of a ``FeatureCross``
or attention projection) and merges them into float64 accumulators with
Chan et al.'s exact pairwise update. The per-batch Gram runs in float32, the
layer's own compute precision (it is the costly part; centring on the batch
mean keeps its rounding relative to the covariance itself); every sum across
batches is float64. Memory is O(d^2) per matrix, whatever the number of
rows; batches may have any sizes, in any order; nothing leaves the graph
until the end. The probe, accumulators and traced step are kept (per model,
while it lives) for later calls with the same targets, strategy and batch
structure, so a repeated calibration costs what its batches cost, as a
repeated ``model.predict`` does.

With ``fisher=True`` (the default) the same step also takes, per model output,
the gradient of the predictions (each scaled by the square root of its
Bernoulli Fisher weight) with respect to every target's output rows, and adds
``g^T g`` of those rows to a float64 sum per target: the Fisher information
``compress(criterion="loss")`` weighs the output directions by.

Under a ``tf.distribute`` strategy the batches are split across replicas and
each local replica's moments are merged the same way; with several workers
(``MultiWorkerMirroredStrategy``) every worker's totals are summed once at
the end, array by array (``strategy.reduce`` per leaf), after being re-centred
on a common shift.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import warnings
import weakref
from typing import Iterable, Iterator

import keras
import numpy as np
import tensorflow as tf

from tfafm.graph import model_inputs, pack_inputs, require_graph_model, split_element
from tfafm.compression.probe import build_probe
from tfafm.compression.targets import Target, adapter_for, find_targets
from tfafm.errors import UserError
from tfafm.linalg.statistics import LayerStatistics, Statistics
from tfafm.progress import progress_bar

_NOISY_BELOW = 10  # warn when a matrix sees fewer rows than this many times its width


def _is_array_data(data) -> bool:
    if isinstance(data, dict):
        return all(hasattr(v, "shape") for v in data.values())
    if isinstance(data, (list, tuple)):
        return bool(data) and all(hasattr(v, "shape") for v in data)
    return hasattr(data, "shape") and not isinstance(data, tf.data.Dataset)


def as_dataset(data, batch_size: int) -> tuple[tf.data.Dataset, bool]:
    """``data`` as a dataset of batches, and whether its elements may hold labels too (a user's
    dataset: the step picks the features with :func:`~tfafm.graph.split_element`, no ``map`` to trace)."""
    if isinstance(data, tf.data.Dataset):
        return data, True
    if _is_array_data(data):
        if isinstance(data, list):
            data = tuple(data)
        _check_lengths(data)
        return tf.data.Dataset.from_tensor_slices(data).batch(batch_size), False
    raise UserError(
        "Calibration data must be a tf.data.Dataset of feature batches (or (features, labels) batches), "
        f"a dict of arrays, an array or a list of arrays; got {type(data).__name__}."
    )


def _check_lengths(data) -> None:
    """Refuses a dict or list of arrays whose row counts differ, naming two that differ."""
    items = list(data.items()) if isinstance(data, dict) else list(enumerate(data)) if isinstance(data, tuple) else []
    lengths = [(name, value.shape[0] if len(value.shape) else None) for name, value in items]
    for name, rows in lengths:
        if rows is None:
            raise UserError(f"Calibration data: array {name!r} is a scalar, not one value per row.")
        if rows != lengths[0][1]:
            raise UserError(f"Calibration data: arrays of different lengths: {lengths[0][0]!r} has "
                            f"{lengths[0][1]} rows, {name!r} has {rows}.")


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
    """float64 running count, mean and centred Gram ``M2`` of one target's rows, in TF variables.

    Each batch brings its own count, mean and Gram about that mean; they are
    merged exactly (Chan et al.'s pairwise update), so no shift has to be
    chosen in advance and batches need no extra pass.
    """

    def __init__(self, dim: int, fisher: bool = False):
        self.count = tf.Variable(tf.zeros((), tf.float64), trainable=False)
        self.mean = tf.Variable(tf.zeros((dim,), tf.float64), trainable=False)
        self.outer = tf.Variable(tf.zeros((dim, dim), tf.float64), trainable=False)
        self.fisher = tf.Variable(tf.zeros((dim, dim), tf.float64), trainable=False) if fisher else None

    def merge(self, count, mean, outer, fisher=None) -> None:
        """Adds a batch's moments (graph-mode friendly); ``fisher``, a sum, adds as it is."""
        if fisher is not None:
            self.fisher.assign_add(fisher)
        total = self.count + count
        weight = tf.math.divide_no_nan(count, total)
        delta = mean - self.mean
        self.outer.assign_add(outer + tf.tensordot(delta, delta, axes=0) * (self.count * weight))
        self.mean.assign_add(delta * weight)
        self.count.assign(total)

    def reset(self) -> None:
        for variable in (self.count, self.mean, self.outer, self.fisher):
            if variable is not None:
                variable.assign(tf.zeros_like(variable))

    def statistics(self) -> LayerStatistics:
        dim = int(self.mean.shape[0])
        return LayerStatistics(float(self.count.numpy()), np.zeros(dim), self.outer.numpy(), self.mean.numpy(),
                               None if self.fisher is None else self.fisher.numpy())


def _batch_moments(rows, weights):
    """Count, mean and Gram about the mean of rows (``weights``: per row, or a scalar 1 for
    all); the Gram in the rows' float32."""
    if len(weights.shape) == 0:
        count = tf.cast(tf.shape(rows)[0], tf.float32)
        mean = tf.math.divide_no_nan(tf.reduce_sum(rows, axis=0), count)
        centred = rows - mean
    else:
        count = tf.reduce_sum(weights)
        mean = tf.math.divide_no_nan(tf.reduce_sum(rows * weights[:, None], axis=0), count)
        centred = (rows - mean) * weights[:, None]
    outer = tf.matmul(centred, centred, transpose_a=True)
    return tf.cast(count, tf.float64), tf.cast(mean, tf.float64), tf.cast(outer, tf.float64)


def _prediction_scale(output):
    """Per element of a model output, ``sqrt`` of its Bernoulli Fisher weight, held constant:
    ``1 / sqrt(p (1 - p))`` for outputs in [0, 1] (probabilities), ``sqrt(p (1 - p))`` with
    ``p = sigmoid(output)`` otherwise (logits). The gradient of ``sum(scale * output)`` with
    respect to a row is then ``sqrt(w) g`` for each row's own prediction."""
    output = tf.cast(output, tf.float32)
    probability = tf.reduce_min(output) >= 0.0
    probability = tf.logical_and(probability, tf.reduce_max(output) <= 1.0)
    p = tf.where(probability, output, tf.sigmoid(output))
    variance = tf.clip_by_value(p * (1.0 - p), 1e-6, 0.25)
    return tf.stop_gradient(tf.where(probability, tf.math.rsqrt(variance), tf.sqrt(variance)))


class _Calibrator:
    """A model's probe, float64 accumulators and traced update step for one list of targets,
    one strategy and one batch structure (kept between calls by :func:`_calibrator`, so that
    only the first call builds the probe and traces). ``labelled``: batches may be ``(features,
    labels)`` (see :func:`~tfafm.graph.split_element`). ``fisher``: also sum, per target, the Fisher information
    of the predictions with respect to its rows (one backward pass per model output)."""

    def __init__(self, model: keras.Model, targets: list[Target], strategy, element_spec, labelled: bool,
                 fisher: bool = False):
        taps: dict[int, tuple] = {}
        for target in targets:
            adapter, keys = taps.setdefault(id(target.layer), (adapter_for(target.layer), []))
            keys.append(target.matrix)
        probe = build_probe(model, taps)
        names = {(id(t.layer), t.matrix): t.name for t in targets}
        self.strategy = strategy  # held: its id is part of the cache key
        self.lock = threading.Lock()
        self.accumulators = accumulators = {t.name: _Moments(t.output_dim, fisher) for t in targets}
        moments = [accumulators[names[key]] for key in probe.recorded]  # a shared layer: one per call
        dims = [int(accumulator.mean.shape[0]) for accumulator in moments]
        # Weak: the cache must not keep the model alive (tracing only happens inside calibrate(model, ...)).
        model_ref = weakref.ref(model)

        def replica_moments(element):
            features = split_element(element)[0] if labelled else element
            inputs = pack_inputs(model_ref(), model_inputs(model_ref(), features))
            with tf.GradientTape(persistent=True) if fisher else contextlib.nullcontext() as tape:
                flat = keras.tree.flatten(probe.model(inputs, training=False))
                scaled = [tf.reduce_sum(_prediction_scale(o) * tf.cast(o, tf.float32))
                          for o in flat[:probe.num_outputs]] if fisher else []
            results = flat[probe.num_outputs:]
            moments = [_batch_moments(results[i], results[i + 1]) for i in range(0, len(results), 2)]
            if not fisher:
                return moments
            rows = probe.rows_of_last_call()
            sums = [tf.zeros((dim, dim), tf.float64) for dim in dims]
            for total in scaled:  # the Fisher information of several outputs adds up
                grads = tape.gradient(total, rows, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                for i, g in enumerate(grads):
                    g = tf.reshape(tf.cast(g, tf.float32), (-1, dims[i]))
                    sums[i] += tf.cast(tf.matmul(g, g, transpose_a=True), tf.float64)
            del tape
            return [(*m, f) for m, f in zip(moments, sums)]

        # One trace for all batch sizes; nothing branches on tensor values, so AutoGraph is off.
        @tf.function(autograph=False, input_signature=[element_spec])
        def step(element):
            per_replica = strategy.run(replica_moments, args=(element,))
            for accumulator, replicated in zip(moments, per_replica):
                local = [strategy.experimental_local_results(value) for value in replicated]
                for values in zip(*local):
                    accumulator.merge(*values)

        @tf.function(autograph=False)
        def reset():
            for accumulator in accumulators.values():
                accumulator.reset()

        self.step = step
        self.reset = reset

    def statistics(self) -> dict[str, LayerStatistics]:
        return {name: accumulator.statistics() for name, accumulator in self.accumulators.items()}


_calibrators: "weakref.WeakKeyDictionary[keras.Model, tuple]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _calibrator(model: keras.Model, targets: list[Target], strategy, element_spec,
                labelled: bool, fisher: bool = False) -> Iterator[_Calibrator]:
    """A :class:`_Calibrator` with zeroed accumulators: the one kept from the model's last call
    when that had the same targets, strategy and batch structure, else a new one (also when
    the kept one is in use by another thread). One is kept per model, while the model lives:
    its float64 accumulators (``8 d^2`` bytes per target) stay allocated until then."""
    key = (tuple(t.name for t in targets), id(strategy), tuple(keras.tree.flatten_with_path(element_spec)),
           labelled, fisher)
    kept_key, calibrator = _calibrators.get(model, (None, None))
    if kept_key != key or not calibrator.lock.acquire(blocking=False):
        calibrator = _Calibrator(model, targets, strategy, element_spec, labelled, fisher)
        calibrator.lock.acquire()
        _calibrators[model] = key, calibrator
    try:
        calibrator.reset()
        yield calibrator
    finally:
        calibrator.lock.release()


def _sum_across_workers(strategy, array: np.ndarray, local_replicas: int) -> np.ndarray:
    """Sums a host array over the workers of a multi-worker strategy."""
    calls = itertools.count()

    def value(context):  # this worker's array on its first replica, zeros on the others
        return tf.constant(array) if next(calls) % local_replicas == 0 else tf.zeros(np.shape(array), tf.float64)

    per_replica = strategy.experimental_distribute_values_from_function(value)
    return np.asarray(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))


def _merged_across_workers(strategy, stats: LayerStatistics, local_replicas: int, workers: int) -> LayerStatistics:
    """Every worker's moments summed, about a common shift (the mean of the workers' means)."""
    common = _sum_across_workers(strategy, stats.shift, local_replicas) / workers
    local = stats.about(common)
    return LayerStatistics(
        float(_sum_across_workers(strategy, np.float64(local.count), local_replicas)),
        _sum_across_workers(strategy, local.total, local_replicas),
        _sum_across_workers(strategy, local.outer, local_replicas),
        common,
        None if local.fisher is None else _sum_across_workers(strategy, local.fisher, local_replicas),
    )


def calibrate(
    model: keras.Model,
    data,
    layers: Iterable[str] | None = None,
    calibration_steps: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    batch_size: int = 1024,
    progress: bool = True,
    min_calibration_rows: int | None = None,
    fisher: bool = True,
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
        calibration_steps: stop after this many batches (default: all of ``data``).
        strategy: a ``tf.distribute`` strategy; default: the current one.
        batch_size: rows per batch for array data.
        progress: show progress (a bar on a terminal, periodic lines otherwise).
        min_calibration_rows: refuse a matrix seen on fewer rows than this (default: twice
            its output width; 0 disables the check).
        fisher: also sum, per matrix, the Fisher information of the model's predictions with
            respect to its output rows (``LayerStatistics.fisher``: how much a change of each
            output direction moves the predictions, what ``compress(criterion="loss")``, the
            default, keeps). Costs one backward pass per model output on every batch (about 1.5x
            the time); no labels needed. ``False`` for the output moments alone.

    Returns:
        :class:`Statistics` keyed by target name (the layer's qualified name,
        plus ``/matrix`` for layers with several matrices).

    Raises:
        tfafm.errors.UserError: unknown layers, empty or too little data,
            non-finite or constant outputs (naming the layer).

    Example:

    >>> import numpy as np, keras, tfafm
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="hidden")])
    >>> x = np.random.default_rng(0).normal(size=(300, 8)).astype("float32")
    >>> statistics = tfafm.calibrate(model, x, batch_size=100, progress=False)
    >>> list(statistics), int(statistics["hidden"].count), statistics["hidden"].covariance.shape
    (['hidden'], 300, (4, 4))
    """
    require_graph_model(model)
    steps = calibration_steps
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UserError(f"calibration_steps must be a positive integer, got {steps!r}.")
    targets = resolve_targets(model, layers)
    if not targets:
        raise UserError(f"Model {model.name!r} has no compressible layers to calibrate.")
    strategy = strategy or tf.distribute.get_strategy()
    dataset, labelled = as_dataset(data, batch_size)
    if steps is None and int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise UserError("Calibration data is an infinite dataset (a .repeat() without a count?): give "
                        "calibration_steps= to bound it.")
    if steps is not None:
        dataset = dataset.take(steps)
    distributed = strategy.experimental_distribute_dataset(dataset)
    cardinality = int(dataset.cardinality())
    total = steps if cardinality < 0 else cardinality
    batches = 0
    with _calibrator(model, targets, strategy, distributed.element_spec, labelled, fisher) as calibrator, \
            progress_bar("calibrating", total if total and total > 0 else None, enabled=progress) as advance:
        for features in distributed:
            calibrator.step(features)
            batches += 1
            advance()
        moments = calibrator.statistics()
    if not batches:
        raise UserError("Calibration data is empty: no batch to calibrate on.")
    local_replicas = len(strategy.experimental_local_results(strategy.run(lambda: tf.constant(0.0))))
    workers = strategy.num_replicas_in_sync // local_replicas
    stats = Statistics()
    for target in targets:
        layer_stats = moments[target.name]
        if workers > 1:
            layer_stats = _merged_across_workers(strategy, layer_stats, local_replicas, workers)
        limit = 2 * layer_stats.dim if min_calibration_rows is None else int(min_calibration_rows)
        layer_stats.check(target.name, min_rows=limit)
        if layer_stats.count < _NOISY_BELOW * layer_stats.dim:
            warnings.warn(
                f"Layer {target.name!r}: {int(layer_stats.count)} calibration rows for a {layer_stats.dim}-wide "
                f"output; its principal directions are noisy below about {_NOISY_BELOW}x the width.",
                stacklevel=2,
            )
        stats[target.name] = layer_stats
    return stats

