"""Seconds the rank allocator takes on a big model's worth of matrices.

A DCN-V2-sized problem made up with seeded spectra: 26 embedding tables (1,000 to
300,000 rows, width 16) and 83 dense matrices (256 to 429 wide), 109 in all, ranked
by :func:`tfafm.compression.ranks.ranks_for_ratio` under ``objective="both"``
(file bytes and bytes read, dynamic int8) and each criterion, at two ratios. Prints
the seconds and the sum of the ranks chosen (the same sum before and after a speed-up
means the same allocation); asserts nothing.

    python benchmarks/bench_allocator.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from tfafm.compression.ranks import cost_models, ranks_for_ratio
from tfafm.compression.targets import Target

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment  # noqa: E402


def problem(seed: int = 0) -> tuple[dict[str, Target], dict[str, np.ndarray]]:
    """26 tables and 83 dense matrices with decaying spectra."""
    rng = np.random.default_rng(seed)
    candidates, spectra = {}, {}
    for i in range(26):
        name = f"table_{i}"
        candidates[name] = Target(name, name, None, "embeddings", "embedding", int(rng.integers(1_000, 300_000)), 16,
                                  bias=False, lookups=True, rank_bias=False)
        spectra[name] = rng.uniform(0.5, 0.9) ** np.arange(16) * rng.uniform(0.1, 10)
    for i in range(83):
        name, (rows, columns) = f"dense_{i}", [(429, 429), (400, 400), (256, 256), (429, 400)][i % 4]
        candidates[name] = Target(name, name, None, "kernel", "dense", rows, columns)
        spectra[name] = rng.uniform(0.9, 0.99) ** np.arange(min(rows, columns)) * rng.uniform(0.01, 1)
    return candidates, spectra


def main() -> None:
    candidates, spectra = problem()
    print(f"{len(candidates)} matrices; {environment()}")
    print("| criterion | target_ratio | seconds | sum of ranks |\n|---|---:|---:|---:|")
    for criterion in ("variance", "loss"):
        for ratio in (4, 8):
            start = time.perf_counter()
            ranks = ranks_for_ratio(candidates, spectra, ratio, cost_models("both", "dynamic"), criterion=criterion)
            print(f"| {criterion} | {ratio} | {time.perf_counter() - start:.1f} | {sum(ranks.values()):,} |")


if __name__ == "__main__":
    main()
