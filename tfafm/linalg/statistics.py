"""Output-feature statistics of a layer: count, sum and sum of outer products in float64."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from tfafm.errors import MissingFileError, UserError


@dataclasses.dataclass
class LayerStatistics:
    """Streaming moments of a layer's output features ``y`` (one row per sample).

    Moments are taken of ``y - shift`` for a fixed ``shift`` near the mean,
    which keeps ``S / n - m m^T`` free of cancellation.

    Attributes:
        count: number of rows seen.
        total: ``sum(y - shift)``, shape ``(d,)``.
        outer: ``sum((y - shift)(y - shift)^T)``, shape ``(d, d)``.
        shift: the constant subtracted from every row, shape ``(d,)`` (zeros by default).
        fisher: ``sum(w g g^T)`` over the rows, shape ``(d, d)``, or None: ``g`` is the gradient
            of the model's prediction with respect to the row and ``w`` the Bernoulli Fisher
            weight (``1 / (p (1 - p))`` for a probability, ``p (1 - p)`` for a logit), so
            ``e^T (fisher / count) e`` is twice the expected KL divergence a change ``e`` of the
            rows causes in the predictions, to second order (see :func:`tfafm.calibrate`).
    """

    count: float
    total: np.ndarray
    outer: np.ndarray
    shift: np.ndarray | None = None
    fisher: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.total.shape[0])

    @property
    def mean(self) -> np.ndarray:
        shifted_mean = self.total / self.count
        return shifted_mean if self.shift is None else shifted_mean + self.shift

    @property
    def covariance(self) -> np.ndarray:
        """Population covariance ``S / n - m m^T`` of the shifted rows (symmetrised)."""
        shifted_mean = self.total / self.count
        cov = self.outer / self.count - np.outer(shifted_mean, shifted_mean)
        return 0.5 * (cov + cov.T)

    def about(self, shift: np.ndarray) -> "LayerStatistics":
        """The same moments taken about another ``shift`` (exact in float64)."""
        old = np.zeros(self.dim) if self.shift is None else self.shift
        delta = old - shift
        total = self.total + self.count * delta
        outer = (self.outer + np.outer(delta, self.total) + np.outer(self.total, delta)
                 + self.count * np.outer(delta, delta))
        return LayerStatistics(self.count, total, outer, np.asarray(shift, dtype=np.float64), self.fisher)

    def principal(self, name: str = "layer") -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (descending, clipped at 0) and eigenvectors (columns) of the covariance."""
        self.check(name)
        values, vectors = np.linalg.eigh(self.covariance)
        order = np.argsort(values)[::-1]
        return np.clip(values[order], 0.0, None), vectors[:, order]

    def check(self, name: str, min_rows: int = 1) -> None:
        """Raises :class:`~tfafm.errors.UserError` naming the layer when these moments cannot
        give a meaningful basis: fewer than ``min_rows`` rows, values that are not finite, or
        no variance at all (constant outputs)."""
        if self.count <= 0:
            raise UserError(f"Layer {name!r}: no calibration rows were seen (empty calibration data?).")
        if not (np.all(np.isfinite(self.total)) and np.all(np.isfinite(self.outer))):
            raise UserError(
                f"Layer {name!r}: calibration statistics are not finite (NaN, Inf or values too large "
                "for float32 in the data or weights)."
            )
        if self.count < min_rows:
            raise UserError(
                f"Layer {name!r}: only {int(self.count)} calibration rows, fewer than the {min_rows} needed "
                f"for a {self.dim}-wide output (2x its width); give more calibration data (or, from Python, "
                "lower min_calibration_rows)."
            )
        variance = float(np.trace(self.covariance))
        scale = float(np.dot(self.mean, self.mean)) + 1.0
        if not variance > 1e-12 * scale:
            raise UserError(
                f"Layer {name!r}: its outputs do not vary over the calibration data (constant data?); "
                "AFM cannot find principal directions. Calibrate on representative data or exclude the layer."
            )


class Statistics(dict):
    """Per-layer :class:`LayerStatistics`, keyed by layer name, with npz save/load."""

    def save(self, path: str) -> None:
        """Writes all layers' moments to one ``.npz`` file, atomically."""
        from tfafm.io_utils import atomic_path

        arrays = {}
        for name, stats in self.items():
            arrays[f"{name}/count"] = np.asarray(stats.count, dtype=np.float64)
            arrays[f"{name}/total"] = stats.total
            arrays[f"{name}/outer"] = stats.outer
            arrays[f"{name}/shift"] = np.zeros(stats.dim) if stats.shift is None else stats.shift
            if stats.fisher is not None:
                arrays[f"{name}/fisher"] = stats.fisher
        if not path.endswith(".npz"):
            path += ".npz"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str) -> "Statistics":
        """Reads statistics written by :meth:`save`."""
        if not os.path.exists(path) and os.path.exists(path + ".npz"):
            path += ".npz"
        if not os.path.exists(path):
            raise MissingFileError(f"Statistics file not found: {path}")
        stats = cls()
        try:
            with np.load(path) as data:
                names = sorted({key.rsplit("/", 1)[0] for key in data.files})
                for name in names:
                    stats[name] = LayerStatistics(
                        float(data[f"{name}/count"]), data[f"{name}/total"], data[f"{name}/outer"],
                        data[f"{name}/shift"],
                        data[f"{name}/fisher"] if f"{name}/fisher" in data.files else None,
                    )
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"{path}: not a tfafm statistics file ({error}).") from None
        return stats
