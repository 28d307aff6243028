"""The binary, sharded cache of encoded rows, and reading it with ``tf.data``.

A cache directory holds::

    manifest.json                         what was encoded, from which files, how (see below)
    preprocessor.json                     the preprocessor that encoded it
    train-00000-of-00048.tfrecord ...     training rows
    validation-00000-of-00001.tfrecord    validation rows

Each TFRecord record is a chunk of up to :data:`CHUNK_ROWS` rows, stored
row-major as little-endian 4-byte words: the float32 label, the float32
(transformed) dense values, then the int32 ids. ``tf.data`` reads the shards
with ``interleave``, decodes whole chunks with ``decode_raw``, re-batches them
to the batch size and prefetches; nothing runs in Python per row or per batch.

The manifest records the source files (absolute path, size, modification
time), the split and the preprocessing; :func:`stale_reason` compares them
with the files on disk, so a cache is rebuilt, never silently reused, when
its source or preprocessing changed. It also records each shard's size,
rows and a digest of its records (:mod:`tfafm.data.shards`): opening a cache
checks the manifest as a whole, the preprocessor against it and every
shard's size; reading a split first checks its shards' digests, and
TensorFlow checks every record's CRC as it reads it. A damaged, truncated or
swapped shard is thus a one-line error naming it, never rows of another data
set read in silence.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

import numpy as np

from tfafm.data.manifest import MANIFEST_FILE, REBUILD, SPLITS, read_manifest
from tfafm.data.preprocessing import Encoded, Preprocessor
from tfafm.data.shards import DamagedShard, mismatch, summarize
from tfafm.errors import MissingFileError, UserError
from tfafm.schema import Schema

if TYPE_CHECKING:
    import tensorflow as tf

PREPROCESSOR_FILE = "preprocessor.json"
CHUNK_ROWS = 4096


def source_fingerprint(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Absolute path, size and modification time (ns) of each file."""
    fingerprint = []
    for path in paths:
        stat = os.stat(path)
        fingerprint.append({"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return fingerprint


def pack(encoded: Encoded) -> np.ndarray:
    """Rows as ``(n, 1 + D + S)`` little-endian int32 words: label bits, dense bits, ids."""
    n = len(encoded.labels)
    words = np.empty((n, 1 + encoded.dense.shape[1] + encoded.ids.shape[1]), dtype="<i4")
    words[:, 0] = encoded.labels.astype("<f4").view("<i4")
    words[:, 1:1 + encoded.dense.shape[1]] = encoded.dense.astype("<f4").view("<i4")
    words[:, 1 + encoded.dense.shape[1]:] = encoded.ids
    return words


class ShardWriter:
    """Writes the packed rows of one split to ``shards`` files of (nearly) equal row counts.

    Rows must be given in order; ``rows`` is their total, known in advance,
    so shard ``k`` holds rows ``[k * rows // shards, (k + 1) * rows // shards)``.
    """

    def __init__(self, directory: str, split: str, rows: int, shards: int, row_bytes: int):
        self.directory, self.split, self.rows, self.row_bytes = directory, split, rows, row_bytes
        self.shards = max(1, min(shards, rows))
        self.files: list[dict[str, Any]] = []
        self._written = 0
        self._writer = None
        self._pending: list[np.ndarray] = []

    def _boundary(self, shard: int) -> int:
        return shard * self.rows // self.shards

    def write(self, words: np.ndarray) -> None:
        while len(words):
            if self._writer is None:
                self._open(len(self.files))
            end = self._boundary(len(self.files))
            head, words = words[: end - self._written], words[end - self._written :]
            self._append(head)
            if self._written == end:
                self._close()

    def _open(self, shard: int) -> None:
        import tensorflow as tf

        name = f"{self.split}-{shard:05d}-of-{self.shards:05d}.tfrecord"
        self.files.append({"file": name, "rows": self._boundary(shard + 1) - self._boundary(shard)})
        self._writer = tf.io.TFRecordWriter(os.path.join(self.directory, name))

    def _append(self, words: np.ndarray) -> None:
        self._pending.append(words)
        self._written += len(words)
        pending = sum(len(p) for p in self._pending)
        if pending >= CHUNK_ROWS:
            rows = np.concatenate(self._pending)
            full = pending // CHUNK_ROWS * CHUNK_ROWS
            for start in range(0, full, CHUNK_ROWS):
                self._writer.write(rows[start:start + CHUNK_ROWS].tobytes())
            self._pending = [rows[full:]] if full < pending else []

    def _close(self) -> None:
        if self._pending:
            self._writer.write(np.concatenate(self._pending).tobytes())
            self._pending = []
        self._writer.close()
        self._writer = None
        entry = self.files[-1]
        try:
            summary = summarize(os.path.join(self.directory, entry["file"]), self.row_bytes)
        except DamagedShard as error:
            raise RuntimeError(f"{entry['file']} as just written {error}") from None
        if summary.rows != entry["rows"]:
            raise RuntimeError(f"{entry['file']}: wrote {summary.rows} rows, expected {entry['rows']}.")
        entry.update(bytes=summary.bytes, digest=summary.digest)

    def finish(self) -> list[dict[str, Any]]:
        """Closes the last shard; returns ``[{"file", "rows", "bytes", "digest"}]``."""
        if self._written != self.rows:
            raise RuntimeError(f"{self.split}: wrote {self._written} rows, expected {self.rows}.")
        if not self.files:
            self._open(0)  # an empty split still gets its (empty) shard
        if self._writer is not None:
            self._close()
        return self.files


@dataclasses.dataclass
class Cache:
    """An opened cache directory (see the module docstring)."""

    path: str
    manifest: dict[str, Any]
    preprocessor: Preprocessor
    _verified: set[str] = dataclasses.field(default_factory=set, repr=False)

    @classmethod
    def open(cls, path: str) -> "Cache":
        """Opens a cache written by :func:`tfafm.data.prepare.prepare`.

        Checks the manifest as a whole, the preprocessor against it, and that
        every shard exists with its recorded size (see the module docstring).

        Raises:
            UserError: naming the file at fault and saying to rebuild the cache.
        """
        manifest_path = os.path.join(path, MANIFEST_FILE)
        if not os.path.isdir(path):
            raise MissingFileError(f"Cache directory not found: {path}")
        if not os.path.isfile(manifest_path):
            raise UserError(f"{path} is not a tfafm data cache (no {MANIFEST_FILE}); build one with tfafm prepare.")
        manifest = read_manifest(manifest_path)
        preprocessor_path = os.path.join(path, PREPROCESSOR_FILE)
        try:
            preprocessor = Preprocessor.load(preprocessor_path)
        except UserError as error:
            raise UserError(f"Cache {path}: {error} ({REBUILD})") from None
        cache = cls(os.path.abspath(path), manifest, preprocessor)
        cache._check_preprocessor(preprocessor_path)
        cache._check_sizes()
        return cache

    def _check_preprocessor(self, preprocessor_path: str) -> None:
        manifest, data_format = self.manifest, self.preprocessor.format
        if manifest["preprocessing"]["digest"] != self.preprocessor.digest:
            raise UserError(f"{preprocessor_path} is not the preprocessor this cache was encoded with "
                            f"(its digest differs from {MANIFEST_FILE}'s); {REBUILD}.")
        if manifest["format"] != data_format.to_dict() or manifest["layout"] != {
                "dense": list(data_format.dense), "sparse": list(data_format.sparse_names)}:
            raise UserError(f"Cache {self.path}: {MANIFEST_FILE} describes other columns than "
                            f"{PREPROCESSOR_FILE}; {REBUILD}.")

    def _check_sizes(self) -> None:
        for split in SPLITS:
            for shard, file in zip(self.shards(split), self.files(split)):
                if not os.path.isfile(file):
                    what = "is missing" if not os.path.lexists(file) else "is not a regular file"
                    raise UserError(f"Cache {self.path} is damaged: {file} {what}; {REBUILD}.")
                size = os.path.getsize(file)
                if size != shard["bytes"]:
                    raise UserError(f"Cache {self.path} is damaged: {file} has {size} bytes, the manifest says "
                                    f"{shard['bytes']} (truncated or replaced?); {REBUILD}.")

    @property
    def row_bytes(self) -> int:
        """Bytes per stored row: label, dense values and ids, 4 bytes each."""
        return 4 * (1 + len(self.manifest["layout"]["dense"]) + len(self.manifest["layout"]["sparse"]))

    def verified_files(self, split: str) -> list[str]:
        """The shard files of ``split``, each checked once against its recorded digest and rows.

        Raises:
            UserError: naming the first shard that is not the one this cache wrote.
        """
        files = self.files(split)
        for shard, file in zip(self.shards(split), files):
            if file in self._verified:
                continue
            reason = mismatch(file, shard, self.row_bytes)
            if reason is not None:
                raise UserError(f"Cache {self.path} is damaged: {file} {reason}; {REBUILD}.")
            self._verified.add(file)
        return files

    def rows(self, split: str) -> int:
        return int(self.manifest["splits"][split]["rows"])

    def shards(self, split: str) -> list[dict[str, Any]]:
        return self.manifest["splits"][split]["shards"]

    def files(self, split: str) -> list[str]:
        return [os.path.join(self.path, shard["file"]) for shard in self.shards(split)]

    @property
    def bad_lines(self) -> int:
        return int(self.manifest.get("bad_lines", 0))

    def schema(self, embedding_dim: int = 16) -> Schema:
        return self.preprocessor.schema(embedding_dim)

    def dataset(self, splits: Iterable[str], batch_size: int, *, files: Optional[Sequence[str]] = None,
                rows: Optional[int] = None, drop_remainder: bool = False) -> "tf.data.Dataset":
        """Batches of ``(features, labels)`` of the given splits, in shard order.

        ``files`` (with their total ``rows``) restricts reading to some shards,
        as each worker of a cluster does (check them with :meth:`verified_files`
        first). The dataset's cardinality is declared.
        """
        if files is None:
            splits = list(splits)
            files = [f for split in splits for f in self.verified_files(split)]
            rows = sum(self.rows(split) for split in splits)
        return read_dataset(files, self.preprocessor.schema(), int(rows), batch_size, drop_remainder)


def read_dataset(files: Sequence[str], schema: Schema, rows: int, batch_size: int,
                 drop_remainder: bool = False, cycle_length: int = 4) -> "tf.data.Dataset":
    """``tf.data`` batches of ``(features, labels)`` from cache shards (see the module docstring)."""
    import tensorflow as tf

    dense = [f.name for f in schema.dense]
    sparse = [f.name for f in schema.sparse]
    width = 1 + len(dense) + len(sparse)
    autotune = tf.data.AUTOTUNE
    names = tf.data.Dataset.from_tensor_slices(list(files))
    if len(files) > 1:
        records = names.interleave(tf.data.TFRecordDataset, cycle_length=min(cycle_length, len(files)),
                                   num_parallel_calls=autotune, deterministic=True)
    else:
        records = names.flat_map(tf.data.TFRecordDataset)

    def decode(record):
        return tf.reshape(tf.io.decode_raw(record, tf.int32), (-1, width))

    def split_columns(words):
        floats = tf.split(tf.bitcast(words[:, : 1 + len(dense)], tf.float32), 1 + len(dense), axis=1)
        ids = tf.split(words[:, 1 + len(dense):], len(sparse), axis=1) if sparse else []
        return dict(zip(dense, floats[1:])) | dict(zip(sparse, ids)), floats[0]

    batches = records.map(decode, num_parallel_calls=autotune).rebatch(batch_size, drop_remainder=drop_remainder)
    steps = rows // batch_size if drop_remainder else -(-rows // batch_size)
    return (batches.map(split_columns, num_parallel_calls=autotune)
            .apply(tf.data.experimental.assert_cardinality(steps))
            .prefetch(autotune))


def stale_reason(manifest: dict[str, Any]) -> Optional[str]:
    """Why the cache no longer matches its source files (None when it does, or when they are gone)."""
    recorded = manifest["source"]["files"]
    if not all(os.path.isfile(entry["path"]) for entry in recorded):
        return None
    current = source_fingerprint([entry["path"] for entry in recorded])
    for old, new in zip(recorded, current):
        if old != new:
            return f"{new['path']} changed since the cache was built"
    return None
