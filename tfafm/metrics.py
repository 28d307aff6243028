"""Exact AUC and LogLoss over a whole data set (not Keras' bucketed streaming AUC), and how
closely two models' predictions agree."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import log_loss, roc_auc_score

from tfafm.graph import model_inputs, output_activations, output_names, pack_inputs, split_element
from tfafm.errors import UserError


def _named(model, values, what: str) -> dict[str, np.ndarray]:
    """Model outputs (or labels laid out like them) as ``{output name: flat array}``."""
    names = output_names(model)
    if isinstance(values, dict):
        missing = [name for name in names if name not in values]
        if missing:
            raise UserError(f"The {what} have no entry for output(s) {missing} of model {model.name!r} "
                            f"(they have {sorted(values)}).")
        return {name: np.asarray(values[name]).reshape(-1) for name in names}
    flat = keras.tree.flatten(values)
    if len(flat) != len(names):
        raise UserError(f"Model {model.name!r} has {len(names)} output(s) {names}; the {what} give {len(flat)}.")
    return {name: np.asarray(value).reshape(-1) for name, value in zip(names, flat)}


# Final activations whose outputs are probabilities; a "linear" one gives logits.
_PROBABILITY_ACTIVATIONS = ("sigmoid", "hard_sigmoid", "softmax")


def logit_outputs(model, outputs: dict[str, np.ndarray]) -> dict[str, bool]:
    """Per output of ``model``, whether it gives logits rather than probabilities: where its last
    layer applies no activation (``Dense(1)`` trained with ``from_logits=True``), or, where the graph
    does not say, where ``outputs`` (its predictions) leave ``[0, 1]`` (values inside it are read as
    probabilities, with a warning: logits can lie there too)."""
    activations = dict(zip(output_names(model), output_activations(model)))
    flags = {}
    for name, values in outputs.items():
        activation = activations.get(name)
        if activation in _PROBABILITY_ACTIVATIONS:
            flags[name] = False
        elif activation == "linear":
            flags[name] = True
        else:
            flags[name] = bool(values.size) and bool(np.min(values) < 0.0 or np.max(values) > 1.0)
            if values.size and not flags[name]:
                warnings.warn(f"Output {name!r} of model {model.name!r}: its last layer does not say whether it gives "
                              "probabilities or logits, and its values lie in [0, 1]: read as probabilities (end the "
                              "model with a sigmoid Dense or Activation to make it certain).", UserWarning,
                              stacklevel=2)
    return flags


def sigmoid(values: np.ndarray) -> np.ndarray:
    """The logistic function in float64, without overflow warnings."""
    values = np.asarray(values, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * values))


def as_probabilities(outputs: dict[str, np.ndarray], logits: dict[str, bool]) -> dict[str, np.ndarray]:
    """``outputs`` with each output of logits (per ``logits``, from :func:`logit_outputs`) as its sigmoid."""
    return {name: sigmoid(values) if logits[name] else values for name, values in outputs.items()}


def predict_outputs(model, data, probabilities: bool = True) -> tuple[dict[str, np.ndarray],
                                                                        dict[str, np.ndarray] | None]:
    """Runs ``model`` over every batch of ``data``; returns its outputs and the labels, each as
    ``{output name: flat array}`` (labels ``None`` when ``data`` has none).

    ``data`` is a ``tf.data.Dataset`` of feature batches or ``(features,
    labels)`` batches (labels: one array, or a dict / list per output), or a
    ``(features, labels)`` pair of arrays. The model runs in one
    ``tf.function`` traced for any batch size. With ``probabilities``, an
    output of logits (:func:`logit_outputs`) is returned as its sigmoid, so
    that AUC, LogLoss and comparisons see probabilities whatever the model's
    last layer (not one whose labels are other than 0/1: a regression, such
    as a rating, stays as it is); otherwise the outputs are as the model
    gives them.
    """
    specs = [tf.TensorSpec((None, *x.shape[1:]), x.dtype) for x in model.inputs]
    run = tf.function(lambda *flat: model(pack_inputs(model, list(flat)), training=False),
                      input_signature=specs, autograph=False)
    batches = data if isinstance(data, tf.data.Dataset) else [data]
    outputs: list[dict[str, np.ndarray]] = []
    labels: list[dict[str, np.ndarray]] = []
    weighted = False
    for element in batches:
        features, batch_labels, weights = split_element(element)
        weighted = weighted or weights is not None
        outputs.append(_named(model, run(*model_inputs(model, features)), "outputs"))
        if batch_labels is not None:
            labels.append(_named(model, batch_labels, "labels"))
    if not outputs:
        raise UserError("Evaluation data is empty: no batch to evaluate.")
    if weighted and labels:
        warnings.warn("The evaluation data carries sample weights, which tfafm does not use: its AUC, LogLoss and "
                      "comparisons count every row once.", UserWarning, stacklevel=2)
    if labels and len(labels) != len(outputs):
        raise UserError("Evaluation data has labels in some batches only.")
    joined = {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}
    joined_labels = {name: np.concatenate([b[name] for b in labels]) for name in labels[0]} if labels else None
    if probabilities:
        logits = logit_outputs(model, joined)
        if joined_labels is not None:  # a linear output with labels other than 0/1 is a regression, not logits
            logits = {name: flag and bool(np.isin(joined_labels[name], (0.0, 1.0)).all())
                      for name, flag in logits.items()}
        joined = as_probabilities(joined, logits)
    return joined, joined_labels


# Mean prediction and label positive rate further apart than this factor suggest labels paired with another output.
LABEL_RATE_FACTOR = 3.0


def warn_if_labels_look_paired_wrongly(model, outputs: dict[str, np.ndarray],
                                       labels: dict[str, np.ndarray] | None) -> None:
    """Warns, per output with 0/1 labels, where the model's mean prediction and the labels' positive rate are
    more than :data:`LABEL_RATE_FACTOR` apart: labels paired with another output (a list of label columns pairs
    with the outputs in Keras' order, a dict output's keys sorted), or a model trained on resampled rows."""
    for name, values in outputs.items():
        truth = None if labels is None else labels.get(name)
        if truth is None or not values.size or not is_binary(truth):
            continue
        mean, rate = float(np.mean(values)), float(np.mean(truth))
        if mean <= 0.0 or not 1.0 / LABEL_RATE_FACTOR <= mean / rate <= LABEL_RATE_FACTOR:
            warnings.warn(f"Output {name!r} of model {model.name!r} predicts a mean of {mean:.4g} on these rows where "
                          f"its labels' positive rate is {rate:.4g}: check that each label column is paired with its "
                          f"output (in the order {list(outputs)}), or that the model was not trained on resampled "
                          "rows.", UserWarning, stacklevel=2)


def predict_with_labels(model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Flat probabilities and labels of a single-output model over ``(features, labels)`` batches."""
    outputs, labels = predict_outputs(model, dataset)
    if labels is None:
        raise UserError("Evaluation data has no labels: expected (features, labels) batches.")
    name = next(iter(outputs))
    return outputs[name], labels[name]


def is_binary(labels: np.ndarray) -> bool:
    """Whether ``labels`` are 0/1 with both classes present (what AUC and LogLoss score)."""
    values = np.unique(labels)
    return len(values) == 2 and set(values.tolist()) <= {0.0, 1.0}


def label_values(labels: np.ndarray) -> str:
    """What ``labels`` hold, for a message: ``"3 distinct value(s): -1, 0, 1"``."""
    values = np.unique(labels)
    shown = ", ".join(f"{v:g}" for v in values[:5])
    return f"{len(values)} distinct value(s): {shown}{', ...' if len(values) > 5 else ''}"


def scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """AUC, LogLoss, positive rate and row count of binary ``labels`` vs ``probabilities``.

    Raises:
        UserError: labels other than 0/1 (soft, missing, -1/1), one class only, predictions outside
            ``[0, 1]`` (logits) or not finite.

    >>> result = scores([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> result["auc"], result["rows"]
    (0.75, 4)
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if not set(np.unique(labels).tolist()) <= {0.0, 1.0}:
        raise UserError(f"AUC and LogLoss score 0/1 labels; these hold {label_values(labels)}.")
    if len(np.unique(labels)) < 2:
        raise UserError("AUC needs both positive and negative labels in the evaluation data.")
    if not np.all(np.isfinite(probabilities)):
        raise UserError(f"{int(np.sum(~np.isfinite(probabilities)))} of {probabilities.size} predictions are NaN or "
                        f"infinite: AUC and LogLoss are undefined.")
    if probabilities.min() < 0.0 or probabilities.max() > 1.0:
        raise UserError(f"Predictions from {probabilities.min():.4g} to {probabilities.max():.4g} are not "
                        f"probabilities: score the sigmoid of logits (tfafm.metrics.predict_outputs does).")
    return {
        "auc": float(roc_auc_score(labels, probabilities)),  # ranks: never clipped (clipping ties them)
        "logloss": float(log_loss(labels, np.clip(probabilities, 1e-7, 1 - 1e-7), labels=[0.0, 1.0])),
        "positive_rate": float(labels.mean()),
        "rows": int(labels.size),
    }


def evaluate(model, dataset: tf.data.Dataset) -> dict[str, float]:
    """Exact AUC and LogLoss of ``model``'s (first) output on every row of ``dataset``."""
    probabilities, labels = predict_with_labels(model, dataset)
    return scores(labels, probabilities)


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as used by Spearman's rho."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    result = np.empty(len(values))
    result[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return result


# A paired AUC gain (DeLong, below) counts as more than noise from this many standard errors: one-sided 5%.
SIGNIFICANT_Z = 1.645


def paired_auc_difference(labels: np.ndarray, reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """``AUC(candidate) - AUC(reference)`` on the same rows, with the standard error of that
    difference by DeLong's test for correlated ROC curves (DeLong, DeLong & Clarke-Pearson,
    1988; midrank form of Sun & Xu, 2014) and ``z = difference / std_error``.

    Two models scored on the same rows make correlated errors, so their AUC
    difference is much less noisy than either AUC: this is the test that says
    whether a change of a few 0.001 on a validation set is more than noise.

    >>> labels = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    >>> before = [0.1, 0.5, 0.4, 0.8, 0.3, 0.6, 0.7, 0.2]
    >>> after = [0.1, 0.3, 0.4, 0.8, 0.2, 0.6, 0.5, 0.7]
    >>> result = paired_auc_difference(labels, before, after)  # AUC 0.5625 -> 0.875
    >>> round(result["difference"], 4), round(result["z"], 2)  # a large gain, but on 8 rows: not significant
    (0.3125, 1.58)
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    positive = labels > 0.5
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise UserError(f"A paired AUC test needs at least two positive and two negative labels, got {m} and {n}.")
    per_model = []
    for predictions in (reference, candidate):
        predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
        if predictions.shape != labels.shape:
            raise UserError(f"{predictions.size} predictions for {labels.size} labels.")
        x, y = predictions[positive], predictions[~positive]
        joint = ranks(np.concatenate([x, y]))
        # Per positive: the share of negatives it outranks; per negative: the share of positives
        # that outrank it (ties count half). Their means are the AUC.
        per_positive = (joint[:m] - ranks(x)) / n
        per_negative = 1.0 - (joint[m:] - ranks(y)) / m
        per_model.append((per_positive, per_negative))
    difference = float(per_model[1][0].mean() - per_model[0][0].mean())
    variance = (np.var(per_model[1][0] - per_model[0][0], ddof=1) / m
                + np.var(per_model[1][1] - per_model[0][1], ddof=1) / n)
    error = float(np.sqrt(max(variance, 0.0)))
    z = difference / error if error > 0 else (0.0 if difference == 0 else float(np.sign(difference) * np.inf))
    return {"difference": difference, "std_error": error, "z": float(z)}


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """How closely ``candidate`` predictions follow ``reference`` ones on the same rows: mean and
    max absolute difference, and Spearman's rank correlation (1.0 when both are constant).

    >>> result = agreement([0.1, 0.4, 0.2, 0.9], [0.2, 0.3, 0.25, 1.0])
    >>> round(result["max_abs_diff"], 3), result["rank_correlation"]
    (0.1, 1.0)
    """
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    candidate = np.asarray(candidate, dtype=np.float64).reshape(-1)
    if reference.shape != candidate.shape:
        raise ValueError(f"agreement(): {reference.shape} vs {candidate.shape} predictions.")
    difference = np.abs(reference - candidate)
    a, b = ranks(reference), ranks(candidate)
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    if scale > 0:
        correlation = float((a * b).sum() / scale)
    else:
        correlation = 1.0 if np.array_equal(a, b) else 0.0
    return {"mean_abs_diff": float(difference.mean()), "max_abs_diff": float(difference.max()),
            "rank_correlation": correlation, "rows": int(reference.size)}
