"""The math of AFM and SVD factorisation, on numpy arrays.

Notation: a matrix layer computes ``y = x W + b`` with ``W`` of shape
``(d_in, d_out)``; an embedding table ``E`` of shape ``(V, d)`` is the special
case ``x = onehot(id)`` (``lookups=True``). A factorisation replaces ``W`` by

    y' = (x D + b_D) U + b_U          D: (d_in, k), U: (k, d_out)

AFM takes ``U = Q_k^T`` from the top-``k`` eigenvectors ``Q_k`` of the
covariance of ``y`` over calibration data; SVD takes the top right singular
vectors of ``W``. Both only ever need a ``(d_out, d_out)`` Gram matrix and a
projection ``W Q_k``, computed here in row chunks so that a table of tens of
millions of rows is never copied whole in float64.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfafm.errors import UserError
from tfafm.linalg.statistics import LayerStatistics

METHODS = ("afm", "svd")
# Added to a Fisher metric, as a fraction of its mean diagonal: directions the predictions do not
# see at all still count a little, so the metric is invertible.
FISHER_RIDGE = 1e-2
_CHUNK_ROWS = 1 << 16


@dataclasses.dataclass(frozen=True)
class Factors:
    """``y ~ (x @ down + down_bias) @ up + up_bias``, all float32.

    For an embedding table ``down`` is the new ``(V, k)`` table and
    ``down_bias`` is zero.
    """

    down: np.ndarray
    up: np.ndarray
    down_bias: np.ndarray
    up_bias: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.down.shape[1])

    def product(self) -> tuple[np.ndarray, np.ndarray]:
        """The merged ``(W', b')`` of rank ``k`` (float64): ``x W' + b'`` equals the factors' output."""
        up = self.up.astype(np.float64)
        return self.down.astype(np.float64) @ up, self.down_bias.astype(np.float64) @ up + self.up_bias


def check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"Unknown compression method {method!r}; expected one of {METHODS}.")


def _row_chunks(matrix: np.ndarray):
    for start in range(0, matrix.shape[0], _CHUNK_ROWS):
        yield start, np.asarray(matrix[start:start + _CHUNK_ROWS], dtype=np.float64)


def column_mean(matrix: np.ndarray) -> np.ndarray:
    """Mean row of ``matrix`` in float64, accumulated chunk by chunk."""
    total = np.zeros(matrix.shape[1])
    for _, chunk in _row_chunks(matrix):
        total += chunk.sum(axis=0)
    return total / max(matrix.shape[0], 1)


def gram(matrix: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """``(W - c)^T (W - c)`` in float64, one row chunk at a time."""
    result = np.zeros((matrix.shape[1], matrix.shape[1]))
    for _, chunk in _row_chunks(matrix):
        if centre is not None:
            chunk = chunk - centre
        result += chunk.T @ chunk
    return 0.5 * (result + result.T)


def project(matrix: np.ndarray, basis: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """``(W - c) @ basis`` as float32, computed in float64 one row chunk at a time."""
    out = np.empty((matrix.shape[0], basis.shape[1]), dtype=np.float32)
    for start, chunk in _row_chunks(matrix):
        if centre is not None:
            chunk = chunk - centre
        out[start:start + len(chunk)] = chunk @ basis
    return out


def eigen(symmetric: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors (columns) of a symmetric matrix."""
    values, vectors = np.linalg.eigh(symmetric)
    order = np.argsort(values)[::-1]
    return np.clip(values[order], 0.0, None), vectors[:, order]


def weight_spectrum(matrix: np.ndarray, lookups: bool = False) -> np.ndarray:
    """The variance SVD keeps per rank: squared singular values of ``W`` (of ``E`` minus its
    mean row for an embedding table, whose mean becomes the bias)."""
    centre = column_mean(matrix) if lookups else None
    return eigen(gram(matrix, centre))[0]


def weighted_bases(second_moment: np.ndarray, fisher: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, down, up)``: the directions of the outputs ``y`` (second moment ``M``, ``d x d``)
    that matter most under the metric ``F`` (the mean Fisher information of the predictions with
    respect to ``y``), best first.

    With ``F = L L^T`` (plus :data:`FISHER_RIDGE` of its mean diagonal) and ``W`` the eigenvectors
    of ``L^T M L`` (eigenvalues ``values``), ``down = L W`` and ``up = W^T L^{-1}``: keeping the
    first ``k`` columns of ``down`` and rows of ``up``, ``y -> y down_k up_k`` is the rank-k
    projection minimising ``E[e^T F e]`` for the error ``e`` (twice the KL divergence it causes in
    the predictions, to second order), and ``values[k:]`` sum to that minimum. ``down @ up`` is the
    identity, and the rows of ``up`` have unit norm (each pair rescaled), so the codes keep the
    outputs' own scale, as int8 activations need. Without ``F`` these are the eigenvectors of
    ``M`` (``up = down^T``).
    """
    if fisher is None:
        values, vectors = eigen(second_moment)
        return values, vectors, vectors.T
    dim = len(fisher)
    metric = 0.5 * (fisher + fisher.T)
    metric = metric + FISHER_RIDGE * max(float(np.trace(metric)) / dim, 1e-30) * np.eye(dim)
    lower = np.linalg.cholesky(metric)
    values, vectors = eigen(lower.T @ second_moment @ lower)
    down, up = lower @ vectors, np.linalg.solve(lower.T, vectors).T
    norms = np.linalg.norm(up, axis=1)  # the codes in the outputs' own scale, as without F
    return values, down * norms, up / norms[:, None]


def _checked(name: str, stats: LayerStatistics | None, dim: int) -> LayerStatistics:
    if stats is None:
        raise UserError(f"Layer {name!r}: method='afm' needs calibration statistics for this layer.")
    if stats.dim != dim:
        raise UserError(f"Layer {name!r}: statistics have dimension {stats.dim}, the layer outputs {dim}.")
    stats.check(name)
    return stats


def factor(
    name: str,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    rank: int,
    stats: LayerStatistics | None,
    method: str,
    lookups: bool = False,
    fisher: np.ndarray | None = None,
) -> Factors:
    """Factors ``y = x W + b`` at ``rank``.

    AFM (``mu``, ``Q_k`` from ``stats``): ``D = W Q_k``, ``b_D = b Q_k``,
    ``U = Q_k^T``, ``b_U = mu - mu Q_k Q_k^T``; for a table, ``D = (E - mu) Q_k``,
    ``b_U = mu``. SVD (right singular vectors ``B_k``): ``D = W B_k``, ``U = B_k^T``,
    ``b_U = b``; for a table the mean row ``m`` is taken out first: ``D = (E - m) B_k``,
    ``b_U = m``. With ``fisher`` (the mean Fisher information of the predictions with
    respect to the outputs) the directions are those of :func:`weighted_bases` (``Q_k`` down,
    its ``up_k`` up): the rank-k map losing the least in the predictions rather than in the
    outputs. All are exact at full rank.
    """
    check_method(method)
    d_out = kernel.shape[1]
    if not 1 <= rank <= min(kernel.shape):
        raise UserError(f"Layer {name!r}: rank must be an integer in [1, {min(kernel.shape)}], got {rank!r}.")
    bias64 = np.zeros(d_out) if bias is None else np.asarray(bias, dtype=np.float64)
    if method == "afm":
        stats = _checked(name, stats, d_out)
        _, basis, up = weighted_bases(stats.covariance, fisher)
        basis, up = basis[:, :rank], up[:rank]
        mean = stats.mean
        centre = mean if lookups else None
        up_bias = mean if lookups else mean - (mean @ basis) @ up
    else:
        centre = column_mean(kernel) if lookups else None
        _, basis, up = weighted_bases(gram(kernel, centre), fisher)
        basis, up = basis[:, :rank], up[:rank]
        up_bias = centre if lookups else bias64
    down = project(kernel, basis, centre)
    down_bias = np.zeros(rank) if lookups or method == "svd" else bias64 @ basis
    return Factors(down, up.astype(np.float32), down_bias.astype(np.float32), up_bias.astype(np.float32))
