"""Rank selection: explicit ranks, an energy threshold, or a global budget of cost.

Each matrix comes with its ``spectrum``: the variance each principal direction
keeps (covariance eigenvalues for AFM, squared singular values of the weights
for SVD, of a table minus its mean row), sorted in descending order. AFM and
SVD go through the same allocator, so the comparison between them is fair.

A factorisation is only worth it well below break-even: a matrix is factored
at rank ``k`` only when ``k <= BREAK_EVEN * d_in * d_out / (d_in + d_out)``;
above that it stays whole (a factored layer also costs a second matmul).

Costs (:class:`CostModel`) are counted in bytes, for the quantization the model
will be exported with, under one of two objectives:

``"params"``
    bytes stored: the file size.
``"latency"``
    bytes read per batch-1 request (a table lookup reads one row, a matmul
    reads its whole matrix) plus :data:`OP_BYTES` per op, since at batch 1
    an op's fixed cost is worth reading that many bytes. A factored table
    reads a k-wide row and nothing else: :func:`tfafm.fuse` folds its
    projection into the layer that reads the vectors.
``"both"``
    both budgets hold: the file and the bytes read per request shrink by the
    target ratio (the latency budget is dropped where it cannot be reached
    with every matrix keeping half its variance).
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Mapping, Sequence

import numpy as np

from tfafm.compression.targets import Target
from tfafm.errors import UserError

OBJECTIVES = ("params", "latency", "both")
QUANTIZATIONS = (None, "float16", "dynamic", "int8")
BREAK_EVEN = 0.8
# What one op's fixed cost at batch 1 is worth in bytes read: ~0.3 us at ~56 GB/s
# (issue 11's figures); bench_export.py measures ~0.1 us per op and ~115 GB/s
# on the project's 2-core machine (~11 KiB). An order of magnitude is what matters.
OP_BYTES = 16_384
# LiteRT's dynamic-range quantizer leaves constants under this many elements in float32.
DYNAMIC_MIN_ELEMENTS = 1024
# Floors tried in order: every matrix keeps at least this fraction of its
# variance when the budget allows it (so no layer is starved to rank 1).
_ENERGY_FLOORS = (0.5, 0.25, 0.1, 0.0)


def cost_models(objective: str, quantization: str | None = None) -> list["CostModel"]:
    """The cost models of ``objective`` (``"both"``: params and latency, each budget holding).

    Raises:
        UserError: for an unknown objective or quantization.
    """
    if objective not in OBJECTIVES:
        raise UserError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    return [CostModel(o, quantization) for o in (("params", "latency") if objective == "both" else (objective,))]


@dataclasses.dataclass(frozen=True)
class CostModel:
    """What a matrix costs, whole or factored, in bytes (see the module docstring)."""

    objective: str = "params"
    quantization: str | None = None

    def __post_init__(self):
        if self.objective not in ("params", "latency"):
            raise UserError(f"a cost model's objective is 'params' or 'latency', got {self.objective!r}.")
        if self.quantization not in QUANTIZATIONS:
            raise UserError(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}.")

    def _weight_bytes(self, elements: int) -> int:
        if self.quantization is None:
            return 4 * elements
        if self.quantization == "float16":
            return 2 * elements
        if self.quantization == "dynamic" and elements < DYNAMIC_MIN_ELEMENTS:
            return 4 * elements
        return elements

    def whole(self, target: Target) -> int:
        """Cost of the matrix as it is (bias in float32)."""
        n, d = target.input_dim, target.output_dim
        bias = 4 * d if target.bias else 0
        if self.objective == "params":
            return self._weight_bytes(n * d) + bias
        if target.lookups:
            return self._weight_bytes(n * d) // n
        return self._weight_bytes(n * d) + bias + OP_BYTES

    def factored(self, target: Target, rank: int) -> int:
        """Cost of the factors at ``rank``."""
        n, d = target.input_dim, target.output_dim
        biases = 4 * (d + (rank if target.rank_bias else 0))
        up = self._weight_bytes(rank * d)
        if self.objective == "params":
            return self._weight_bytes(n * rank) + up + biases
        if target.lookups:  # a k-wide row; fusion folds the projection into the layer reading the vectors
            return self._weight_bytes(n * rank) // n
        return self._weight_bytes(n * rank) + up + biases + 2 * OP_BYTES


def break_even_rank(target: Target, fraction: float = BREAK_EVEN) -> int:
    """Largest rank worth factoring at: ``fraction`` of the parameter break-even, and saving parameters."""
    n, d = target.input_dim, target.output_dim
    return min(int(fraction * n * d / (n + d)), target.max_rank())


def energy_kept(spectrum: np.ndarray, rank: int) -> float:
    """Fraction of the total variance the top ``rank`` directions keep."""
    total = float(np.sum(spectrum))
    return 1.0 if total <= 0 else float(np.sum(spectrum[:rank]) / total)


def _residuals(spectrum: np.ndarray, total: float | None = None) -> np.ndarray:
    """``residual[k]``: the variance lost at rank ``k`` as a fraction of ``total`` (default: the
    spectrum's own sum, so ``residual[0] = 1``)."""
    spectrum = np.asarray(spectrum, dtype=np.float64)
    total = float(np.sum(spectrum)) if total is None else total
    if total <= 0:
        return np.zeros(len(spectrum) + 1)
    return np.clip((float(np.sum(spectrum)) - np.concatenate([[0.0], np.cumsum(spectrum)])) / total, 0.0, 1.0)


def ranks_for_energy(
    candidates: Mapping[str, Target], spectra: Mapping[str, np.ndarray], energy: float
) -> dict[str, int]:
    """Per matrix, the smallest rank keeping ``energy`` of its variance (matrices
    where that rank is above break-even are left out)."""
    if not 0.0 < energy <= 1.0:
        raise UserError(f"energy must be in (0, 1], got {energy}.")
    ranks = {}
    for name, candidate in candidates.items():
        rank = int(np.argmax(_residuals(spectra[name]) <= 1.0 - energy + 1e-12))
        if 1 <= rank <= break_even_rank(candidate):
            ranks[name] = rank
    return ranks


class _Choices:
    """One matrix's options, cheapest first: ranks 1..limit that cost less than
    the whole matrix, then the whole matrix (``rank None``, nothing lost).

    Costs are vectors, one entry per :class:`CostModel`; options are ordered
    and compared by their scalar cost, each entry over its budget.
    """

    def __init__(self, target: Target, spectrum: np.ndarray, costs: Sequence[CostModel], total: float):
        residuals = _residuals(spectrum, total)
        self.own_total = float(np.sum(spectrum)) / total if total > 0 else 0.0
        whole = np.array([c.whole(target) for c in costs], dtype=np.float64)
        self.options = [(rank, np.array([c.factored(target, rank) for c in costs], dtype=np.float64),
                         float(residuals[rank])) for rank in range(1, break_even_rank(target) + 1)]
        self.options = [option for option in self.options if np.any(option[1] < whole)]
        self.options.append((None, whole, 0.0))
        self.position = 0

    def keep_cheaper_than_whole(self, budgets: np.ndarray) -> None:
        """Drops the factored options whose scalar cost is not below the whole matrix's."""
        whole = self.scalar(self.options[-1][1], budgets)
        self.options = [o for o in self.options[:-1] if self.scalar(o[1], budgets) < whole] + self.options[-1:]

    @staticmethod
    def scalar(cost: np.ndarray, budgets: np.ndarray) -> float:
        return float(np.sum(cost / budgets))

    def start_at(self, floor: float) -> None:
        """Starts at the cheapest option keeping at least ``floor`` of the variance."""
        self.position = next(i for i, (_, _, lost) in enumerate(self.options)
                             if lost <= (1.0 - floor) * self.own_total + 1e-12)

    @property
    def cost(self) -> np.ndarray:
        return self.options[self.position][1]

    @property
    def rank(self) -> int | None:
        return self.options[self.position][0]

    def next_step(self, budgets: np.ndarray) -> tuple[float, np.ndarray] | None:
        """``(variance bought per unit of scalar cost, cost vector added)`` of the next option,
        or None at the whole matrix."""
        if self.position + 1 >= len(self.options):
            return None
        _, cost, lost = self.options[self.position]
        _, next_cost, next_lost = self.options[self.position + 1]
        extra = next_cost - cost
        return (lost - next_lost) / max(self.scalar(extra, budgets), 1e-12), extra


def ranks_for_ratio(
    candidates: Mapping[str, Target],
    spectra: Mapping[str, np.ndarray],
    target_ratio: float,
    costs: CostModel | Sequence[CostModel] | None = None,
) -> dict[str, int]:
    """Ranks whose total cost is at most ``1 / target_ratio`` of the candidates' whole cost,
    under each of ``costs`` (default: parameter bytes; give a params and a latency
    :class:`CostModel` to shrink both). When the budgets cannot all hold with every
    matrix keeping half its variance (a small model, whose fixed cost per op
    dominates its reads; a model whose reads are mostly one big matrix), only the
    first one is kept.

    Candidates that cost no less factored (at any rank up to break-even) than
    whole stay whole and are not part of the budget.

    Each matrix starts at the cheapest rank keeping a floor of its variance
    (50%, lowered to 25%, 10%, 0% until every matrix fits the budget); the rest
    of the budget is spent greedily on the step (one more rank, or the whole
    matrix once past break-even) that buys the most variance per unit of cost
    (each cost over its budget, summed), while every budget holds.
    Variance counts as a fraction of the matrix's total, except that all
    embedding tables count as one: together they are the one wide input of
    the layers they feed, so a field's share of it is what a rank of that
    field buys. Matrices the allocator leaves whole are absent from the result.

    Raises:
        UserError: if even the cheapest option of every matrix exceeds the budget.
    """
    if target_ratio <= 1.0:
        raise UserError(f"target_ratio must be > 1, got {target_ratio}.")
    costs = [CostModel()] if costs is None else [costs] if isinstance(costs, CostModel) else list(costs)
    objectives = "+".join(c.objective for c in costs)
    tables_total = sum(float(np.sum(spectra[name])) for name, c in candidates.items() if c.lookups)
    choices = {name: _Choices(c, spectra[name], costs, tables_total if c.lookups else float(np.sum(spectra[name])))
               for name, c in candidates.items()}
    choices = {name: choice for name, choice in choices.items() if len(choice.options) > 1}
    if not choices:
        raise UserError(f"No matrix costs less factored than whole ({objectives}, quantization "
                        f"{costs[0].quantization}): nothing to compress.")
    budgets = sum(choice.options[-1][1] for choice in choices.values()) / target_ratio
    for choice in choices.values():  # a matrix left with its whole option only stays whole, within the budget
        choice.keep_cheaper_than_whole(budgets)
    # With several budgets, the later ones (latency) hold only where every matrix can keep the first
    # floor of its variance; otherwise the first budget (params) alone decides.
    for floor in _ENERGY_FLOORS[:1] if len(costs) > 1 else _ENERGY_FLOORS:
        for choice in choices.values():
            choice.start_at(floor)
        spent = sum(choice.cost for choice in choices.values())
        if np.all(spent <= budgets):
            break
    else:
        if len(costs) > 1:
            return ranks_for_ratio(candidates, spectra, target_ratio, costs[:1])
        raise UserError(
            f"target_ratio={target_ratio} is out of reach: the cheapest choice for every matrix already costs "
            f"{', '.join(f'{int(x):,}' for x in spent)} bytes ({objectives}), the budget is "
            f"{', '.join(f'{int(x):,}' for x in budgets)}."
        )

    heap = []

    def push(name: str) -> None:
        step = choices[name].next_step(budgets)
        if step is not None:
            heapq.heappush(heap, (-step[0], name))

    for name in choices:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        choice = choices[name]
        _, extra = choice.next_step(budgets)
        if np.any(spent + extra > budgets):
            continue
        choice.position += 1
        spent = spent + extra
        push(name)
    return {name: choice.rank for name, choice in choices.items() if choice.rank is not None}
