"""Rank selection: explicit ranks, an energy threshold, or a global parameter budget.

Each layer comes with its ``spectrum``: the variance each principal direction
keeps (covariance eigenvalues for AFM, squared singular values for SVD),
sorted in descending order.
"""

from __future__ import annotations

import heapq
from typing import Mapping

import numpy as np

from tfafm.compression.targets import Target
from tfafm.errors import UserError


def energy_kept(spectrum: np.ndarray, rank: int) -> float:
    """Fraction of the total variance the top ``rank`` directions keep."""
    total = float(np.sum(spectrum))
    return 1.0 if total <= 0 else float(np.sum(spectrum[:rank]) / total)


def ranks_for_energy(
    candidates: Mapping[str, Target], spectra: Mapping[str, np.ndarray], energy: float
) -> dict[str, int]:
    """Per layer, the smallest rank keeping ``energy`` of its variance (layers
    where that rank saves no parameters are left out)."""
    if not 0.0 < energy <= 1.0:
        raise UserError(f"energy must be in (0, 1], got {energy}.")
    ranks = {}
    for name, candidate in candidates.items():
        cumulative = np.cumsum(spectra[name]) / max(float(np.sum(spectra[name])), 1e-300)
        rank = int(np.searchsorted(cumulative, energy - 1e-12) + 1)
        if rank <= candidate.max_rank():
            ranks[name] = rank
    return ranks


def ranks_for_ratio(
    candidates: Mapping[str, Target], spectra: Mapping[str, np.ndarray], target_ratio: float
) -> dict[str, int]:
    """Ranks whose total parameter count is at most ``1 / target_ratio`` of the candidates'.

    Greedy allocation: every layer starts at rank 1; the budget left is spent
    one rank at a time on the layer whose next direction buys the most
    variance (as a fraction of that layer's total) per parameter it costs.

    Raises:
        ValueError: if even rank 1 everywhere exceeds the budget.
    """
    if target_ratio <= 1.0:
        raise UserError(f"target_ratio must be > 1, got {target_ratio}.")
    budget = sum(c.params() for c in candidates.values()) / target_ratio
    ranks = {name: 1 for name in candidates}
    spent = sum(c.params(1) for c in candidates.values())
    if spent > budget:
        raise UserError(
            f"target_ratio={target_ratio} is out of reach: rank 1 in every layer already needs "
            f"{spent} parameters, the budget is {int(budget)}."
        )

    def gain(name: str) -> float:
        candidate, rank = candidates[name], ranks[name]
        spectrum = spectra[name]
        total = max(float(np.sum(spectrum)), 1e-300)
        step_cost = candidate.params(rank + 1) - candidate.params(rank)
        return float(spectrum[rank]) / total / step_cost

    heap = [(-gain(n), n) for n, c in candidates.items() if c.max_rank() > 1]
    heapq.heapify(heap)
    while heap:
        _, name = heapq.heappop(heap)
        candidate = candidates[name]
        cost = candidate.params(ranks[name] + 1) - candidate.params(ranks[name])
        if spent + cost > budget:
            continue
        ranks[name] += 1
        spent += cost
        if ranks[name] < candidate.max_rank():
            heapq.heappush(heap, (-gain(name), name))
    return ranks
