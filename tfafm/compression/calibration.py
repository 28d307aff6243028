"""Streaming calibration: the output-feature moments of every target layer.

One pass over the data in a ``tf.function``: each batch runs through the
model once; for each target layer the outputs (pre-activation for ``Dense``,
looked-up rows for ``Embedding``, the inner dense output for
``FeatureCross``) are reshaped to rows, shifted by a constant close to their
mean (taken from the first batch), and their count, sum and sum of outer
products are added to float64 accumulators. The per-batch outer product runs
in the layer's float32 (it is the costly part); centring keeps its rounding
error relative to the covariance itself, and every sum across batches is
float64. Memory is O(d^2) per layer,
whatever the number of rows. Under a ``tf.distribute`` strategy each replica
computes its batch's moments and they are summed across replicas.
"""

from __future__ import annotations

from typing import Iterable

import keras
import keras_rs
import numpy as np
import tensorflow as tf
from keras import ops

from tfafm.compression.graph import compressible_layers, is_functional, model_inputs, require_functional
from tfafm.compression.statistics import LayerStatistics, Statistics
from tfafm.progress import progress_bar


def _dense_pre_activation(layer: keras.layers.Dense, x):
    y = ops.matmul(x, layer.kernel)
    return ops.add(y, layer.bias) if layer.use_bias else y


def _run_recording(model: keras.Model, flat_inputs: list, targets: set, records: dict):
    """Runs ``model`` on real tensors, appending target layers' output features to
    ``records[name]`` (a list: a shared layer is recorded at every call)."""

    def call(layer, *args, **kwargs):
        if is_functional(layer):
            inner = layer._run_through_graph(
                model_inputs(layer, args[0]), call_fn=call
            )
            return inner
        if layer.name not in targets:
            return layer(*args, **kwargs)
        if isinstance(layer, keras.layers.Dense):
            pre = _dense_pre_activation(layer, args[0])
            records.setdefault(layer.name, []).append(pre)
            return layer.activation(pre)
        if isinstance(layer, keras_rs.layers.FeatureCross):
            x = args[1] if len(args) > 1 else kwargs.get("x")
            x = args[0] if x is None else x
            records.setdefault(layer.name, []).append(_dense_pre_activation(layer.dense, x))
            return layer(*args, **kwargs)
        outputs = layer(*args, **kwargs)
        records.setdefault(layer.name, []).append(outputs)
        return outputs

    return model._run_through_graph(flat_inputs, call_fn=call)


def _as_dataset(data, batch_size: int) -> tf.data.Dataset:
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, dict):
        return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
    raise TypeError(
        f"Calibration data must be a tf.data.Dataset or a dict of arrays, got {type(data).__name__}."
    )


def _features_of(element):
    return element[0] if isinstance(element, (tuple, list)) else element


def _padded_with_mask(dataset: tf.data.Dataset, full: int) -> tf.data.Dataset:
    """Pads every batch to ``full`` rows with zeros and pairs it with a 0/1 row mask.

    All batches then share one static shape, so the calibration step is traced
    once (a second trace for a short last batch costs as much as many steps).
    """

    def pad(*element):
        features = _features_of(element[0] if len(element) == 1 else element)
        rows = tf.shape(tf.nest.flatten(features)[0])[0]
        if_short = full - rows

        def pad_one(x):
            x = tf.pad(x, [[0, if_short]] + [[0, 0]] * (len(x.shape) - 1))
            return tf.ensure_shape(x, [full] + x.shape[1:])

        mask = tf.ensure_shape(tf.pad(tf.ones([rows], tf.float32), [[0, if_short]]), [full])
        return tf.nest.map_structure(pad_one, features), mask

    return dataset.map(pad)


def calibrate(
    model: keras.Model,
    data,
    layers: Iterable[str] | None = None,
    steps: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    batch_size: int = 1024,
    progress: bool = True,
) -> Statistics:
    """Collects output-feature statistics of ``model``'s compressible layers.

    Args:
        model: a built functional Keras model.
        data: a ``tf.data.Dataset`` of feature dicts or ``(features, labels)``
            batches, or a dict of arrays (batched by ``batch_size``).
        layers: names of the layers to collect; default: every compressible layer.
        steps: stop after this many batches (default: the whole dataset).
            Batches may not be larger than the first one.
        strategy: a ``tf.distribute`` strategy; default: the current one.
        progress: draw a progress bar.

    Returns:
        :class:`Statistics` keyed by layer name.

    Raises:
        ValueError: unknown layer names, empty data or non-finite statistics.
    """
    require_functional(model)
    candidates = compressible_layers(model)
    names = list(candidates) if layers is None else list(layers)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise ValueError(
            f"Cannot calibrate layer(s) {unknown}: not compressible layers of {model.name!r} "
            f"(compressible: {', '.join(candidates) or 'none'})."
        )
    if not names:
        raise ValueError(f"Model {model.name!r} has no compressible layers to calibrate.")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    strategy = strategy or tf.distribute.get_strategy()
    dims = {n: candidates[n].output_dim for n in names}
    targets = set(names)

    accumulators = {
        n: (tf.Variable(tf.zeros((), tf.float64)), tf.Variable(tf.zeros((d,), tf.float64)),
            tf.Variable(tf.zeros((d, d), tf.float64)))
        for n, d in dims.items()
    }

    def layer_rows(features, mask) -> dict:
        """Per layer: its output rows ``(N, d)`` and their 0/1 weights ``(N, 1)``."""
        records: dict = {}
        _run_recording(model, model_inputs(model, features), targets, records)
        out = {}
        for name in names:
            rows, weights = [], []
            for record in records[name]:
                rows.append(tf.reshape(tf.cast(record, tf.float32), (-1, dims[name])))
                per_sample = tf.reshape(mask, [-1] + [1] * (len(record.shape) - 2))
                weights.append(tf.reshape(tf.broadcast_to(per_sample, tf.shape(record)[:-1]), (-1, 1)))
            out[name] = (tf.concat(rows, axis=0), tf.concat(weights, axis=0))
        return out

    def replica_moments(features, mask):
        moments = {}
        for name, (rows, weights) in layer_rows(features, mask).items():
            centred = (rows - shifts[name]) * weights
            moments[name] = (
                tf.reduce_sum(tf.cast(weights, tf.float64)),
                tf.reduce_sum(tf.cast(centred, tf.float64), axis=0),
                tf.cast(tf.matmul(centred, centred, transpose_a=True), tf.float64),
            )
        return moments

    # Every batch is padded to one static shape (static shapes also run faster
    # than a shape-agnostic trace), so this is traced once; nothing here
    # branches on tensor values, so AutoGraph's slow source conversion is off.
    @tf.function(autograph=False)
    def step(features, mask):
        per_replica = strategy.run(replica_moments, args=(features, mask))
        # leaf by leaf: MultiWorkerMirroredStrategy.reduce takes no nested structures
        reduced = tf.nest.map_structure(
            lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None), per_replica)
        for name, values in reduced.items():
            for accumulator, value in zip(accumulators[name], values):
                accumulator.assign_add(value)

    dataset = _as_dataset(data, batch_size)
    if steps is not None:
        dataset = dataset.take(steps)
    first = next(iter(dataset), None)
    if first is None:
        raise ValueError("Calibration data is empty: no batch to calibrate on.")
    first = _features_of(first)
    full = int(tf.shape(tf.nest.flatten(first)[0])[0])
    shifts = {n: tf.constant(tf.reduce_mean(rows, axis=0))
              for n, (rows, _) in layer_rows(first, tf.ones([full])).items()}
    cardinality = int(dataset.cardinality())
    total = steps if cardinality < 0 else cardinality
    distributed = strategy.experimental_distribute_dataset(_padded_with_mask(dataset, full))
    with progress_bar("calibrating", total, enabled=progress) as advance:
        for features, mask in distributed:
            step(features, mask)
            advance()

    stats = Statistics()
    for name, (count, total_sum, outer) in accumulators.items():
        stats[name] = LayerStatistics(
            float(count.numpy()), np.asarray(total_sum.numpy()), np.asarray(outer.numpy()),
            np.asarray(shifts[name].numpy(), dtype=np.float64),
        )
        stats[name].check(name)
    return stats
