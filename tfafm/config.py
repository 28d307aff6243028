"""Experiment configs: model, hyper-parameters, data options and training budget (YAML)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import yaml


@dataclasses.dataclass
class TrainConfig:
    """Everything ``tfafm train`` needs besides the data spec.

    Attributes:
        model: builder name (see ``tfafm.models.available()``).
        hyperparams: keyword arguments of the builder.
        embedding_dim: width of every sparse feature's embedding.
        batch_size: rows per batch.
        epochs: maximum training epochs.
        learning_rate: Adam learning rate.
        early_stopping_patience: epochs without validation-AUC gain before
            stopping (the best weights are restored); 0 disables it.
        min_count: minimum occurrences for a categorical value to get an id.
        validation_fraction: share of real-data rows held out for validation.
        synthetic_rows: training rows for ``--data synthetic``.
        synthetic_max_vocabulary: largest synthetic vocabulary.
        seed: random seed of weights, shuffling and synthetic data.
    """

    model: str = "deepfm"
    hyperparams: dict = dataclasses.field(default_factory=dict)
    embedding_dim: int = 16
    batch_size: int = 1024
    epochs: int = 1
    learning_rate: float = 1e-3
    early_stopping_patience: int = 1
    min_count: int = 1
    validation_fraction: float = 0.1
    synthetic_rows: int = 200_000
    synthetic_max_vocabulary: int = 100_000
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {unknown}; known: {sorted(known)}.")
        config = cls(**values)
        for name in ("embedding_dim", "batch_size", "epochs", "synthetic_rows", "synthetic_max_vocabulary"):
            value = getattr(config, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{source}: {name} must be a positive integer, got {value!r}.")
        if not isinstance(config.hyperparams, dict):
            raise ValueError(f"{source}: hyperparams must be a mapping, got {config.hyperparams!r}.")
        return config

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        if not os.path.exists(path):
            raise FileNotFoundError(f"Config file not found: {path}")
        with open(path) as f:
            try:
                values = yaml.safe_load(f) or {}
            except yaml.YAMLError as error:
                raise ValueError(f"{path}: not valid YAML ({error}).") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of options at the top level.")
        return cls.from_dict(values, source=path)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`tfafm.data.load_data`."""
        return {
            "batch_size": self.batch_size,
            "embedding_dim": self.embedding_dim,
            "validation_fraction": self.validation_fraction,
            "min_count": self.min_count,
            "synthetic_rows": self.synthetic_rows,
            "synthetic_max_vocabulary": self.synthetic_max_vocabulary,
            "seed": self.seed,
        }
