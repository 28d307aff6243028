"""Turns raw rows into model inputs: dense transforms and per-field vocabularies.

A :class:`Preprocessor` is fitted on the training rows only and saved beside a
trained model, so evaluation data is encoded exactly like the training data.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Iterable, Sequence

import numpy as np

from tfafm.data.formats import FORMATS, DataFormat, RawRow
from tfafm.io_utils import atomic_write_text
from tfafm.schema import DenseFeature, Schema, SparseFeature

_VERSION = 1


class Preprocessor:
    """Encodes rows of one :class:`DataFormat`.

    Dense counts: missing -> 0, negatives clipped to 0, then ``log(1 + x)``.
    Categorical values: id ``i >= 1`` for the ``i``-th vocabulary entry; id 0 for
    missing (empty) values and for values not in the vocabulary.

    Args:
        data_format: name of the format (``"criteo"`` or ``"avazu"``).
        vocabularies: per categorical field, its values in id order (id 1 first).
        min_count: the minimum count used when fitting (kept for reference).
    """

    def __init__(self, data_format: str, vocabularies: dict[str, Sequence[str]], min_count: int = 1):
        if data_format not in FORMATS:
            raise ValueError(f"Unknown data format {data_format!r}; expected one of {sorted(FORMATS)}.")
        self.format: DataFormat = FORMATS[data_format]
        expected = self.format.sparse_names
        if tuple(vocabularies) != expected:
            raise ValueError(
                f"Vocabularies must cover the {data_format} fields {list(expected)} in order, "
                f"got {list(vocabularies)}."
            )
        self.min_count = int(min_count)
        self.vocabularies = {name: list(values) for name, values in vocabularies.items()}
        self._ids = [
            {value: i for i, value in enumerate(values, start=1)}
            for values in self.vocabularies.values()
        ]

    @classmethod
    def fit(cls, data_format: DataFormat, rows: Iterable[RawRow], min_count: int = 1) -> "Preprocessor":
        """Builds vocabularies in one streaming pass (memory: the distinct values).

        Keeps values seen at least ``min_count`` times, ordered by descending
        count, then by value.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}.")
        counters = [collections.Counter() for _ in data_format.sparse_names]
        for row in rows:
            for counter, value in zip(counters, row.sparse):
                counter[value] += 1
        vocabularies = {}
        for name, counter in zip(data_format.sparse_names, counters):
            counter.pop("", None)
            kept = [(-n, v) for v, n in counter.items() if n >= min_count]
            vocabularies[name] = [v for _, v in sorted(kept)]
        return cls(data_format.name, vocabularies, min_count)

    def schema(self, embedding_dim: int = 16) -> Schema:
        """Dense features, then sparse ones with ``vocabulary_size = len(vocabulary) + 1``."""
        return Schema(
            [DenseFeature(name) for name in self.format.dense]
            + [
                SparseFeature(name, len(values) + 1, embedding_dim)
                for name, values in self.vocabularies.items()
            ]
        )

    def encode(self, rows: Sequence[RawRow]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``(features, labels)``: arrays of shape (n, 1); float32 dense, int32 sparse, float32 labels."""
        n = len(rows)
        features: dict[str, np.ndarray] = {}
        if self.format.dense:
            dense = np.array([row.dense for row in rows], dtype=np.float64).reshape(n, -1)
            dense = np.log1p(np.clip(np.nan_to_num(dense, nan=0.0), 0.0, None)).astype(np.float32)
            features.update({name: dense[:, [j]] for j, name in enumerate(self.format.dense)})
        for j, (name, ids) in enumerate(zip(self.vocabularies, self._ids)):
            features[name] = np.array(
                [ids.get(row.sparse[j], 0) for row in rows], dtype=np.int32
            ).reshape(n, 1)
        labels = np.array([row.label for row in rows], dtype=np.float32).reshape(n, 1)
        return features, labels

    def to_dict(self) -> dict:
        return {
            "version": _VERSION,
            "format": self.format.name,
            "min_count": self.min_count,
            "vocabularies": self.vocabularies,
        }

    @classmethod
    def from_dict(cls, config: dict) -> "Preprocessor":
        if config.get("version") != _VERSION:
            raise ValueError(f"Unsupported preprocessor version {config.get('version')!r}.")
        return cls(config["format"], config["vocabularies"], config.get("min_count", 1))

    def save(self, path: str) -> None:
        """Writes the preprocessor as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str) -> "Preprocessor":
        if not os.path.exists(path):
            raise FileNotFoundError(f"Preprocessor file not found: {path}")
        with open(path) as f:
            return cls.from_dict(json.load(f))
