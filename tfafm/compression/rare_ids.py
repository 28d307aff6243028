"""Rare ids share one row: the tails of frequency-ordered vocabularies pruned (``compress(id_coverage=)``).

tfafm's vocabularies number a field's values by frequency in the training data
(id 1 the most frequent, 0 out of vocabulary), as most CTR pipelines do. Most of
a table's rows then belong to ids that are rarely looked up: on the synthetic
data, the ids covering 95% of the calibration lookups are 36% of the rows (on
the Criteo sample, whose vocabularies already drop values seen fewer than a few
times, 72%). For each field behind a :class:`~tfafm.models.layers.ClipToVocabulary`
guard, pruning keeps the shortest prefix of ids that covers ``coverage`` of
that field's lookups in calibration data; the guard, given the shorter
vocabulary, sends every other id to row 0 (no op is added: it compares ids with
the vocabulary size already), and row 0 becomes the lookup-weighted mean of
itself and the pruned rows, so what those ids read is their average and the
field's mean output does not move. The same holds for the field's weights in a
first-order :class:`~tfafm.models.layers.LinearTerms`.

Whatever the order of the ids, at most ``1 - coverage`` of a field's
calibration lookups read the shared row: ids in another order only make the
kept prefix longer. A field is pruned only where every reader of its guarded ids
is a plain ``Embedding`` (no ``mask_zero``, not quantized, no LoRA) or a
``LinearTerms``; any other reader (an op on the ids, a model output) keeps it
whole.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfafm_choices import ID_COVERAGE, ID_COVERAGES
from tfafm.compression.check import run_checked
from tfafm.compression.id_counts import count_guarded_ids
from tfafm.compression.rewrite import rebuild
from tfafm.errors import UserError
from tfafm.graph import call_counts, is_graph_model, model_inputs, pack_inputs, readers
from tfafm.layers.lookup import InRangeEmbedding
from tfafm.models.layers import ClipToVocabulary, LinearTerms

_PLAIN_LOOKUPS = (keras.layers.Embedding, InRangeEmbedding)
# compress()'s default id_coverage, and the coverages "auto" tries on validation data (every row kept first).
DEFAULT_COVERAGE = ID_COVERAGE
AUTO_LEVELS = ID_COVERAGES


@dataclasses.dataclass(frozen=True)
class GuardedFields:
    """The fields of one :class:`ClipToVocabulary` guard that can be pruned.

    Attributes:
        guard: the guard layer.
        indices: its outputs (fields) whose every reader is a plain lookup or a ``LinearTerms``.
        embeddings: per index in ``indices``, the embedding layers reading it.
        linear: ``(LinearTerms, guard output of each of its fields)`` pairs reading the guard.
    """

    guard: ClipToVocabulary
    indices: tuple
    embeddings: tuple
    linear: tuple


@dataclasses.dataclass(frozen=True)
class Pruning:
    """What :func:`prune` did: table rows before and after, over ``fields`` pruned fields."""

    coverage: float
    fields: int
    rows_before: int
    rows_after: int

    def note(self) -> str:
        """One line for the compression report."""
        return (f"rare ids: {self.fields} field(s) keep {self.rows_after:,} of {self.rows_before:,} table rows, "
                f"in each the most frequent ids covering {self.coverage:.1%} of its calibration lookups; "
                "every other id reads row 0, which holds the lookup-weighted mean of the rows it replaces "
                "(id_coverage=1 keeps every row)")


def find_fields(model: keras.Model) -> list[GuardedFields]:
    """The prunable fields of each :class:`ClipToVocabulary` guard (called once) of a functional
    ``model``'s own graph; guards with none are left out."""
    if not is_graph_model(model) or isinstance(model, keras.Sequential):
        return []
    calls, reading = call_counts(model), readers(model)
    layers = {layer.name: layer for layer in model.layers}
    found = []
    for guard in model.layers:
        if type(guard) is not ClipToVocabulary or calls.get(id(guard)) != 1:
            continue
        sizes = guard.vocabulary_sizes
        linear = _linear_readers(model, guard, layers, calls)
        linear_names = {layer.name for layer, _ in linear}
        indices, embeddings = [], []
        for index, size in enumerate(sizes):
            names = reading.get((guard.name, index), [])
            lookups = [layers.get(name) for name in names if name not in linear_names]
            if names and all(_plain_lookup(layer, calls, size) for layer in lookups) \
                    and len({id(layer) for layer in lookups}) == len(lookups):
                indices.append(index)
                embeddings.append(tuple(lookups))
        if indices:
            found.append(GuardedFields(guard, tuple(indices), tuple(embeddings), tuple(linear)))
    return found


def _plain_lookup(layer, calls: dict[int, int], vocabulary: int) -> bool:
    return (type(layer) in _PLAIN_LOOKUPS and calls.get(id(layer)) == 1 and not layer.mask_zero
            and not layer.quantization_mode and not layer.lora_enabled and layer.input_dim == vocabulary)


def _linear_readers(model: keras.Model, guard, layers: dict, calls: dict[int, int]) -> list[tuple]:
    """``LinearTerms`` called once on this guard's outputs only, with matching vocabularies."""
    found = []
    for entry in model.get_config()["layers"]:
        layer = layers.get(entry["name"])
        if type(layer) is not LinearTerms or calls.get(id(layer)) != 1:
            continue
        sources = [value["config"]["keras_history"] for value in entry["inbound_nodes"][0]["args"][0]]
        if all(name == guard.name for name, _, _ in sources):
            indices = tuple(index for _, _, index in sources)
            if list(layer.vocabulary_sizes) == [guard.vocabulary_sizes[i] for i in indices]:
                found.append((layer, indices))
    return found


def check_coverage(coverage) -> None:
    """Raises a :class:`UserError` unless ``coverage`` is ``"auto"`` or a share in (0, 1]."""
    if coverage == "auto":
        return
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0.0 < coverage <= 1.0:
        raise UserError(f"id_coverage must be 'auto' or a share in (0, 1] (1 keeps every row), got {coverage!r}.")


def levels(coverage) -> tuple[float, ...]:
    """The coverages ``compress(id_coverage=coverage)`` tries: :data:`AUTO_LEVELS` for ``"auto"``."""
    check_coverage(coverage)
    return AUTO_LEVELS if coverage == "auto" else (float(coverage),)


def kept_rows(counts: np.ndarray, coverage: float) -> int:
    """The shortest prefix of ids (at least row 0) whose counts cover ``coverage`` of the total."""
    total = float(np.sum(counts))
    if total <= 0 or coverage >= 1.0:
        return len(counts)
    share = np.cumsum(counts) / total
    return int(min(len(counts), max(1, np.searchsorted(share, coverage * (1 - 1e-12)) + 1)))


def shared_row(rows: np.ndarray, counts: np.ndarray, kept: int) -> np.ndarray:
    """Row 0 of a table pruned to ``kept`` rows: the count-weighted mean of row 0 and rows ``kept:``
    (row 0 as it was when none of them was counted)."""
    merged = np.r_[0, np.arange(kept, len(rows))]
    weights = counts[merged].astype(np.float64)
    if weights.sum() <= 0:
        return rows[0]
    return (weights @ rows[merged].astype(np.float64) / weights.sum()).astype(rows.dtype)


def _pruned_table(table: np.ndarray, counts: np.ndarray, kept: int) -> np.ndarray:
    pruned = table[:kept].copy()
    pruned[0] = shared_row(table, counts, kept)
    return pruned


@dataclasses.dataclass(frozen=True)
class CountedFields:
    """A model's prunable fields (per guard) and how often their ids occur in calibration data."""

    fields: tuple  # of GuardedFields
    counts: tuple  # of IdCounts, per guard: one vector per index in its ``indices``


def count(model: keras.Model, data, steps: int | None = None) -> CountedFields | None:
    """The prunable fields of ``model`` with their ids counted over ``data`` (at most ``steps``
    batches, one pass per guard), or None where it has none."""
    found = find_fields(model)
    if not found:
        return None
    return CountedFields(tuple(found), tuple(count_guarded_ids(model, plan.guard, plan.indices, data, steps)
                                             for plan in found))


def prune(model: keras.Model, counted: CountedFields, coverage: float) -> tuple[keras.Model, Pruning | None]:
    """``model`` with the rows of its fields' rare ids merged into row 0 (see the module docstring), by
    the ids ``counted`` on calibration data. Returns the model itself and None where nothing would be
    pruned."""
    check_coverage(coverage)
    replacements, fields, before, after = {}, 0, 0, 0
    for plan, counts in zip(counted.fields, counted.counts):
        sizes = list(plan.guard.vocabulary_sizes)
        field_counts = {}
        for index, field in zip(plan.indices, counts.counts):
            kept = kept_rows(field, coverage)
            if kept < sizes[index]:
                field_counts[index] = field
                fields, before, after = fields + 1, before + sizes[index], after + kept
                sizes[index] = kept
        if not field_counts:
            continue
        replacements[id(plan.guard)] = ClipToVocabulary.from_config(
            {**plan.guard.get_config(), "vocabulary_sizes": sizes, "pruned_from": plan.guard.source_sizes})
        for index, lookups in zip(plan.indices, plan.embeddings):
            for layer in lookups if index in field_counts else ():
                replacements[id(layer)] = _pruned_lookup(layer, field_counts[index], sizes[index])
        for layer, indices in plan.linear:
            replacements[id(layer)] = _pruned_linear(layer, indices, field_counts, sizes)
    if not replacements:
        return model, None
    pruned, _, _ = rebuild(model, replacements)
    return pruned, Pruning(coverage, fields, before, after)


def check(model: keras.Model, pruned: keras.Model, counted: CountedFields, pruning: Pruning,
          rows: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> int:
    """Checks that ``pruned`` predicts what ``model`` predicts (``reference``, its outputs on ``rows``)
    on the rows whose ids all kept their own rows (every pruned field's id in ``[1, kept)``: row 0
    changed); returns how many rows that was (0: none of ``rows`` qualifies, nothing checked).

    Raises:
        UserError: the predictions differ there (a table or first-order row moved): the pruned model is
            not handed back.
    """
    kept = [pruned.get_layer(plan.guard.name).vocabulary_sizes[index]
            for plan in counted.fields for index in plan.indices]
    probe = keras.Model(model.input, [plan.guard.output[index] for plan in counted.fields for index in plan.indices])
    ids = keras.tree.flatten(probe(pack_inputs(model, model_inputs(model, rows)), training=False))
    ids = np.stack([np.asarray(x).reshape(-1) for x in ids], axis=1)
    inside = np.all((ids >= 1) & (ids < np.array(kept)), axis=1)
    if not inside.any():
        return 0
    got = run_checked(pruned, {name: values[inside] for name, values in rows.items()}, "The pruned model")
    for name, expected in reference.items():
        expected = expected[inside]
        difference = float(np.max(np.abs(got[name].reshape(expected.shape) - expected)))
        if difference > 1e-4 * max(1.0, float(np.max(np.abs(expected)))):
            raise UserError(f"Pruning the rows of rare ids changed output {name!r} on {int(inside.sum())} sample "
                            f"rows whose ids all kept their rows (max abs diff {difference:.3g}; "
                            f"{pruning.note().split(';')[0]}): the pruned model is not handed back.")
    return int(inside.sum())


def _pruned_lookup(layer, counts: np.ndarray, kept: int):
    copy = layer.__class__.from_config({**layer.get_config(), "input_dim": kept})
    copy.build((None,))
    copy.embeddings.assign(_pruned_table(layer.embeddings.numpy(), counts, kept))
    return copy


def _pruned_linear(layer: LinearTerms, indices: tuple, field_counts: dict, sizes: list[int]) -> LinearTerms:
    table = layer.weights_table.numpy()
    pieces = []
    for field, index in enumerate(indices):
        rows = table[layer.offsets[field]:layer.offsets[field] + layer.vocabulary_sizes[field]]
        pieces.append(_pruned_table(rows, field_counts[index], sizes[index]) if index in field_counts else rows)
    copy = LinearTerms.from_config({**layer.get_config(), "vocabulary_sizes": [sizes[i] for i in indices]})
    copy.build()
    copy.weights_table.assign(np.concatenate(pieces))
    return copy
