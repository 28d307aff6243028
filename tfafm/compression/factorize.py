"""The math of AFM and SVD factorisation, on float64 numpy arrays.

Notation: a Dense layer computes ``y = x W + b`` with ``W`` of shape
``(d_in, d_out)``; an embedding table ``E`` has shape ``(V, d)``. ``U_k``
holds the top-``k`` eigenvectors of the covariance of ``y`` (AFM) or the top
right singular vectors of the weights (SVD).
"""

from __future__ import annotations

import numpy as np

from tfafm.compression.statistics import LayerStatistics

METHODS = ("afm", "svd")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown compression method {method!r}; expected one of {METHODS}.")


def _afm_basis(name: str, stats: LayerStatistics | None, dim: int, rank: int):
    if stats is None:
        raise ValueError(f"Layer {name!r}: method='afm' needs calibration statistics for this layer.")
    if stats.dim != dim:
        raise ValueError(f"Layer {name!r}: statistics have dimension {stats.dim}, the layer outputs {dim}.")
    _, vectors = stats.principal(name)
    return stats.mean, vectors[:, :rank]


def factor_dense(
    name: str, kernel: np.ndarray, bias: np.ndarray | None, rank: int,
    stats: LayerStatistics | None, method: str,
) -> list[np.ndarray]:
    """Returns ``[down_kernel, up_kernel, down_bias, up_bias]`` in LowRankDense weight order.

    AFM: ``z = x (W U) + b U``, ``y' = z U^T + (mu - mu U U^T)``.
    SVD: ``W ~ (A_k S_k) B_k^T``, ``z = x A_k S_k``, ``y' = z B_k^T + b``.
    """
    check_method(method)
    bias = np.zeros(kernel.shape[1]) if bias is None else bias
    if method == "afm":
        mean, basis = _afm_basis(name, stats, kernel.shape[1], rank)
        down, up = kernel @ basis, basis.T
        down_bias = bias @ basis
        up_bias = mean - (mean @ basis) @ basis.T
    else:
        left, singular, right_t = np.linalg.svd(kernel, full_matrices=False)
        down, up = left[:, :rank] * singular[:rank], right_t[:rank]
        down_bias, up_bias = np.zeros(rank), bias
    return [down, up, down_bias, up_bias]


def factor_embedding(
    name: str, table: np.ndarray, rank: int, stats: LayerStatistics | None, method: str
) -> list[np.ndarray]:
    """Returns ``[table_k, projection, bias]`` in LowRankEmbedding weight order.

    AFM: ``T = (E - mu) U``, projection ``U^T``, bias ``mu``.
    SVD: ``T = A_k S_k``, projection ``B_k^T``, bias 0.
    """
    check_method(method)
    if method == "afm":
        mean, basis = _afm_basis(name, stats, table.shape[1], rank)
        return [(table - mean) @ basis, basis.T, mean]
    left, singular, right_t = np.linalg.svd(table, full_matrices=False)
    return [left[:, :rank] * singular[:rank], right_t[:rank], np.zeros(table.shape[1])]


def weight_spectrum(matrix: np.ndarray) -> np.ndarray:
    """Squared singular values of a weight matrix (the 'variance' SVD keeps per rank)."""
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) ** 2
