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


def weight_basis(matrix: np.ndarray, lookups: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Squared singular values of ``W`` (of ``E`` minus its mean row for an embedding table, whose
    mean becomes the bias), descending, and the output directions they belong to (columns)."""
    centre = column_mean(matrix) if lookups else None
    return eigen(gram(matrix, centre))


def weight_spectrum(matrix: np.ndarray, lookups: bool = False) -> np.ndarray:
    """The variance SVD keeps per rank (see :func:`weight_basis`)."""
    return weight_basis(matrix, lookups)[0]


def _afm_basis(name: str, stats: LayerStatistics | None, dim: int, rank: int):
    if stats is None:
        raise UserError(f"Layer {name!r}: method='afm' needs calibration statistics for this layer.")
    if stats.dim != dim:
        raise UserError(f"Layer {name!r}: statistics have dimension {stats.dim}, the layer outputs {dim}.")
    _, vectors = stats.principal(name)
    return stats.mean, vectors[:, :rank]


def factor(
    name: str,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    rank: int,
    stats: LayerStatistics | None,
    method: str,
    lookups: bool = False,
) -> Factors:
    """Factors ``y = x W + b`` at ``rank``.

    AFM (``mu``, ``Q_k`` from ``stats``): ``D = W Q_k``, ``b_D = b Q_k``,
    ``U = Q_k^T``, ``b_U = mu - mu Q_k Q_k^T``; for a table, ``D = (E - mu) Q_k``,
    ``b_U = mu``. SVD (right singular vectors ``B_k``): ``D = W B_k``, ``U = B_k^T``,
    ``b_U = b``; for a table the mean row ``m`` is taken out first: ``D = (E - m) B_k``,
    ``b_U = m``. All are exact at full rank.
    """
    check_method(method)
    d_out = kernel.shape[1]
    if not 1 <= rank <= min(kernel.shape):
        raise UserError(f"Layer {name!r}: rank must be an integer in [1, {min(kernel.shape)}], got {rank!r}.")
    bias64 = np.zeros(d_out) if bias is None else np.asarray(bias, dtype=np.float64)
    if method == "afm":
        mean, basis = _afm_basis(name, stats, d_out, rank)
        centre = mean if lookups else None
        up_bias = mean if lookups else mean - (mean @ basis) @ basis.T
    else:
        centre = column_mean(kernel) if lookups else None
        basis = eigen(gram(kernel, centre))[1][:, :rank]
        up_bias = centre if lookups else bias64
    down = project(kernel, basis, centre)
    down_bias = np.zeros(rank) if lookups or method == "svd" else bias64 @ basis
    return Factors(down, basis.T.astype(np.float32), down_bias.astype(np.float32), up_bias.astype(np.float32))
