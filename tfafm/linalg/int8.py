"""int8 rounding as LiteRT's dynamic-range kernels apply it, for estimating its error in numpy.

A dynamic-range ``FULLY_CONNECTED`` holds its weights in int8 with one
symmetric scale per output channel, and quantizes each row of its float input
on the fly with one asymmetric scale spanning that row's range (zero exactly
representable). Values much smaller than the largest of their row round to a
few levels or to zero.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def rows_rounded(x: np.ndarray) -> np.ndarray:
    """``x`` (rows, features) after per-row asymmetric int8 rounding (dequantized).

    >>> rows_rounded(np.array([[0.0, 1.0, 0.001]])).round(4).tolist()
    [[0.0, 1.0, 0.0]]
    """
    low = np.minimum(x.min(axis=1, keepdims=True), 0.0)
    high = np.maximum(x.max(axis=1, keepdims=True), 0.0)
    scale = (high - low) / 255.0
    scale[scale == 0] = 1.0
    return np.round(x / scale) * scale


def channels_rounded(kernel: np.ndarray) -> np.ndarray:
    """``kernel`` (inputs, outputs) after symmetric int8 rounding with one scale per output."""
    scale = np.abs(kernel).max(axis=0, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.round(kernel / scale) * scale


def hybrid_matmul_error(x: np.ndarray, kernel: np.ndarray, blocks: Sequence[int]) -> float:
    """Mean absolute error of ``x @ kernel`` computed by dynamic-range int8 kernels, one per block of
    ``blocks`` consecutive input features (each block's rows rounded on their own), relative to the
    standard deviation of the exact product.

    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(0, 1e-3, (64, 8)), rng.normal(0, 1, (64, 2))], axis=1)  # small, large
    >>> kernel = np.concatenate([rng.normal(0, 1e3, (8, 4)), rng.normal(0, 1, (2, 4))])
    >>> round(hybrid_matmul_error(x, kernel, [10]), 2), round(hybrid_matmul_error(x, kernel, [8, 2]), 3)
    (0.69, 0.004)
    """
    x = np.asarray(x, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    if sum(blocks) != x.shape[1] or kernel.shape[0] != x.shape[1]:
        raise ValueError(f"blocks {list(blocks)} do not cover inputs {x.shape} for kernel {kernel.shape}.")
    exact = x @ kernel
    bounds = np.cumsum([0, *blocks])
    approximate = sum(rows_rounded(x[:, a:b]) @ channels_rounded(kernel[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
    spread = float(exact.std()) or 1.0
    return float(np.abs(approximate - exact).mean()) / spread
