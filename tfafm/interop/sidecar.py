"""The preprocessing sidecar of a converted model: raw feature values -> the model's inputs.

Keras 2 models often look categorical values up inside the graph
(``StringLookup``, ``IntegerLookup``, ``Hashing``). LiteRT's builtin ops cannot
do that, so :func:`tfafm.interop.from_keras2` lifts those layers out: the
converted model takes one named ``(batch, 1)`` input per feature (int32 ids or
float32 values), and a :class:`RawFeatureEncoder`, saved as JSON beside it,
computes those inputs from raw values exactly as the original layers did --
vocabulary ids, mask token -> 0, out-of-vocabulary values to the OOV index (or
hashed over several OOV indices), hashing with the same FarmHash/SipHash
buckets and salt.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np

from tfafm.errors import MissingFileError, UserError

_VERSION = 1
KINDS = ("value", "string_lookup", "integer_lookup", "hashing")


@dataclasses.dataclass
class FeatureEncoding:
    """How one input of the converted model is computed from the raw features.

    Attributes:
        name: the converted model's input (a feature name of its schema).
        source: the key path of the raw value in the original model's inputs,
            e.g. ``("user_id",)`` or ``("sparse_features", "0")``.
        column: the column of a two-dimensional raw input, or ``None`` when
            the raw input holds one value per row.
        kind: ``"value"`` (passed through: float32 values or int32 ids),
            ``"string_lookup"``, ``"integer_lookup"`` or ``"hashing"``.
        dtype: the model input's dtype, ``"int32"`` or ``"float32"``.
        vocabulary_size: ids lie in ``[0, vocabulary_size)`` (id features only).
        options: for lookups ``tokens`` (in id order, after the mask and OOV
            ids), ``mask_token``, ``num_oov_indices``; for hashing ``num_bins``,
            ``mask_value``, ``salt`` (``None`` or two integers).
        layer: the name of the original layer that did this mapping.
        raw_kind: the raw input's kind: ``"string"``, ``"int"`` or ``"float"``.
        embedding_dim: width of the embedding that reads these ids (for the schema).
    """

    name: str
    source: tuple[str, ...]
    column: int | None
    kind: str
    dtype: str
    vocabulary_size: int | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    layer: str | None = None
    raw_kind: str = "float"
    embedding_dim: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"Feature {self.name!r}: unknown encoding kind {self.kind!r}; expected one of {KINDS}.")
        self.source = tuple(self.source)
        self._ids: dict | None = None

    def encode(self, values: np.ndarray) -> np.ndarray:
        """The model input for raw ``values`` of shape ``(n,)``: an ``(n, 1)`` int32 or float32 array."""
        if self.kind == "value":
            encoded = values
        elif self.kind == "hashing":
            encoded = self._hash(values)
        else:
            encoded = self._look_up(values)
        return np.asarray(encoded).astype(self.dtype).reshape(-1, 1)

    def _key(self, value):
        if self.kind == "integer_lookup":
            return int(value)
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def _look_up(self, values: np.ndarray) -> np.ndarray:
        """Keras 2 ``IndexLookup`` semantics: mask -> 0, then vocabulary, then OOV index (hashed if several)."""
        mask = self.options["mask_token"]
        num_oov = int(self.options["num_oov_indices"])
        oov_start = 0 if mask is None else 1
        if self._ids is None:
            start = oov_start + num_oov
            self._ids = {self._key(t): start + i for i, t in enumerate(self.options["tokens"])}
        keys = [self._key(v) for v in values]
        ids = np.array([self._ids.get(k, -1) for k in keys], np.int64)
        if mask is not None:
            ids[np.array([k == self._key(mask) for k in keys], bool)] = 0
        oov = ids < 0
        if oov.any():
            if num_oov == 0:
                first = keys[int(np.argmax(oov))]
                raise UserError(
                    f"Feature {self.name!r}: value {first!r} is not in the vocabulary of layer {self.layer!r}, "
                    "which has no out-of-vocabulary index (num_oov_indices=0)."
                )
            if num_oov == 1:
                ids[oov] = oov_start
            else:
                ids[oov] = oov_start + self._oov_buckets([keys[i] for i in np.flatnonzero(oov)], num_oov)
        return ids

    def _oov_buckets(self, keys: list, num_oov: int) -> np.ndarray:
        if self.kind == "integer_lookup":
            return np.mod(np.array(keys, np.int64), num_oov)
        import tensorflow as tf

        return tf.strings.to_hash_bucket_fast(tf.constant(keys, tf.string), num_oov).numpy()

    def _hash(self, values: np.ndarray) -> np.ndarray:
        """Keras 2 ``Hashing`` semantics: FarmHash64 (SipHash with a salt) of the string form, mask -> 0."""
        import tensorflow as tf

        bins = int(self.options["num_bins"])
        mask_value = self.options["mask_value"]
        if values.dtype.kind in "iu":
            strings = tf.strings.as_string(tf.constant(values.astype(np.int64)))
        else:
            strings = tf.constant([self._key(v) for v in values], tf.string)
        masked = None
        if mask_value is not None and bins > 1:
            bins -= 1
            masked = np.array([self._key(v) == self._key(mask_value) for v in values], bool)
        salt = self.options.get("salt")
        if salt is not None:
            ids = tf.strings.to_hash_bucket_strong(strings, bins, key=list(salt)).numpy()
        else:
            ids = tf.strings.to_hash_bucket_fast(strings, bins).numpy()
        if masked is not None:
            ids = np.where(masked, 0, ids + 1)
        return ids

    def to_dict(self) -> dict:
        return {
            "name": self.name, "source": list(self.source), "column": self.column, "kind": self.kind,
            "dtype": self.dtype, "vocabulary_size": self.vocabulary_size, "options": self.options,
            "layer": self.layer, "raw_kind": self.raw_kind, "embedding_dim": self.embedding_dim,
        }


def _sample_column(f: FeatureEncoding, rows: int, rng: np.random.Generator) -> np.ndarray:
    if f.kind in ("string_lookup", "integer_lookup"):
        tokens = np.array(f.options["tokens"], dtype=object if f.kind == "string_lookup" else np.int64)
        values = tokens[rng.integers(0, len(tokens), rows)]
        if f.options["num_oov_indices"] > 0:
            values[::7] = "tfafm-unseen-value" if f.kind == "string_lookup" else int(tokens.max(initial=0)) + 1
        if f.options["mask_token"] is not None:
            values[3::7] = f.options["mask_token"]
        return values
    if f.kind == "hashing":
        values = rng.integers(0, 4 * int(f.options["num_bins"]) + 4, rows)
        if f.raw_kind == "string":
            values = values.astype(str).astype(object)
        if f.options["mask_value"] is not None:
            values[::7] = f.options["mask_value"]
        return values
    if f.dtype == "int32":
        return rng.integers(0, f.vocabulary_size, rows)
    return rng.standard_normal(rows).astype(np.float32)


def _raw_column(raw: Mapping, encoding: FeatureEncoding) -> np.ndarray:
    value: Any = raw
    for depth, key in enumerate(encoding.source):
        if not isinstance(value, Mapping) or key not in value:
            where = "/".join(encoding.source[:depth + 1])
            raise UserError(f"Raw features have no {where!r} (needed for model input {encoding.name!r}).")
        value = value[key]
    array = np.asarray(value)
    if encoding.column is None:
        if array.ndim > 1 and array.shape[1:] != (1,) * (array.ndim - 1):
            raise UserError(f"Raw feature {'/'.join(encoding.source)!r} has shape {array.shape}; expected (rows,).")
        return array.reshape(-1)
    if array.ndim != 2 or array.shape[1] <= encoding.column:
        raise UserError(
            f"Raw feature {'/'.join(encoding.source)!r} has shape {array.shape}; expected (rows, "
            f"> {encoding.column})."
        )
    return array[:, encoding.column]


class RawFeatureEncoder:
    """Maps raw feature values to the inputs of a converted model (see the module docstring).

    ``encoder.encode(raw)`` takes what the original Keras 2 model took (a dict
    of arrays, nested for TFRS ``Ranking`` models) and returns a dict of
    ``(rows, 1)`` arrays keyed by the converted model's input names.
    """

    def __init__(self, features: Sequence[FeatureEncoding]):
        self.features = list(features)
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UserError(f"Raw feature encoder has duplicate model inputs {duplicates}.")

    def encode(self, raw: Mapping) -> dict[str, np.ndarray]:
        """The converted model's inputs for the raw features ``raw`` (all with the same number of rows)."""
        encoded = {f.name: f.encode(_raw_column(raw, f)) for f in self.features}
        rows = {name: len(array) for name, array in encoded.items()}
        if len(set(rows.values())) > 1:
            raise UserError(f"Raw features have different numbers of rows: {rows}.")
        return encoded

    def sample(self, rows: int, seed: int = 0) -> dict:
        """``rows`` random raw rows shaped like the original model's inputs (for parity checks).

        Lookup features draw vocabulary tokens, with a value outside the
        vocabulary in every 7th row and the mask token (if any) in every 7th
        row from the 4th, so the OOV and mask paths are exercised; hashed
        features draw from a range wider than their bins, the mask value (if
        any) in every 7th row; ids draw from their vocabulary; values are
        standard normal.
        """
        rng = np.random.default_rng(seed)
        columns: dict[tuple[str, ...], dict[int | None, np.ndarray]] = {}
        for f in self.features:
            columns.setdefault(f.source, {})[f.column] = _sample_column(f, rows, rng)
        raw: dict = {}
        for source, by_column in columns.items():
            target = raw
            for key in source[:-1]:
                target = target.setdefault(key, {})
            target[source[-1]] = (by_column[None] if None in by_column
                                  else np.stack([by_column[c] for c in sorted(by_column)], axis=1))
        return raw

    def to_dict(self) -> dict:
        return {"version": _VERSION, "features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, config: Mapping, source: str = "raw feature encoder") -> "RawFeatureEncoder":
        if config.get("version") != _VERSION:
            raise UserError(f"{source}: unsupported version {config.get('version')!r} (expected {_VERSION}).")
        try:
            return cls([FeatureEncoding(**entry) for entry in config["features"]])
        except (KeyError, TypeError) as error:
            raise UserError(f"{source}: malformed feature entry ({error}).") from None

    def save(self, path: str) -> None:
        """Writes the encoder as JSON, atomically."""
        from tfafm.io_utils import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str) -> "RawFeatureEncoder":
        """Reads an encoder written by :meth:`save`."""
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f), source=path)
        except (FileNotFoundError, IsADirectoryError):
            raise MissingFileError(f"No raw feature encoder at {path}.") from None
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON ({error}).") from None
