"""Exact AUC and LogLoss over a whole data set (not Keras' bucketed streaming AUC)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import log_loss, roc_auc_score

from tfafm.compression.keras_graph import model_inputs, pack_inputs
from tfafm.errors import UserError


def predict_with_labels(model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Runs ``model`` over ``(features, labels)`` batches; returns flat probabilities and labels.

    The model runs in one ``tf.function`` traced for any batch size (a short
    last batch does not trace it again).
    """
    specs = [tf.TensorSpec((None, *x.shape[1:]), x.dtype) for x in model.inputs]
    run = tf.function(lambda *flat: model(pack_inputs(model, list(flat)), training=False),
                      input_signature=specs, autograph=False)
    predictions, labels = [], []
    for features, batch_labels in dataset:
        outputs = run(*model_inputs(model, features))
        predictions.append(np.asarray(keras.tree.flatten(outputs)[0]).reshape(-1))
        labels.append(np.asarray(batch_labels).reshape(-1))
    if not predictions:
        raise UserError("Evaluation data is empty: no batch to evaluate.")
    return np.concatenate(predictions), np.concatenate(labels)


def scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """AUC, LogLoss, positive rate and row count of binary ``labels`` vs ``probabilities``."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    if len(np.unique(labels)) < 2:
        raise UserError("AUC needs both positive and negative labels in the evaluation data.")
    return {
        "auc": float(roc_auc_score(labels, probabilities)),
        "logloss": float(log_loss(labels, probabilities, labels=[0.0, 1.0])),
        "positive_rate": float(labels.mean()),
        "rows": int(labels.size),
    }


def evaluate(model, dataset: tf.data.Dataset) -> dict[str, float]:
    """Exact AUC and LogLoss of ``model`` on every row of ``dataset``."""
    probabilities, labels = predict_with_labels(model, dataset)
    return scores(labels, probabilities)
