"""How often each id of a :class:`~tfafm.models.layers.ClipToVocabulary` guard's fields occurs in
calibration data: what the first-order fit (:mod:`tfafm.compression.first_order`) and the pruning of
rare ids' rows (:mod:`tfafm.compression.rare_ids`) weigh ids by."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import numpy as np

from tfafm.compression.calibration import as_dataset
from tfafm.errors import UserError
from tfafm.graph import model_inputs, pack_inputs, split_element

# Calibration rows whose guarded ids are kept side by side (the first-order term's joint fit, at most).
SAMPLE_ROWS = 65_536


@dataclasses.dataclass(frozen=True)
class IdCounts:
    """How often each guarded id of each field occurs in calibration data, and the mean
    Bernoulli Fisher weight ``p (1 - p)`` of the model's predictions there."""

    counts: tuple  # per field, a float64 vector as long as its vocabulary
    fisher_weight: float
    rows: int
    sample: np.ndarray  # (rows kept, fields) int64: the guarded ids of the first SAMPLE_ROWS rows


def count_guarded_ids(model: keras.Model, guard, indices: Sequence[int], data, steps: int | None = None,
                      batch_size: int = 1024) -> IdCounts:
    """Counts the ids that ``guard`` (a :class:`ClipToVocabulary` of ``model``) lets through at each of
    its output ``indices`` (the fields, in that order) over ``data`` (at most ``steps`` batches), and the
    mean Fisher weight ``p (1 - p)`` of the model's prediction (a probability, or ``sigmoid`` of a
    logit) on those rows.

    Raises:
        UserError: ``data`` has no rows.
    """
    probe = keras.Model(model.input, [guard.output[i] for i in indices] + [model.outputs[0]])
    counts = [np.zeros(guard.vocabulary_sizes[i]) for i in indices]
    weight, rows, sample, kept = 0.0, 0, [], 0
    dataset, _ = as_dataset(data, batch_size)
    for step, element in enumerate(dataset):
        if steps is not None and step >= steps:
            break
        results = probe(pack_inputs(model, model_inputs(model, split_element(element)[0])), training=False)
        ids = np.stack([np.asarray(field_ids).reshape(-1) for field_ids in results[:-1]], axis=1).astype(np.int64)
        for field in range(ids.shape[1]):
            counts[field] += np.bincount(ids[:, field], minlength=len(counts[field]))
        if kept < SAMPLE_ROWS:
            sample.append(ids[:SAMPLE_ROWS - kept])
            kept += len(sample[-1])
        output = np.asarray(results[-1], dtype=np.float64).reshape(-1)
        p = output if output.min() >= 0.0 and output.max() <= 1.0 else 1.0 / (1.0 + np.exp(-output))
        weight += float(np.sum(p * (1.0 - p)))
        rows += len(output)
    if rows == 0:
        raise UserError("The calibration data is empty: no ids to count.")
    return IdCounts(tuple(counts), weight / rows, rows, np.concatenate(sample))
