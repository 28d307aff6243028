"""Turns raw rows into model inputs: dense transforms and per-field vocabularies.

A :class:`Preprocessor` is fitted on the training rows only and saved beside a
trained model, so evaluation data is encoded exactly like the training data.
Vocabularies live in Arrow string arrays (no Python object per value) and are
saved as one newline-joined JSON string per field, so even tens of millions of
values save and load in seconds.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfafm.data.columnar import Columns
from tfafm.data.formats import FORMATS, DataFormat, RawRow, format_from_dict
from tfafm.data.vocabulary import ValueCounts
from tfafm.errors import MissingFileError, UserError
from tfafm.io_utils import atomic_write_text
from tfafm.jsonfile import read_json
from tfafm.schema import DenseFeature, Schema, SparseFeature

_VERSION = 2
_FIT_CHUNK_ROWS = 65536
_INT64_MAX = 2**63 - 1  # counts are int64 Arrow columns


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 1 <= value <= _INT64_MAX


class Encoded(NamedTuple):
    """Encoded rows: float32 labels ``(n,)``, float32 dense ``(n, D)``, int32 ids ``(n, S)``."""

    labels: np.ndarray
    dense: np.ndarray
    ids: np.ndarray


class Preprocessor:
    """Encodes rows of one :class:`DataFormat`.

    Dense counts: missing -> 0, negatives clipped to 0, then ``log(1 + x)``.
    Categorical values: id ``i >= 1`` for the ``i``-th vocabulary entry; id 0 for
    missing (empty) values and for values not in the vocabulary.

    Args:
        data_format: a format name (``"criteo"``, ``"avazu"``) or a :class:`DataFormat`.
        vocabularies: per categorical field, its values in id order (id 1 first),
            as a sequence of strings or an Arrow string array.
        min_count: the minimum count used when fitting (kept for reference).
        max_vocabulary: the per-field cap used when fitting (kept for reference).
    """

    def __init__(self, data_format: Union[str, DataFormat], vocabularies: Mapping[str, Union[Sequence[str], pa.Array]],
                 min_count: int = 1, max_vocabulary: Optional[int] = None):
        if isinstance(data_format, str):
            if data_format not in FORMATS:
                raise ValueError(f"Unknown data format {data_format!r}; expected one of {sorted(FORMATS)}.")
            data_format = FORMATS[data_format]
        self.format: DataFormat = data_format
        expected = self.format.sparse_names
        if tuple(vocabularies) != expected:
            raise ValueError(
                f"Vocabularies must cover the {self.format.name} fields {list(expected)} in order, "
                f"got {list(vocabularies)}."
            )
        self.min_count = int(min_count)
        self.max_vocabulary = None if max_vocabulary is None else int(max_vocabulary)
        self._vocabularies = {name: _string_array(values) for name, values in vocabularies.items()}

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        """Per field, its values in id order, as Python lists (costly for huge vocabularies)."""
        return {name: values.to_pylist() for name, values in self._vocabularies.items()}

    def vocabulary(self, field: str) -> pa.Array:
        """``field``'s values in id order (id 1 first), as an Arrow string array."""
        return self._vocabularies[field]

    @classmethod
    def fit(cls, data_format: DataFormat, rows: Iterable[RawRow], min_count: int = 1,
            max_vocabulary: Optional[int] = None) -> "Preprocessor":
        """Builds vocabularies in one streaming pass over parsed rows (memory: the distinct values).

        Keeps values seen at least ``min_count`` times, ordered by descending
        count, then by value, at most ``max_vocabulary`` per field.
        """
        counts = ValueCounts(data_format.sparse_names)
        iterator = iter(rows)
        while chunk := list(itertools.islice(iterator, _FIT_CHUNK_ROWS)):
            counts.add(Columns.from_rows(chunk, data_format))
        return cls.from_counts(data_format, counts, min_count, max_vocabulary)

    @classmethod
    def from_counts(cls, data_format: DataFormat, counts: ValueCounts, min_count: int = 1,
                    max_vocabulary: Optional[int] = None) -> "Preprocessor":
        """The vocabularies :meth:`fit` would choose, from value counts of the training rows."""
        if not _is_count(min_count):
            raise UserError(f"min_count must be an integer in [1, {_INT64_MAX}], got {min_count!r}.")
        if max_vocabulary is not None and not _is_count(max_vocabulary):
            raise UserError(f"max_vocabulary must be an integer in [1, {_INT64_MAX}], got {max_vocabulary!r}.")
        if counts.fields != data_format.sparse_names:
            raise ValueError(f"Counts of fields {list(counts.fields)} do not match the "
                             f"{data_format.name} fields {list(data_format.sparse_names)}.")
        vocabularies = {name: counts.vocabulary(name, min_count, max_vocabulary) for name in counts.fields}
        return cls(data_format, vocabularies, min_count, max_vocabulary)

    def schema(self, embedding_dim: int = 16) -> Schema:
        """Dense features, then sparse ones with ``vocabulary_size = len(vocabulary) + 1``."""
        return Schema(
            [DenseFeature(name) for name in self.format.dense]
            + [
                SparseFeature(name, len(values) + 1, embedding_dim)
                for name, values in self._vocabularies.items()
            ]
        )

    def encode_columns(self, columns: Columns) -> Encoded:
        """Encodes parsed columns, vectorised (one hash lookup per distinct value per block)."""
        dense = np.log1p(np.fmax(columns.dense, 0.0)).astype(np.float32)  # fmax: nan -> 0
        ids = np.empty((columns.rows, len(self._vocabularies)), dtype=np.int32)
        for j, (array, lookup) in enumerate(zip(columns.sparse, self._lookups)):
            ids[:, j] = lookup(array.dictionary)[array.indices.to_numpy(zero_copy_only=False)]
        return Encoded(columns.labels.astype(np.float32), dense, ids)

    @functools.cached_property
    def _lookups(self) -> list["_Lookup"]:
        return [_Lookup(values) for values in self._vocabularies.values()]

    def encode(self, rows: Sequence[RawRow]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``(features, labels)``: arrays of shape (n, 1); float32 dense, int32 sparse, float32 labels."""
        encoded = self.encode_columns(Columns.from_rows(rows, self.format))
        features = {name: encoded.dense[:, [j]] for j, name in enumerate(self.format.dense)}
        features.update({name: encoded.ids[:, [j]] for j, name in enumerate(self._vocabularies)})
        return features, encoded.labels.reshape(-1, 1)

    def to_dict(self) -> dict:
        """A JSON-able description; each vocabulary is one newline-joined string when no
        value holds a line break (a list otherwise)."""
        return {
            "version": _VERSION,
            "format": self.format.to_dict(),
            "min_count": self.min_count,
            "max_vocabulary": self.max_vocabulary,
            "vocabularies": {name: _joined(values) for name, values in self._vocabularies.items()},
        }

    @classmethod
    def from_dict(cls, config: dict) -> "Preprocessor":
        version = config.get("version")
        if version not in (1, _VERSION):
            raise ValueError(f"Unsupported preprocessor version {version!r}.")
        data_format = config["format"]
        data_format = FORMATS[data_format] if isinstance(data_format, str) else format_from_dict(data_format)
        vocabularies = {name: _split(values) for name, values in config["vocabularies"].items()}
        return cls(data_format, vocabularies, config.get("min_count", 1), config.get("max_vocabulary"))

    @functools.cached_property
    def _json(self) -> str:
        return json.dumps(self.to_dict())

    @property
    def digest(self) -> str:
        """A SHA-256 of the saved form: equal digests encode identically."""
        return hashlib.sha256(self._json.encode()).hexdigest()

    def save(self, path: str) -> None:
        """Writes the preprocessor as JSON, atomically."""
        atomic_write_text(path, self._json)

    @classmethod
    def load(cls, path: str) -> "Preprocessor":
        """Reads a preprocessor written by :meth:`save`.

        Raises:
            MissingFileError: no file at ``path``.
            UserError: the file is not valid JSON or not a preprocessor (the message names it).
        """
        if not os.path.exists(path) or os.path.isdir(path):  # a pipe is read once, like a file
            raise MissingFileError(f"Preprocessor file not found: {path}")
        config = read_json(path)
        try:
            return cls.from_dict(config)
        except (KeyError, TypeError, ValueError, AttributeError, pa.ArrowException) as error:
            detail = f"no {error}" if isinstance(error, KeyError) else _one_line(error)
            raise UserError(f"{path}: not a tfafm preprocessor ({detail})") from None


class _Lookup:
    """Value -> id (0 when absent) of one vocabulary, built once.

    Values of at most 8 bytes without NUL bytes (Criteo's and Avazu's hashed
    ids, short numbers) become big-endian uint64 keys, looked up by binary
    search in the sorted vocabulary keys: O(block) per block. Other
    vocabularies use Arrow's hash lookup, which rebuilds its table each call.
    """

    def __init__(self, vocabulary: pa.Array):
        self.vocabulary = vocabulary
        self.keys = None
        keys, valid = _short_keys(vocabulary)
        if valid.all():
            order = np.argsort(keys, kind="stable")
            self.keys, self.ids = keys[order], (order + 1).astype(np.int32)

    def __call__(self, values: pa.Array) -> np.ndarray:
        if self.keys is None:
            found = pc.index_in(values.cast(self.vocabulary.type), value_set=self.vocabulary)
            return pc.fill_null(pc.add(found, 1), 0).to_numpy(zero_copy_only=False).astype(np.int32)
        keys, valid = _short_keys(values)
        ids = np.zeros(len(keys), dtype=np.int32)
        if len(self.keys) and len(keys):
            order = np.argsort(keys)
            position = np.minimum(np.searchsorted(self.keys, keys[order]), len(self.keys) - 1)
            ids[order] = np.where(self.keys[position] == keys[order], self.ids[position], 0)
        ids[~valid] = 0
        return ids


def _short_keys(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded big-endian uint64 keys of strings, and which strings have at most
    8 bytes and no NUL byte (only those keys identify their string)."""
    n = len(values)
    offset_type = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], dtype=offset_type)[values.offset: values.offset + n + 1]
    data = values.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    padded = np.zeros((n, 8), dtype=np.uint8)
    for k in range(8):
        longer = np.flatnonzero(lengths > k)
        padded[longer, k] = data[offsets[longer] + k]
    nul = ((padded == 0) & (np.arange(8) < lengths[:, None])).any(axis=1)
    return padded.view(">u8").reshape(n).astype(np.uint64), (lengths <= 8) & ~nul


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__


def _string_array(values: Union[Sequence[str], pa.Array]) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) \
            else values.cast(pa.string())
    return pa.array(list(values), pa.string())


def _joined(values: pa.Array) -> Union[dict, list]:
    if len(values) and pc.any(pc.match_substring_regex(values, "[\n\r]")).as_py():
        return values.to_pylist()
    text = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()),
                                                   values.cast(pa.large_string())),
                          pa.scalar("\n", pa.large_string()))
    return {"size": len(values), "joined": text[0].as_py()}


def _split(values: Union[dict, list]) -> pa.Array:
    if isinstance(values, list):
        return pa.array(values, pa.string())
    if not values["size"]:
        return pa.array([], pa.string())
    parts = pc.split_pattern(pa.array([values["joined"]], pa.large_string()), "\n").flatten()
    if len(parts) != values["size"]:
        raise ValueError(f"Vocabulary holds {len(parts)} values, expected {values['size']}.")
    return parts if parts.nbytes >= 1 << 31 else parts.cast(pa.string())
