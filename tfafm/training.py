"""Training a model-zoo model on a data spec, with exact validation metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

import keras

from tfafm import models
from tfafm.config import TrainConfig
from tfafm.data import DataBundle, load_data
from tfafm.metrics import evaluate
from tfafm.runs import save_run


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    bundle: DataBundle
    metrics: dict[str, float]
    epochs_run: int


def compile_for_ctr(model: keras.Model, learning_rate: float) -> None:
    """Adam + binary cross-entropy, with Keras' (approximate) AUC for progress display."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )


def fit(model: keras.Model, bundle: DataBundle, epochs: int, patience: int, verbose: int) -> int:
    """``model.fit`` with early stopping on validation AUC; returns the epochs run."""
    callbacks = []
    if patience > 0 and epochs > 1:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=patience, restore_best_weights=True))
    history = model.fit(bundle.train, validation_data=bundle.validation, epochs=epochs,
                        callbacks=callbacks, verbose=verbose)
    return len(history.history["loss"])


def fine_tune(
    model: keras.Model, bundle: DataBundle, epochs: int, learning_rate: float,
    patience: int = 1, verbose: int = 0,
) -> dict[str, float]:
    """Fine-tunes a (compressed) model without ever ending worse than it started.

    Runs :func:`fit` (early stopping on validation AUC, best epoch restored),
    then compares the exact validation AUC with the starting point's and keeps
    the starting weights if no epoch beat them. Returns the final exact metrics.
    """
    before = evaluate(model, bundle.validation)
    start_weights = model.get_weights()
    compile_for_ctr(model, learning_rate)
    fit(model, bundle, epochs, patience, verbose)
    after = evaluate(model, bundle.validation)
    if after["auc"] < before["auc"]:
        model.set_weights(start_weights)
        return before
    return after


def train(
    config: TrainConfig,
    data: str = "synthetic",
    out: str | None = None,
    skip_bad_lines: bool = False,
    verbose: int = 1,
) -> TrainResult:
    """Trains ``config.model`` on ``data``, evaluates it exactly and optionally saves a run.

    Args:
        config: model, hyper-parameters and training budget.
        data: a data spec (``synthetic``, ``criteo:PATH``, ``avazu:PATH``).
        out: run directory to write (atomically), or None.
        skip_bad_lines: skip malformed input lines instead of failing.
        verbose: Keras ``fit`` verbosity.
    """
    bundle = load_data(data, skip_bad_lines=skip_bad_lines, **config.data_options())
    keras.utils.set_random_seed(config.seed)
    model = models.build(config.model, bundle.schema, **config.hyperparams)
    compile_for_ctr(model, config.learning_rate)
    epochs_run = fit(model, bundle, config.epochs, config.early_stopping_patience, verbose)
    metrics = evaluate(model, bundle.validation)
    if out is not None:
        info: dict[str, Any] = {
            "kind": "trained", "data": data, "config": config.to_dict(),
            "metrics": metrics, "epochs_run": epochs_run,
        }
        save_run(out, model, bundle.schema, bundle.preprocessor, info)
    return TrainResult(model, bundle, metrics, epochs_run)
