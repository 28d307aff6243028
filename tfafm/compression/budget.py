"""What compression costs in accuracy, and the smallest model within an accuracy budget.

:func:`compare_on` evaluates the original and the compressed model on the same
held-out rows (AUC and LogLoss per output with labels, and how closely their
predictions agree). :func:`smallest_within_budget` searches the compression
ratio for the smallest model, in the bytes of the quantization it will be
exported with, whose validation AUC stays within ``max_auc_drop`` of the
original's: it doubles the ratio from 2 until the budget breaks (or the
allocator cannot go further), then bisects between the last ratio that held
and the first that did not, all from one calibration, in at most
:data:`MAX_EVALUATIONS` evaluations.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from tfafm.compression.report import estimated_file_bytes
from tfafm.errors import UserError
from tfafm.metrics import (SIGNIFICANT_Z, agreement, is_binary, label_values, paired_auc_difference,
                           predict_outputs, scores, warn_if_labels_look_paired_wrongly)

MAX_EVALUATIONS = 10
FIRST_RATIOS = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # doubled until the budget breaks
BELOW_TWO = (1.5, 1.25)  # tried when even 2x breaks it
RESOLUTION = 1.15  # bisection stops when the ratios bracketing the answer are this close


def _scored(outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray] | None) -> dict[str, dict]:
    """AUC and LogLoss of every output whose labels are 0/1 with both classes present."""
    if labels is None:
        return {}
    return {name: scores(labels[name], outputs[name]) for name in outputs if is_binary(labels[name])}


def compare_on(model, compressed, data) -> dict[str, Any]:
    """The original ``model`` and ``compressed`` evaluated on the same rows of ``data``.

    Returns ``{"rows": n, "outputs": {name: {"original": {auc, logloss, ...} or None,
    "compressed": ..., "auc_drop": float or None, "agreement": {mean_abs_diff,
    max_abs_diff, rank_correlation, rows}}}}``; AUC and LogLoss where the output
    has 0/1 labels.
    """
    reference, labels = predict_outputs(model, data)
    warn_if_labels_look_paired_wrongly(model, reference, labels)
    return _comparison(reference, labels, predict_outputs(compressed, data)[0])


def _comparison(reference, labels, candidate) -> dict[str, Any]:
    before, after = _scored(reference, labels), _scored(candidate, labels)
    outputs = {}
    for name in reference:
        original, new = before.get(name), after.get(name)
        outputs[name] = {
            "original": original, "compressed": new,
            "auc_drop": None if original is None else original["auc"] - new["auc"],
            "agreement": agreement(reference[name], candidate[name]),
        }
        if labels is not None and original is None:  # said, not left as blank cells
            outputs[name]["unscored"] = (f"its labels hold {label_values(labels[name])}; AUC and LogLoss score 0/1 "
                                         "labels of both classes")
    return {"rows": int(len(next(iter(reference.values())))), "outputs": outputs}


def sample_agreement(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], rows: int,
                     source: str) -> dict[str, Any]:
    """How closely the compressed model follows the original on the rows it was checked on."""
    return {"rows": rows, "source": source,
            "outputs": {name: agreement(reference[name], candidate[name]) for name in reference}}


@dataclasses.dataclass
class Candidate:
    """One ratio the search tried."""

    ratio: float
    ranks: dict[str, int] | None
    params: int | None
    file_bytes: int | None
    validation: dict[str, Any] | None
    auc_drop: float | None  # the largest over the outputs with labels
    variants: tuple = ()  # (label, auc_drop or None: out of reach) of each variant tried, when there were several

    @property
    def reachable(self) -> bool:
        return self.ranks is not None

    def within(self, max_auc_drop: float) -> bool:
        return self.reachable and self.auc_drop <= max_auc_drop + 1e-12

    def row(self, max_auc_drop: float) -> dict[str, Any]:
        """The frontier's row: AUC and LogLoss of the output whose AUC drop decides (the largest), named."""
        outputs = self.validation["outputs"] if self.validation else {}
        drops = {name: o["auc_drop"] for name, o in outputs.items() if o.get("auc_drop") is not None}
        output = max(drops, key=drops.get) if drops else next(iter(outputs), None)
        compressed = (outputs.get(output) or {}).get("compressed") or {}
        return {"ratio": self.ratio, "params": self.params, "file_bytes": self.file_bytes, "output": output,
                "auc": compressed.get("auc"), "logloss": compressed.get("logloss"), "auc_drop": self.auc_drop,
                "within_budget": self.within(max_auc_drop), "reachable": self.reachable}


@dataclasses.dataclass
class BudgetSearch:
    """The ratios tried, in order, and the one chosen."""

    max_auc_drop: float
    quantization: str | None
    original: dict[str, dict]
    original_bytes: int
    candidates: list[Candidate]
    chosen: Candidate

    def summary(self) -> dict[str, Any]:
        return {
            "max_auc_drop": self.max_auc_drop, "quantization": self.quantization or "float32",
            "evaluations": sum(c.reachable for c in self.candidates), "chosen_ratio": self.chosen.ratio,
            "original_file_bytes": self.original_bytes, "original": self.original,
            "frontier": [c.row(self.max_auc_drop) for c in self.candidates],
        }


def labelled(original, validation_data) -> tuple[dict, dict] | None:
    """The original's predictions on ``validation_data`` and its labels, or None where no output
    has 0/1 labels with both classes present."""
    reference, labels = predict_outputs(original, validation_data)
    warn_if_labels_look_paired_wrongly(original, reference, labels)
    return (reference, labels) if _scored(reference, labels) else None


# Fewest validation rows (and of each class) that method="auto" and id_coverage="auto" choose on: on 33 rows a
# weight-SVD model whose predictions followed the original's with rank correlation 0.44 "gained" 0.21 AUC.
MIN_CHOICE_ROWS = 200
MIN_CHOICE_CLASS = 20


def too_few_to_choose(labels: dict[str, np.ndarray]) -> str | None:
    """Why the labelled validation rows are too few to choose between compressions on, or None."""
    for name, values in labels.items():
        if not is_binary(values):
            continue
        positives = int(np.sum(values > 0.5))
        if len(values) < MIN_CHOICE_ROWS or min(positives, len(values) - positives) < MIN_CHOICE_CLASS:
            return (f"{len(values):,} validation rows ({positives:,} positive) on output {name!r} are too few to "
                    f"choose on (at least {MIN_CHOICE_ROWS} rows and {MIN_CHOICE_CLASS} of each class)")
        return None
    return None


def best_of(plans, ratio: float, validation_data, reference, labels, quantization: str | None) -> Candidate:
    """Each of ``plans`` (variants of one calibrated compression, see :mod:`tfafm.compression.api`)
    allocated at ``ratio``, built and evaluated on ``validation_data``: the one with the smallest
    AUC drop (the first on a tie), unreachable where none reaches ``ratio``. A plan marked
    ``challenger`` (another method beside the default) replaces the best before it only where it
    is better beyond noise (:func:`_beats`)."""
    best, best_predictions, variants = None, None, []
    for plan in plans:
        try:
            ranks = plan.ranks_for_ratio(ratio)
        except UserError:  # out of the allocator's reach
            variants.append((plan.label, None))
            continue
        compressed, _ = plan.build(ranks)
        predictions = predict_outputs(compressed, validation_data)[0]
        comparison = _comparison(reference, labels, predictions)
        drops = [o["auc_drop"] for o in comparison["outputs"].values() if o["auc_drop"] is not None]
        candidate = Candidate(ratio, ranks, compressed.count_params(), estimated_file_bytes(compressed, quantization),
                              comparison, max(drops))
        del compressed
        variants.append((plan.label, candidate.auc_drop))
        if best is None or (_beats(candidate, predictions, best, best_predictions, labels)
                            if getattr(plan, "challenger", False) else candidate.auc_drop < best.auc_drop):
            best, best_predictions = candidate, predictions
    if best is None:
        return Candidate(ratio, None, None, None, None, None)
    return dataclasses.replace(best, variants=tuple(variants) if len(plans) > 1 else ())


def _beats(challenger: Candidate, predictions, incumbent: Candidate, incumbent_predictions, labels) -> bool:
    """Whether ``challenger`` is better than ``incumbent`` on every output with 0/1 labels beyond
    noise: its AUC higher by at least :data:`~tfafm.metrics.SIGNIFICANT_Z` standard errors of the
    paired difference (DeLong, on the same rows) and its LogLoss no higher (a model that ranks a
    little better by chance but whose probabilities are worse is not taken)."""
    for name, output in challenger.validation["outputs"].items():
        if output["compressed"] is None:
            continue
        held = incumbent.validation["outputs"][name]["compressed"]
        try:
            gain = paired_auc_difference(labels[name], incumbent_predictions[name], predictions[name])
        except UserError:  # too few positives or negatives to tell
            return False
        if not (gain["z"] >= SIGNIFICANT_Z and output["compressed"]["logloss"] <= held["logloss"]):
            return False
    return True


def smallest_within_budget(plans, validation_data, max_auc_drop: float, quantization: str | None,
                           validation: tuple[dict, dict] | None = None) -> BudgetSearch:
    """Searches ``plans`` (variants of one calibrated compression, see :mod:`tfafm.compression.api`;
    at each ratio the best of them on ``validation_data``) for the smallest model whose AUC drop
    on ``validation_data`` is at most ``max_auc_drop``; ``validation``: the original's predictions
    and labels there (:func:`labelled`), if already computed.

    Raises:
        UserError: the validation data has no 0/1 labels, or not even a 1.25x
            compression stays within the budget.
    """
    found = validation if validation is not None else labelled(plans[0].original, validation_data)
    if found is None:
        raise UserError("max_auc_drop needs validation_data whose labels are 0/1 clicks with both classes present.")
    reference, labels = found
    original = _scored(reference, labels)
    tried: list[Candidate] = []

    def evaluate(ratio: float) -> Candidate:
        tried.append(best_of(plans, ratio, validation_data, reference, labels, quantization))
        return tried[-1]

    best, failed = _bracket(evaluate, max_auc_drop)
    while best is not None and failed is not None and len(tried) < MAX_EVALUATIONS \
            and failed / best.ratio > RESOLUTION:
        middle = evaluate(math.sqrt(best.ratio * failed))
        if middle.within(max_auc_drop):
            best = middle
        else:
            failed = middle.ratio
    if best is None:
        drops = ", ".join(f"{c.ratio:g}x: {c.auc_drop:.4f}" for c in tried if c.reachable)
        if not drops:
            raise UserError(f"Model {plans[0].original.name!r} cannot be compressed 2x: its compressible matrices are too "
                            "small for low-rank factors to save bytes.")
        raise UserError(f"No compression keeps the validation AUC within max_auc_drop={max_auc_drop:g} (AUC drop "
                        f"{drops}). Allow a larger drop, or compress and fine-tune (tfafm compress "
                        "--finetune-epochs).")
    passing = [c for c in tried if c.within(max_auc_drop)]
    chosen = min(passing, key=lambda c: (c.file_bytes, -c.ratio))
    return BudgetSearch(max_auc_drop, quantization, original, estimated_file_bytes(plans[0].original, quantization),
                        tried, chosen)


def _bracket(evaluate: Callable[[float], Candidate], max_auc_drop: float) -> tuple[Candidate | None, float | None]:
    """The largest doubling ratio within the budget and the first ratio past it (None when
    every doubling held)."""
    best = None
    for ratio in FIRST_RATIOS:
        candidate = evaluate(ratio)
        if not candidate.within(max_auc_drop):
            failed = ratio
            if best is None and candidate.reachable:
                for smaller in BELOW_TWO:
                    lower = evaluate(smaller)
                    if lower.within(max_auc_drop):
                        return lower, failed
                    failed = smaller
            return best, failed
        best = candidate
    return best, None
