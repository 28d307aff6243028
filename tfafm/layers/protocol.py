"""The opt-in protocol by which a custom layer offers its weight matrices to compression.

A layer that computes ``x @ W + b`` products with weights of its own (a
feature-interaction network, a custom projection) implements three methods;
:func:`tfafm.compress` then calibrates, ranks and factors those matrices like
``Dense`` kernels, and :func:`tfafm.calibrate` records their outputs::

    class MyCross(keras.layers.Layer):
        def tfafm_matrices(self) -> dict[str, tfafm.Matrix]:
            return {"kernel": tfafm.Matrix(self.kernel.numpy(), self.bias.numpy())}

        def tfafm_call(self, x):
            pre = x @ self.kernel + self.bias            # the product's output rows
            return x * pre + x, {"kernel": pre}          # (layer outputs, {matrix: features})

        def tfafm_factored(self, factors: dict[str, tfafm.Factors]) -> keras.layers.Layer:
            return MyLowRankCross(...)                   # a built layer using factors["kernel"]

Rules: ``tfafm_call`` takes the layer's call arguments, returns exactly what
``call`` returns plus, per matrix, the pre-activation output of its product
(any shape whose last axis is ``d_out``; every row is one sample).
``tfafm_factored`` gets one :class:`~tfafm.linalg.Factors` per matrix chosen
for compression (``y ~ (x @ down + down_bias) @ up + up_bias``; matrices not
chosen are absent) and returns a new, built layer computing the same function
with the factors, with a ``get_config`` so ``.keras`` files round-trip.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tfafm.linalg.factorize import Factors


@dataclasses.dataclass(frozen=True)
class Matrix:
    """One compressible product ``y = x @ kernel + bias`` of a layer.

    Attributes:
        kernel: ``(d_in, d_out)`` weights.
        bias: ``(d_out,)`` bias, or None.
    """

    kernel: np.ndarray
    bias: np.ndarray | None = None


@runtime_checkable
class CompressibleLayer(Protocol):
    """What a custom layer implements to be compressed (see the module docstring)."""

    def tfafm_matrices(self) -> dict[str, Matrix]:
        ...

    def tfafm_call(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        ...

    def tfafm_factored(self, factors: dict[str, Factors]) -> Any:
        ...
