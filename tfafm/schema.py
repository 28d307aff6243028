"""Feature schema: which inputs a CTR model has and how they are embedded.

A schema is saved beside every trained model (``schema.json``) so evaluation
and serving data are encoded exactly like the training data.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Union


@dataclasses.dataclass(frozen=True)
class DenseFeature:
    """A real-valued input, fed to the model as a float32 tensor of shape (batch, 1)."""

    name: str

    def __post_init__(self) -> None:
        _check_name(self.name)


@dataclasses.dataclass(frozen=True)
class SparseFeature:
    """A categorical input, fed as int32 ids of shape (batch, 1).

    Id 0 is reserved for out-of-vocabulary and missing values; valid ids lie in
    ``[0, vocabulary_size)``.
    """

    name: str
    vocabulary_size: int
    embedding_dim: int = 16

    def __post_init__(self) -> None:
        _check_name(self.name)
        if int(self.vocabulary_size) < 1:
            raise ValueError(
                f"SparseFeature {self.name!r}: vocabulary_size must be >= 1, "
                f"got {self.vocabulary_size}."
            )
        if int(self.embedding_dim) < 1:
            raise ValueError(
                f"SparseFeature {self.name!r}: embedding_dim must be >= 1, "
                f"got {self.embedding_dim}."
            )


Feature = Union[DenseFeature, SparseFeature]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or not name.replace("_", "a").isalnum():
        raise ValueError(
            f"Feature name {name!r} must be a non-empty string of letters, "
            "digits and underscores."
        )


@dataclasses.dataclass(frozen=True)
class Schema:
    """An ordered collection of dense and sparse features."""

    features: tuple[Feature, ...]

    def __init__(self, features: Iterable[Feature]):
        features = tuple(features)
        names = [f.name for f in features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Schema has duplicate feature names: {duplicates}.")
        if not features:
            raise ValueError("Schema needs at least one feature.")
        object.__setattr__(self, "features", features)

    @property
    def dense(self) -> tuple[DenseFeature, ...]:
        return tuple(f for f in self.features if isinstance(f, DenseFeature))

    @property
    def sparse(self) -> tuple[SparseFeature, ...]:
        return tuple(f for f in self.features if isinstance(f, SparseFeature))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def __getitem__(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"No feature named {name!r} in the schema.")

    def with_embedding_dim(self, embedding_dim: int) -> "Schema":
        """Returns a copy with every sparse feature's ``embedding_dim`` replaced."""
        return Schema(
            dataclasses.replace(f, embedding_dim=embedding_dim)
            if isinstance(f, SparseFeature)
            else f
            for f in self.features
        )

    def to_dict(self) -> dict:
        return {
            "features": [
                {"type": "sparse" if isinstance(f, SparseFeature) else "dense",
                 **dataclasses.asdict(f)}
                for f in self.features
            ]
        }

    @classmethod
    def from_dict(cls, config: dict) -> "Schema":
        features: list[Feature] = []
        for i, entry in enumerate(config.get("features", [])):
            entry = dict(entry)
            kind = entry.pop("type", None)
            if kind == "sparse":
                features.append(SparseFeature(**entry))
            elif kind == "dense":
                features.append(DenseFeature(**entry))
            else:
                raise ValueError(
                    f"Schema feature #{i}: type must be 'sparse' or 'dense', got {kind!r}."
                )
        return cls(features)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Schema":
        return cls.from_dict(json.loads(text))

    def save(self, path: str) -> None:
        """Writes the schema as JSON, atomically."""
        from tfafm.io_utils import atomic_write_text

        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> "Schema":
        if not os.path.exists(path):
            raise FileNotFoundError(f"Schema file not found: {path}")
        with open(path) as f:
            return cls.from_json(f.read())
