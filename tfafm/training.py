"""Training a model-zoo model on a data spec, with exact validation metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import types
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from tfafm import models
from tfafm.config import TrainConfig
from tfafm.data import DataBundle, load_data
from tfafm.data.cache import read_dataset
from tfafm.data.sources import open_cache
from tfafm.data.specs import absolute_spec
from tfafm.distribute import cluster_size, cluster_strategy, is_chief
from tfafm.errors import UserError
from tfafm.graph import clone, output_names, output_structure
from tfafm.metrics import (SIGNIFICANT_Z, as_probabilities, evaluate, is_binary, label_values, logit_outputs,
                           paired_auc_difference, predict_outputs, scores)
from tfafm.progress import progress_bar
from tfafm.runs import save_run

if TYPE_CHECKING:
    import tensorflow as tf


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    bundle: DataBundle
    metrics: dict[str, float]
    epochs_run: int


def compile_for_ctr(model: keras.Model, learning_rate: float, logits: dict[str, bool] | None = None) -> None:
    """Adam + binary cross-entropy, with Keras' (approximate) AUC for progress display (one per output).

    ``logits``: per output name, whether it gives logits (:func:`tfafm.metrics.logit_outputs`; the
    loss and AUC then take them ``from_logits``). None: every output gives probabilities.
    """
    names = output_names(model)  # a dict output's keys, else the output layers' names
    flags = [bool((logits or {}).get(name, False)) for name in names]
    losses = [keras.losses.BinaryCrossentropy(from_logits=flag) for flag in flags]
    aucs = [[keras.metrics.AUC(name="auc", from_logits=flag)] for flag in flags]
    if len(names) == 1:
        losses, aucs = losses[0], aucs[0]
    elif isinstance(output_structure(model), dict):  # matched by key, as the labels are
        losses, aucs = dict(zip(names, losses)), dict(zip(names, aucs))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=losses, metrics=aucs)


def fit(model: keras.Model, bundle: DataBundle, epochs: int, patience: int, verbose: int) -> int:
    """``model.fit`` with early stopping on validation AUC (the first output's); returns the epochs run."""
    callbacks = []
    if patience > 0 and epochs > 1:
        names = output_names(model)
        monitor = f"val_{names[0]}_auc" if len(names) > 1 else "val_auc"
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=patience, restore_best_weights=True))
    history = model.fit(bundle.train, validation_data=bundle.validation, epochs=epochs,
                        callbacks=callbacks, verbose=verbose)
    return len(history.history["loss"])


# Fine-tuned weights are kept only when their validation AUC beats the starting weights' by this many
# standard errors of the paired difference (DeLong): one-sided 5%. Early stopping and this choice both
# look at the validation rows; on a small set a gain under that is as likely noise (on the Criteo sample's
# 920 validation rows, DCN-V2 fine-tuning "gained" there and lost 0.011-0.014 AUC on held-out rows).
FINE_TUNE_MIN_Z = SIGNIFICANT_Z


def fine_tune(
    model: keras.Model, bundle: DataBundle, epochs: int, learning_rate: float,
    patience: int = 1, verbose: int = 0, teacher: keras.Model | None = None,
) -> dict[str, Any]:
    """Fine-tunes a (compressed) model without ever ending worse than it started.

    Runs :func:`fit` (early stopping on validation AUC, best epoch restored),
    then compares the exact validation AUC with the starting point's on the
    same rows (:func:`~tfafm.metrics.paired_auc_difference`) and keeps the
    starting weights unless the gain is significant (``z`` at least
    :data:`FINE_TUNE_MIN_Z`) on the first output and no other output with
    0/1 labels loses beyond noise (``z`` at most ``-FINE_TUNE_MIN_Z``).
    Returns the first output's final exact metrics plus ``auc_gain`` and
    ``gain_z`` (of the fine-tuned weights over the starting ones; ``gain_z``
    None where the difference has no spread) and ``kept`` (whether the
    fine-tuned weights were kept) and ``tuned`` (the fine-tuned weights' own
    metrics, kept or not); with several outputs compared, also
    ``outputs``: ``{name: {auc_gain, gain_z}}`` for each.

    With ``teacher`` (the original model), the training rows' targets are the
    teacher's predicted probabilities instead of their 0/1 labels
    (distillation: the compressed model learns back what compression took
    from the original, not the label noise the original already fitted; the
    validation AUC, early stopping and the keep rule still use the labels).

    ``bundle`` needs ``train`` and ``validation``: datasets of ``(features,
    labels)`` batches, the validation rows in the same order on every pass.

    Example:

    >>> import types, numpy as np, keras, tensorflow as tf, tfafm
    >>> x = np.random.default_rng(0).normal(size=(2048, 32)).astype("float32")
    >>> y = (x[:, :1] + x[:, 1:2] > 0).astype("float32")
    >>> inputs = keras.Input((32,), name="x")
    >>> hidden = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    >>> model.compile("adam", "binary_crossentropy"); _ = model.fit(x, y, epochs=3, verbose=0)
    >>> small, _ = tfafm.compress(model, x, target_ratio=4, progress=False)
    >>> data = types.SimpleNamespace(train=tf.data.Dataset.from_tensor_slices((x, y)).batch(128),
    ...                              validation=tf.data.Dataset.from_tensor_slices((x, y)).batch(512))
    >>> result = tfafm.fine_tune(small, data, epochs=1, learning_rate=1e-3, teacher=model)
    >>> sorted(result)
    ['auc', 'auc_gain', 'gain_z', 'kept', 'logloss', 'positive_rate', 'rows', 'tuned']

    Raises:
        UserError: if the validation rows do not come in the same order on every pass (the
            comparison pairs them).
    """
    raw, labels_by_output = predict_outputs(model, bundle.validation, probabilities=False)
    if labels_by_output is None:
        raise UserError("Fine-tuning needs labelled validation data: expected (features, labels) batches.")
    logits = logit_outputs(model, raw)
    start = as_probabilities(raw, logits)
    first = next(iter(raw))
    labels = labels_by_output[first]
    if not is_binary(labels):
        raise UserError(f"Fine-tuning keeps or drops its weights by the validation AUC of output {first!r}, which "
                        f"needs 0/1 labels of both classes; its labels hold {label_values(labels)}.")
    before = scores(labels, start[first])
    start_weights = model.get_weights()
    compile_for_ctr(model, learning_rate, logits)
    if teacher is not None:
        teacher_raw, _ = predict_outputs(teacher, bundle.validation, probabilities=False)
        bundle = types.SimpleNamespace(train=_distilled(bundle.train, teacher, logit_outputs(teacher, teacher_raw)),
                                       validation=bundle.validation)
    fit(model, bundle, epochs, patience, verbose)
    after, labels_again = predict_outputs(model, bundle.validation)
    if labels_again is None or any(not np.array_equal(labels_by_output[name], labels_again[name])
                                   for name in labels_by_output):
        raise UserError("The validation data gave its rows in another order on a second pass (shuffled?): "
                        "fine-tuning compares the model before and after on the same rows; do not shuffle it.")
    # Every output with 0/1 labels is compared; the first decides, and none may lose beyond noise.
    gains = {name: paired_auc_difference(labels_by_output[name], start[name], after[name])
             for name in start if name == first or is_binary(labels_by_output[name])}
    gain = gains[first]
    kept = gain["z"] >= FINE_TUNE_MIN_Z and all(g["z"] > -FINE_TUNE_MIN_Z for g in gains.values())
    if not kept:
        model.set_weights(start_weights)
    tuned = scores(labels, after[first])
    result = {**(tuned if kept else before), "auc_gain": gain["difference"], "gain_z": _finite(gain["z"]),
              "kept": bool(kept), "tuned": tuned}
    if len(gains) > 1:
        result["outputs"] = {name: {"auc_gain": g["difference"], "gain_z": _finite(g["z"])}
                             for name, g in gains.items()}
    return result


def _finite(z: float) -> float | None:
    return z if np.isfinite(z) else None


def _distilled(train: "tf.data.Dataset", teacher: keras.Model, teacher_logits: dict[str, bool]) -> "tf.data.Dataset":
    """``train``'s ``(features, labels)`` batches as ``(features, the teacher's predicted probabilities)``,
    in the labels' structure (one per output, in the model's output order); ``teacher_logits`` says which
    teacher outputs are logits, turned into probabilities (the targets of a binary cross-entropy)."""
    import tensorflow as tf

    squash = [teacher_logits[name] for name in output_names(teacher)]
    outputs, targets = len(teacher.outputs), len(tf.nest.flatten(train.element_spec[1]))
    if outputs != targets:
        raise UserError(f"Distillation: the teacher {teacher.name!r} has {outputs} output(s), the data "
                        f"{targets} label column(s).")

    def soft(features, labels):
        predictions = teacher(features, training=False)  # a dict flattens in output_names' order
        flat = [tf.cast(tf.reshape(tf.sigmoid(p) if logit else p, tf.shape(y)), y.dtype)
                for p, y, logit in zip(tf.nest.flatten(predictions), tf.nest.flatten(labels), squash)]
        return features, tf.nest.pack_sequence_as(labels, flat)

    return train.map(soft)


def train(
    config: TrainConfig,
    data: str = "synthetic",
    out: str | None = None,
    skip_bad_lines: bool = False,
    verbose: int = 1,
    cache_dir: str | None = None,
    strategy: "tf.distribute.Strategy | None" = None,
) -> TrainResult:
    """Trains ``config.model`` on ``data``, evaluates it exactly and optionally saves a run.

    Args:
        config: model, hyper-parameters and training budget.
        data: a data spec (``synthetic``, ``criteo:PATH``, ``avazu:PATH``,
            ``parquet:PATH``, ``cache:DIR``).
        out: run directory to write (atomically), or None.
        skip_bad_lines: skip malformed input lines instead of failing.
        verbose: Keras ``fit`` verbosity (0: no progress).
        cache_dir: where file specs are cached (see :func:`tfafm.data.load_data`).
        strategy: a ``tf.distribute`` strategy to train under with
            :func:`fit_distributed`; default: the cluster's when ``TF_CONFIG``
            names one (:func:`tfafm.distribute.cluster_strategy`), else plain
            ``model.fit``. Only the chief writes ``out``.
    """
    strategy = strategy if strategy is not None else cluster_strategy()
    if strategy is not None:
        return _train_distributed(config, data, out, verbose, strategy)
    bundle = load_data(data, skip_bad_lines=skip_bad_lines, cache_dir=cache_dir, progress=verbose > 0,
                       **config.data_options())
    keras.utils.set_random_seed(config.seed)
    model = models.build(config.model, bundle.schema, **config.hyperparams)
    compile_for_ctr(model, config.learning_rate)
    epochs_run = fit(model, bundle, config.epochs, config.early_stopping_patience, verbose)
    metrics = evaluate(model, bundle.validation)
    if out is not None:
        _save(out, model, bundle, data, config, metrics, epochs_run)
    return TrainResult(model, bundle, metrics, epochs_run)


def _save(out: str, model: keras.Model, bundle: DataBundle, data: str, config: TrainConfig,
          metrics: dict[str, float], epochs_run: int) -> None:
    info: dict[str, Any] = {
        "kind": "trained", "data": absolute_spec(data), "config": config.to_dict(),
        "metrics": metrics, "epochs_run": epochs_run,
    }
    # Saved without the optimizer's state (Adam's two slots per weight made model.keras 3x its weights, and
    # `tfafm bench RUN RUN-small` a size ratio 3x too large): an uncompiled copy with the trained weights.
    saved = clone(model)
    saved.set_weights(model.get_weights())
    save_run(out, saved, bundle.schema, bundle.preprocessor, info)


def check_cluster_data(data: str, workers: int) -> None:
    """Checks, without running TensorFlow, that ``data`` can be trained on by ``workers`` tasks: a
    prepared cache, intact and up to date, with at least one training shard per worker. Call it before
    waiting for the cluster, so a bad spec fails at once rather than after the wait."""
    _require_cache_spec(data)
    cache = open_cache(data.partition(":")[2], rebuild_stale=False)
    _check_shards(len(cache.shards("train")), workers)


def _require_cache_spec(data: str) -> None:
    if not data.startswith("cache:"):
        raise UserError(
            f"Training on a cluster reads a prepared cache, not {data!r}: run tfafm prepare --data SPEC "
            "--out DIR once (on shared storage), then give every worker --data cache:DIR."
        )


def _check_shards(shards: int, workers: int) -> None:
    if shards < workers:
        raise UserError(
            f"The cache has {shards} training shard(s) for {workers} workers; prepare it with "
            f"--shards N, N a multiple of {workers}."
        )


def _train_distributed(config: TrainConfig, data: str, out: str | None, verbose: int,
                       strategy: "tf.distribute.Strategy") -> TrainResult:
    _require_cache_spec(data)
    bundle = load_data(data, rebuild_stale=False, **config.data_options())
    keras.utils.set_random_seed(config.seed)
    with _cluster_lost():  # every step below may wait on the other tasks
        with strategy.scope():
            model = models.build(config.model, bundle.schema, **config.hyperparams)
            optimizer = keras.optimizers.Adam(config.learning_rate)
        epochs_run = fit_distributed(model, optimizer, bundle, strategy, config.batch_size, config.epochs,
                                     config.early_stopping_patience, verbose)
        trained = _local_copy(model)
    compile_for_ctr(trained, config.learning_rate)
    metrics = evaluate(trained, bundle.validation)
    if out is not None and is_chief():
        _save(out, trained, bundle, data, config, metrics, epochs_run)
    return TrainResult(trained, bundle, metrics, epochs_run)


def _local_copy(model: keras.Model) -> keras.Model:
    """A copy of ``model`` outside any strategy, with its weights. Every worker must call
    this together: reading distributed variables may need all of them."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def worker_shards(bundle: DataBundle, workers: int) -> list[list[int]]:
    """Training shard indices of each worker: shard ``i`` goes to worker ``i % workers``."""
    shards = len(bundle.cache.shards("train"))
    _check_shards(shards, workers)
    return [list(range(worker, shards, workers)) for worker in range(workers)]


def fit_distributed(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, bundle: DataBundle,
    strategy: "tf.distribute.Strategy", batch_size: int, epochs: int, patience: int = 0, verbose: int = 1,
) -> int:
    """Trains ``model`` (built in ``strategy.scope()``) with a custom loop; returns the epochs run.

    Keras 3.15's ``model.fit`` cannot run dict-input models under
    ``MultiWorkerMirroredStrategy`` (it passes the whole batch dict to
    ``strategy.reduce``), so each step is ``strategy.run`` of a gradient step
    on the replica's batch, with the loss summed over the replica's rows and
    divided by the global batch (the optimizer all-reduces the gradients by
    sum), and one ``strategy.reduce`` of the scalar loss. Each worker reads its
    own training shards (:func:`worker_shards`); every worker runs the same
    number of steps, the smallest any worker's rows allow (the few rows beyond
    are left out of that epoch). With ``patience > 0`` and more than one epoch,
    training stops after ``patience`` epochs without a gain in exact validation
    AUC (the workers' mean, so all decide alike) and the best epoch's weights
    are restored.
    """
    import tensorflow as tf

    cache = bundle.cache
    if cache is None:
        raise UserError(f"Distributed training needs cached data, not {bundle.spec!r}.")
    pipelines = max(1, cluster_size())
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(f"batch_size {batch_size} must be a multiple of the {replicas} replicas.")
    per_replica = batch_size // replicas
    local_replicas = max(1, replicas // pipelines)
    assignment = worker_shards(bundle, pipelines)
    shards = cache.shards("train")
    files = cache.verified_files("train")
    steps = min(sum(shards[i]["rows"] for i in mine) // per_replica // local_replicas for mine in assignment)
    if steps < 1:
        raise UserError(f"Too few training rows per worker for a global batch of {batch_size}.")

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        mine = assignment[context.input_pipeline_id]
        return read_dataset([files[i] for i in mine], cache.preprocessor.schema(),
                            sum(shards[i]["rows"] for i in mine), per_replica, drop_remainder=True)

    distributed = strategy.distribute_datasets_from_function(dataset_fn)

    def replica_step(features, labels):
        with tf.GradientTape() as tape:
            predictions = model(features, training=True)
            per_row = keras.losses.binary_crossentropy(labels, predictions)
            loss = tf.nn.compute_average_loss(per_row, global_batch_size=batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    with strategy.scope():
        optimizer.build(model.trainable_variables)  # else the first trace creates variables: traced twice

    # no tensor-dependent Python control flow: AutoGraph's slow source conversion is off
    @tf.function(autograph=False)
    def train_step(iterator):
        features, labels = next(iterator)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(features, labels)),
                               axis=None)

    early_stopping = patience > 0 and epochs > 1
    best_auc, best_weights, waited, epochs_run = -1.0, None, 0, 0
    for epoch in range(epochs):
        iterator = iter(distributed)
        with progress_bar(f"epoch {epoch + 1}/{epochs}", steps, enabled=verbose > 0 and is_chief()) as advance:
            for _ in range(steps):
                train_step(iterator)
                advance()
        epochs_run += 1
        if not early_stopping:
            continue
        auc = _mean_over_replicas(strategy, evaluate(_local_copy(model), bundle.validation)["auc"])
        if auc > best_auc:
            best_auc, best_weights, waited = auc, model.get_weights(), 0
        else:
            waited += 1
            if waited >= patience:
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return epochs_run


@contextlib.contextmanager
def _cluster_lost():
    """Turns the error of a collective whose peer stopped (or stalled past the collective timeout)
    into one :class:`UserError`."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError, tf.errors.AbortedError,
            tf.errors.CancelledError) as error:
        detail = " ".join(re.sub(r"\{\{[^}]*\}\}", "", str(error.message)).split())[:300]
        raise UserError(f"Lost the cluster: another task stopped, or stalled past the collective timeout "
                        f"({type(error).__name__}: {detail}).") from None


def _mean_over_replicas(strategy: "tf.distribute.Strategy", value: float) -> float:
    import tensorflow as tf

    per_replica = strategy.run(lambda: tf.constant(value, tf.float64))
    return float(strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None))
