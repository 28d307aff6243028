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
    bytes stored, as :func:`tfafm.compression.report.weight_bytes` counts them
    (int8 scales, the float32 kept under the dynamic quantizer's threshold);
    given the whole file's bytes, the rest of the model counts in the budget,
    so the file shrinks by the target ratio.
``"latency"``
    bytes read per batch-1 request (a table lookup reads one row, a matmul
    reads its whole matrix) plus :data:`OP_BYTES` per op, since at batch 1
    an op's fixed cost is worth reading that many bytes. A factored table
    reads a k-wide row and nothing else: :func:`tfafm.fuse` folds its
    projection into the layer that reads the vectors.
``"both"``
    both budgets hold: the file and the bytes read per request shrink by the
    target ratio. Where the latency budget cannot be reached (with every
    matrix keeping half its variance, under the variance criterion), or where
    holding it would cost the predictions more than
    :data:`LATENCY_LOSS_SHARE` beyond what the file budget alone loses, the
    bytes read shrink by as much as can be had without that instead: its ratio
    is lowered step by step (:data:`LATENCY_RELAX`), and dropped below
    :data:`MIN_LATENCY_RATIO`. Speed is a bonus; what ``target_ratio`` asks
    for is a file that much smaller at the least loss.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Mapping, Sequence

import numpy as np

from tfafm_choices import CRITERIA
from tfafm.compression.report import weight_bytes
from tfafm.compression.targets import Target
from tfafm.errors import UserError

OBJECTIVES = ("params", "latency", "both")
QUANTIZATIONS = (None, "float16", "dynamic", "int8")
BREAK_EVEN = 0.8
# What one op's fixed cost at batch 1 is worth in bytes read: ~0.3 us at ~56 GB/s
# (issue 11's figures); bench_export.py measures ~0.1 us per op and ~115 GB/s
# on the project's 2-core machine (~11 KiB). An order of magnitude is what matters.
OP_BYTES = 16_384
# Floors tried in order: every matrix keeps at least this fraction of its
# variance when the budget allows it (so no layer is starved).
_ENERGY_FLOORS = (0.5, 0.25, 0.1, 0.0)
# The smallest rank a matrix starts at unless the budget demands rank 1 (one direction).
MIN_RANK = 2
# Under "both", a latency ratio out of reach is multiplied by this until it can be reached; below
# MIN_LATENCY_RATIO the parameter budget alone decides.
LATENCY_RELAX = 0.8
MIN_LATENCY_RATIO = 1.25
# Under "both", the latency budget may cost at most this much predicted loss beyond the parameter budget's
# allocation alone, as a share of the loss of dropping every candidate's variation (the spectra's currency):
# squeezing the MLP for fewer bytes read cost DeepFM 0.019 AUC at 22x on the Criteo sample where the file
# budget alone lost 0.0002 (predicted: 0.048 against 0.0001 of that share).
LATENCY_LOSS_SHARE = 1e-3


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

    def whole(self, target: Target) -> int:
        """Cost of the matrix as it is (its bias a vector)."""
        n, d = target.input_dim, target.output_dim
        bias = weight_bytes((d,), self.quantization) if target.bias else 0
        if self.objective == "params":
            return weight_bytes((n, d), self.quantization) + bias
        if target.lookups:
            return weight_bytes((n, d), self.quantization) // n
        return weight_bytes((n, d), self.quantization) + bias + OP_BYTES

    def factored(self, target: Target, rank: int) -> int:
        """Cost of the factors at ``rank``."""
        n, d = target.input_dim, target.output_dim
        biases = weight_bytes((d,), self.quantization) + (weight_bytes((rank,), self.quantization)
                                                          if target.rank_bias else 0)
        down, up = weight_bytes((n, rank), self.quantization), weight_bytes((rank, d), self.quantization)
        if self.objective == "params":
            return down + up + biases
        if target.lookups:  # a k-wide row; fusion folds the projection into the layer reading the vectors
            return down // n
        return down + up + biases + 2 * OP_BYTES


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
    """One matrix's options, cheapest first: ranks 1..break-even, then the whole matrix
    (``rank None``, nothing lost), less every option costing no less than a higher one
    (under dynamic quantization factors of fewer than 1024 values stay float32, so a
    higher rank can cost fewer bytes).

    Costs are vectors, one entry per :class:`CostModel`; options are compared by
    their scalar cost, each entry over its budget.
    """

    def __init__(self, target: Target, spectrum: np.ndarray, costs: Sequence[CostModel], total: float):
        residuals = _residuals(spectrum, total)
        self.own_total = float(np.sum(spectrum)) / total if total > 0 else 0.0
        ranks = list(range(1, break_even_rank(target) + 1))
        cost = np.array([[c.factored(target, rank) for c in costs] for rank in ranks]
                        + [[c.whole(target) for c in costs]], dtype=np.float64)
        lost = np.array([residuals[rank] for rank in ranks] + [0.0])
        # Kept: the options that every higher option costs more than, in some entry.
        kept = [i for i in range(len(cost)) if not np.any(np.all(cost[i + 1:] <= cost[i], axis=1))]
        self.ranks = [(ranks + [None])[i] for i in kept]
        self.costs, self.lost = cost[kept], lost[kept]
        self.position = 0

    def keep_cheaper_than_whole(self, budgets: np.ndarray) -> None:
        """Drops the factored options whose scalar cost is not below the whole matrix's."""
        scalar = np.sum(self.costs / budgets, axis=1)  # _scalar of every option
        kept = [int(i) for i in np.flatnonzero(scalar[:-1] < scalar[-1])] + [len(self.ranks) - 1]
        self.ranks, self.costs, self.lost = [self.ranks[i] for i in kept], self.costs[kept], self.lost[kept]

    def start_at(self, floor: float, min_rank: int = 1) -> None:
        """Starts at the cheapest option of at least ``min_rank`` keeping at least ``floor`` of the variance."""
        self.position = next(i for i, (rank, lost) in enumerate(zip(self.ranks, self.lost))
                             if (rank is None or rank >= min_rank) and lost <= (1.0 - floor) * self.own_total + 1e-12)

    @property
    def cost(self) -> np.ndarray:
        return self.costs[self.position]

    @property
    def rank(self) -> int | None:
        return self.ranks[self.position]


def _scalar(cost: np.ndarray, budgets: np.ndarray) -> float:
    return float(np.sum(cost / budgets))


def ranks_for_ratio(
    candidates: Mapping[str, Target],
    spectra: Mapping[str, np.ndarray],
    target_ratio: float,
    costs: CostModel | Sequence[CostModel] | None = None,
    file_bytes: float | None = None,
    criterion: str = "variance",
    later_ratio: float | None = None,
    freed_bytes: float = 0.0,
) -> dict[str, int]:
    """Ranks whose total cost is at most ``1 / target_ratio`` of the whole cost, under each
    of ``costs`` (default: parameter bytes; give a params and a latency
    :class:`CostModel` to shrink both). The whole cost is the factorable candidates', except
    for a params cost given ``file_bytes``, the whole model's file
    (:func:`~tfafm.compression.report.estimated_file_bytes`): then what is not a
    candidate (first-order weights, biases, layers left whole, the file's records)
    counts in the budget and never shrinks, so the file shrinks by ``target_ratio``.
    When the budgets cannot all hold with every matrix keeping half its variance (a
    small model, whose fixed cost per op dominates its reads; a model whose reads are
    mostly one big matrix, or whose matrices left whole read a large share), the later
    budgets shrink by ``later_ratio`` instead, lowered from ``target_ratio`` by
    :data:`LATENCY_RELAX` until they hold; below :data:`MIN_LATENCY_RATIO` only the
    first one is kept. They are lowered the same way while holding them loses more than
    :data:`LATENCY_LOSS_SHARE` of the spectra's total (all tables as one and each other
    matrix its own, under the variance criterion) beyond the allocation under the first
    budget alone: the later budgets never buy speed with accuracy.

    Candidates that cost no less factored (at any rank up to break-even) than whole
    stay whole (outside the budget, unless counted in ``file_bytes``). ``freed_bytes``:
    what of ``file_bytes`` outside the candidates the compressed model will not store
    (a first-order table read from the embeddings instead): the budget may spend it.

    Each matrix starts at the cheapest rank of at least :data:`MIN_RANK` keeping a
    floor of its variance (50%, lowered to 25%, 10%, 0% until every matrix fits the
    budget); only when even that does not fit are matrices lowered to rank 1, those
    losing the least variance per byte saved first. The rest of the budget is spent
    greedily on the move (to a higher rank, or the whole matrix) that buys the most
    variance per unit of cost (each cost over its budget, summed) and fits, until no
    move fits: the budget is spent up to less than one move.
    Variance counts as a fraction of the matrix's total, except that all
    embedding tables count as one: together they are the one wide input of
    the layers they feed, so a field's share of it is what a rank of that
    field buys. Matrices the allocator leaves whole are absent from the result.

    With ``criterion="loss"`` the spectra are in one currency for all matrices (what each
    direction costs the predictions, :meth:`~tfafm.linalg.LayerStatistics.loss_spectrum`):
    no per-matrix or per-table normalisation, no variance floors: every matrix starts at its
    cheapest option of at least :data:`MIN_RANK` (rank 1 only where the budget demands it, as
    above) and the budget goes, step by step, to the largest loss avoided per byte.

    Raises:
        UserError: if even the cheapest option of every matrix exceeds the budget
            (the message names the largest reachable ratio).
    """
    if target_ratio <= 1.0:
        raise UserError(f"target_ratio must be > 1, got {target_ratio}.")
    if criterion not in CRITERIA:
        raise UserError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    costs = [CostModel()] if costs is None else [costs] if isinstance(costs, CostModel) else list(costs)
    allocate = _Allocator(candidates, spectra, target_ratio, file_bytes, criterion, freed_bytes)
    later_ratio = target_ratio if later_ratio is None else later_ratio
    if len(costs) == 1 or later_ratio < MIN_LATENCY_RATIO:
        return allocate(costs[:1])
    alone: list[dict[str, int]] = []  # the allocation under the first budget alone, once needed
    held: dict[int, dict[str, int]] = {}

    def holds(step: int) -> bool:
        """Whether the later budgets at ``later_ratio * LATENCY_RELAX ** step`` hold at little loss."""
        ranks = allocate(costs, later_ratio * LATENCY_RELAX ** step)
        if ranks is None:
            return False
        if not alone:
            alone.append(allocate(costs[:1]))
        if allocate.predicted_loss(ranks) - allocate.predicted_loss(alone[0]) > LATENCY_LOSS_SHARE:
            return False
        held[step] = ranks
        return True

    # The first relaxation step that holds: the budgets only loosen step by step, so bisect.
    steps = int(np.floor(np.log(MIN_LATENCY_RATIO / later_ratio) / np.log(LATENCY_RELAX) + 1e-9)) + 1
    if holds(0):
        return held[0]
    low, high = 1, steps  # step ``steps``: the first budget alone
    while low < high:
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle + 1
    return held[low] if low < steps else (alone[0] if alone else allocate(costs[:1]))


class _Allocator:
    """One allocation problem (candidates, spectra, target ratio) solved under given cost models."""

    def __init__(self, candidates: Mapping[str, Target], spectra: Mapping[str, np.ndarray], target_ratio: float,
                 file_bytes: float | None, criterion: str, freed_bytes: float = 0.0):
        self.candidates, self.spectra, self.target_ratio = candidates, spectra, target_ratio
        self.file_bytes, self.by_loss, self.freed_bytes = file_bytes, criterion == "loss", freed_bytes
        tables_total = sum(float(np.sum(spectra[name])) for name, c in candidates.items() if c.lookups)
        everything = sum(float(np.sum(spectra[name])) for name in candidates)
        # What a matrix's losses are counted against (see ranks_for_ratio).
        self.totals = {name: everything if self.by_loss else tables_total if c.lookups else float(np.sum(spectra[name]))
                       for name, c in candidates.items()}
        self.options: dict[tuple[CostModel, ...], dict[str, _Choices]] = {}

    def predicted_loss(self, ranks: Mapping[str, int]) -> float:
        """The variance (or, under the loss criterion, the loss) ``ranks`` give up, in the allocator's units."""
        return sum(float(_residuals(self.spectra[name], self.totals[name])[rank]) for name, rank in ranks.items())

    def __call__(self, costs: Sequence[CostModel], later_ratio: float | None = None) -> dict[str, int] | None:
        """The ranks under ``costs`` (the later ones at ``later_ratio``); None where the later budgets
        cannot hold.

        Raises:
            UserError: under one cost model, if even the cheapest option of every matrix exceeds its budget.
        """
        objectives = "+".join(c.objective for c in costs)
        if tuple(costs) not in self.options:  # the options under these cost models, kept for the next call
            self.options[tuple(costs)] = {name: _Choices(c, self.spectra[name], costs, self.totals[name])
                                          for name, c in self.candidates.items()}
        choices = {name: copy.copy(choice) for name, choice in self.options[tuple(costs)].items()}
        choices = {name: choice for name, choice in choices.items() if len(choice.ranks) > 1}
        if not choices:
            raise UserError(f"No matrix costs less factored than whole ({objectives}, quantization "
                            f"{costs[0].quantization}): nothing to compress.")
        whole = sum(choice.costs[-1] for choice in choices.values())
        whole_file = np.array([self.file_bytes is not None and c.objective == "params" for c in costs])
        total = np.where(whole_file, self.file_bytes or 0, whole)
        fixed = total - whole - np.where(whole_file, self.freed_bytes, 0.0)  # what never shrinks
        later_ratio = self.target_ratio if later_ratio is None else later_ratio
        budgets = total / np.array([self.target_ratio] + [later_ratio] * (len(costs) - 1)) - fixed
        cheapest = fixed + sum(choice.costs[0] for choice in choices.values())
        if np.all(budgets > 0):
            for choice in choices.values():  # a matrix left with its whole option only stays whole, within the budget
                choice.keep_cheaper_than_whole(budgets)
            # With several budgets, the later ones (latency) hold only where every matrix can keep the first
            # floor of its variance; otherwise the first budget (params) alone decides.
            floors = (0.0,) if self.by_loss else _ENERGY_FLOORS
            for floor in floors[:1] if len(costs) > 1 else floors:
                for choice in choices.values():
                    choice.start_at(floor, MIN_RANK)
                spent = sum(choice.cost for choice in choices.values())
                if np.all(spent <= budgets):
                    break
            else:
                spent = spent if len(costs) > 1 else _lowered(choices, spent, budgets)
        if not np.all(budgets > 0) or not np.all(spent <= budgets):
            if len(costs) > 1:
                return None
            quantization = costs[0].quantization or "float32"
            raise UserError(
                f"target_ratio={self.target_ratio:g} is out of reach: the cheapest choice for every matrix and "
                f"what never shrinks already cost {int(cheapest[0]):,} bytes ({objectives}), the budget is "
                f"{int(total[0] / self.target_ratio):,}; the largest reachable ratio for this model under "
                f"{quantization} is {np.floor(10 * total[0] / cheapest[0]) / 10:.1f}x."
            )
        _fill(choices, spent, budgets)
        return {name: choice.rank for name, choice in choices.items() if choice.rank is not None}


def _lowered(choices: Mapping[str, _Choices], spent: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Lowers matrices to their cheapest option (rank 1), those losing the least variance per
    unit of scalar cost saved first, until ``spent`` fits ``budgets``; returns what is spent."""
    def loss_per_saving(choice: _Choices) -> float:
        saved = _scalar(choice.cost - choice.costs[0], budgets)
        return (choice.lost[0] - choice.lost[choice.position]) / max(saved, 1e-12)

    for choice in sorted((c for c in choices.values() if c.position > 0), key=loss_per_saving):
        if np.all(spent <= budgets):
            break
        spent = spent - choice.cost + choice.costs[0]
        choice.position = 0
    return spent


def _fill(choices: Mapping[str, _Choices], spent: np.ndarray, budgets: np.ndarray) -> None:
    """Spends what is left of ``budgets`` greedily: the move (of one matrix, to a higher option)
    buying the most variance per unit of cost among those whose extra cost fits what is left,
    until none fits; a matrix at rank 1 moves up first, so rank 1
    stays only where the budget demands it. Ties go to the higher option, then to the name
    that sorts last.

    A move's cost is each entry over what is left of its budget, summed: a budget running out
    grows dear, so the last of it goes to the moves that need little of it. So every step
    prices every move anew, all matrices at once: their options are padded into one
    ``(cost models, matrices, options)`` array, missing options costing infinity.
    """
    names = list(choices)
    if not names:
        return
    options = max(len(choice.ranks) for choice in choices.values())
    costs = np.full((len(spent), len(names), options), np.inf)  # per cost model, a (matrices, options) array
    lost = np.zeros((len(names), options))
    rank_one = np.zeros((len(names), options), dtype=bool)
    for row, name in enumerate(names):
        choice = choices[name]
        costs[:, row, :len(choice.ranks)] = choice.costs.T
        lost[row, :len(choice.ranks)] = choice.lost
        rank_one[row, :len(choice.ranks)] = [rank == 1 for rank in choice.ranks]
    position = np.array([choices[name].position for name in names])
    rows, columns = np.arange(len(names)), np.arange(options)
    name_order = np.argsort(np.argsort(np.array(names)))
    while True:
        room = budgets - spent
        fits = columns[None, :] > position[:, None]
        price = np.zeros(lost.shape)
        for cost, left in zip(costs, room):
            extra = cost - cost[rows, position][:, None]
            fits &= extra <= left + 1e-9
            price += extra / max(left, 1e-9)
        movable = np.flatnonzero(fits.any(axis=1))
        if not len(movable):
            break
        gain = lost[rows, position][:, None] - lost
        value = np.where(fits, gain / np.maximum(price, 1e-12), -np.inf)
        best = np.argmax(value, axis=1)  # per matrix, the lowest of its best options
        first = rank_one[rows, position]
        chosen = movable[np.lexsort((name_order[movable], best[movable], value[movable, best[movable]],
                                     first[movable]))[-1]]
        spent = spent + costs[:, chosen, best[chosen]] - costs[:, chosen, position[chosen]]
        position[chosen] = best[chosen]
    for row, name in enumerate(names):
        choices[name].position = int(position[row])
