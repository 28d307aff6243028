"""The CTR model zoo: ``build(name, schema, **hyperparams)`` and ``available()``.

Its feature-interaction layers (factorization machines, cross layers, CIN,
attention over fields, ...) are in :mod:`tfafm.models.layers`.
"""

from __future__ import annotations

import inspect

import keras

from tfafm.models import layers  # noqa: F401  (registers the zoo's layers with Keras)
from tfafm.models.zoo import BUILDERS
from tfafm.schema import Schema


def available() -> list[str]:
    """Names of the model builders, e.g. ``["autoint", "dcn", ...]``."""
    return sorted(BUILDERS)


def build(name: str, schema: Schema, **hyperparams) -> keras.Model:
    """Builds the functional model ``name`` for ``schema``.

    Raises:
        ValueError: for an unknown model name or hyper-parameter.

    Example:

    >>> import tfafm
    >>> schema = tfafm.Schema([tfafm.DenseFeature("price"), tfafm.SparseFeature("site", 100, 8),
    ...                        tfafm.SparseFeature("app", 50, 8)])
    >>> model = tfafm.models.build("deepfm", schema, hidden_units=(32, 16))
    >>> sorted(model.input), model.output.shape
    (['app', 'price', 'site'], (None, 1))
    """
    if name not in BUILDERS:
        raise ValueError(f"Unknown model {name!r}; available: {', '.join(available())}.")
    builder = BUILDERS[name]
    accepted = set(inspect.signature(builder).parameters) - {"schema"}
    unknown = sorted(set(hyperparams) - accepted)
    if unknown:
        raise ValueError(
            f"Model {name!r} has no hyper-parameter {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted))}."
        )
    return builder(schema, **hyperparams)


__all__ = ["available", "build", "layers"]
