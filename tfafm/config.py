"""Experiment configs: model, hyper-parameters, data options and training budget (YAML)."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import yaml

from tfafm.errors import MissingFileError, UserError


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
        """A config from a mapping of options; ``source`` (a file name) starts every error message.

        Raises:
            UserError: an unknown option or a value of the wrong type or range.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"{source}: unknown option(s) {unknown}; known: {sorted(known)}.")
        for name, value in values.items():
            _check_value(source, name, value)
        return cls(**values)

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        """Reads a YAML config file (a mapping of options)."""
        if not os.path.exists(path) or os.path.isdir(path):  # a pipe (--config /dev/stdin) is read once
            raise MissingFileError(f"Config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise UserError(f"{where}: not valid YAML: {problem}") from None
        except UnicodeDecodeError as error:
            raise UserError(f"{path}: not UTF-8 text (byte {error.start})") from None
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise UserError(f"{path}: expected a mapping of options at the top level, got {type(values).__name__}.")
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



def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


MAX_COUNT = 2**31 - 1  # the largest count, size or number of steps an option takes
MAX_SEED = 2**32 - 1  # numpy's and Keras' largest seed

# option -> (accepts the value, what it must be, largest value or None)
_CHECKS = {
    "model": (lambda v: isinstance(v, str) and bool(v), "a model name", None),
    "hyperparams": (lambda v: isinstance(v, dict), "a mapping of builder arguments", None),
    "learning_rate": (lambda v: _is_number(v) and v > 0, "a positive number", None),
    "validation_fraction": (lambda v: _is_number(v) and 0 < v <= 0.5, "a number in (0, 0.5]", None),
    "early_stopping_patience": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", MAX_COUNT),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", MAX_SEED),
    **{name: (lambda v: _is_int(v) and v >= 1, "a positive integer", MAX_COUNT)
       for name in ("embedding_dim", "batch_size", "epochs", "min_count", "synthetic_rows",
                    "synthetic_max_vocabulary")},
}


def _check_value(source: str, name: str, value: Any) -> None:
    """Raises a :class:`UserError` naming ``source`` and option ``name`` for a bad value."""
    accept, expected, upper = _CHECKS[name]
    if not accept(value):
        raise UserError(f"{source}: {name} must be {expected}, got {value!r}.")
    if upper is not None and value > upper:
        raise UserError(f"{source}: {name} must be at most {upper}, got {value!r}.")
