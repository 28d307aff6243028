"""Building a data cache: parse the files once, fit vocabularies, encode, write shards.

Pass 1 parses every file in blocks (:mod:`tfafm.data.columnar`), counts the
categorical values of the training rows (:class:`ValueCounts`) and spills each
parsed block to a temporary Arrow file; the preprocessor is fitted from the
counts (or given); pass 2 encodes the spilled blocks and writes the shards
(:mod:`tfafm.data.cache`). Memory: one block plus the distinct values.

The split is the one tfafm always used: data line ``i`` (counted over all files
in order, blank lines and the header excluded, bad lines included) goes to
validation when ``i % round(1 / validation_fraction) == 0``.

Vocabulary fitting can also run as independent jobs, one per file
(:func:`count_file`, any batch engine can run it), whose counts merge exactly
(:meth:`ValueCounts.merge`) into :meth:`Preprocessor.from_counts`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa

from tfafm.data.cache import PREPROCESSOR_FILE, Cache, ShardWriter, pack, source_fingerprint, stale_reason
from tfafm.data.columnar import Columns, parse_block
from tfafm.data.formats import DataFormat
from tfafm.data.manifest import CACHE_KIND, SPLITS, write_manifest
from tfafm.data.parquet import open_parquet, parquet_columns
from tfafm.data.preprocessing import Preprocessor
from tfafm.data.readers import no_rows_error
from tfafm.data.specs import FILE_PREFIXES, FileSource, file_source, is_parquet
from tfafm.data.textfiles import BLOCK_BYTES, is_blank, text_blocks
from tfafm.data.vocabulary import ValueCounts
from tfafm.errors import UserError
from tfafm.io_utils import atomic_path
from tfafm.progress import progress_bar

ROWS_PER_SHARD = 1_000_000
SHARD_MULTIPLE = 48


@dataclasses.dataclass(frozen=True)
class PassTiming:
    """Rows handled by one pass over the data and its wall time."""

    name: str
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / max(self.seconds, 1e-9)

    def __str__(self) -> str:
        return f"{self.name}: {self.rows:,} rows in {self.seconds:.1f} s ({self.rows_per_second:,.0f} rows/s)"


def validation_every(validation_fraction: float) -> int:
    if not 0.0 < validation_fraction <= 0.5:
        raise UserError(f"validation_fraction must be in (0, 0.5], got {validation_fraction}.")
    return round(1.0 / validation_fraction)


def default_shards(rows: int) -> int:
    """One shard up to 1M rows, else a multiple of 48 (splits evenly over 2, 3, 4, 6, 8, 12, 16, 24
    or 48 workers) with about 1M rows or fewer per shard."""
    if rows <= ROWS_PER_SHARD:
        return 1
    return SHARD_MULTIPLE * -(-rows // (SHARD_MULTIPLE * ROWS_PER_SHARD))


def read_columns(source: FileSource, skip_bad_lines: bool = False,
                 block_bytes: int = BLOCK_BYTES) -> Iterator[Columns]:
    """Every file of ``source`` in parsed blocks, in order; a file without any good row
    raises :class:`~tfafm.data.errors.DataFormatError`. Reading and parsing run one
    block ahead in a background thread (pyarrow parses without holding the GIL)."""
    return _one_ahead(_read_columns(source, skip_bad_lines, block_bytes))


def _one_ahead(items: Iterator) -> Iterator:
    """``items``, each produced in a background thread while the caller handles the previous one."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tfafm-read") as pool:
        pending = pool.submit(next, items, None)
        while (item := pending.result()) is not None:
            pending = pool.submit(next, items, None)
            yield item


def _read_columns(source: FileSource, skip_bad_lines: bool, block_bytes: int) -> Iterator[Columns]:
    for path in source.paths:
        good = bad = 0
        if is_parquet(path):
            parts = parquet_columns(path, source.format, skip_bad_lines)
        else:
            parts = (parse_block(block, source.format, skip_bad_lines)
                     for block in text_blocks(path, source.format, block_bytes))
        for columns in parts:
            good += columns.rows
            bad += columns.bad_lines
            yield columns
        if not good:
            raise no_rows_error(path, bad)


def count_data_lines(path: str, data_format: DataFormat) -> int:
    """Data lines (Parquet: rows) of one file, bad ones included, without parsing them: sum
    it over the files before one to get that file's ``first_index`` for :func:`count_file`."""
    if is_parquet(path):
        return open_parquet(path).metadata.num_rows
    return sum(1 for block in text_blocks(path, data_format) for _, line in block.lines() if not is_blank(line))


def count_file(path: str, data_format: DataFormat, first_index: int = 0, validation_fraction: float = 0.1,
               skip_bad_lines: bool = False) -> ValueCounts:
    """The map side of vocabulary fitting: counts of the training rows of one file.

    ``first_index`` is the number of data lines in the files before this one
    (sum :func:`count_data_lines` over them), so the split matches a one-pass fit.
    """
    every = validation_every(validation_fraction)
    counts = ValueCounts(data_format.sparse_names)
    index = first_index
    for columns in read_columns(FileSource(path, data_format, (path,)), skip_bad_lines):
        counts.add(columns, (index + columns.positions) % every != 0)
        index += columns.data_lines
    return counts


def _spill(directory: str, number: int, columns: Columns, validation: np.ndarray) -> str:
    path = os.path.join(directory, f"{number:06d}.arrow")
    arrays = [pa.array(columns.labels), pa.array(validation)] + \
        [pa.array(columns.dense[:, j]) for j in range(columns.dense.shape[1])] + columns.sparse
    names = ["label", "validation"] + [f"d{j}" for j in range(columns.dense.shape[1])] + \
        [f"s{j}" for j in range(len(columns.sparse))]
    batch = pa.record_batch(arrays, names=names)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return path


def _unspill(path: str, data_format: DataFormat) -> tuple[Columns, np.ndarray]:
    with pa.memory_map(path) as source:
        table = pa.ipc.open_file(source).read_all().combine_chunks()
    dense = np.zeros((table.num_rows, len(data_format.dense)))
    for j in range(len(data_format.dense)):
        dense[:, j] = table[f"d{j}"].to_numpy()
    sparse = [table[f"s{j}"].chunk(0) for j in range(len(data_format.sparse_names))]
    columns = Columns(table["label"].to_numpy(), dense, sparse, np.arange(table.num_rows), table.num_rows)
    return columns, table["validation"].to_numpy(zero_copy_only=False)


def _parse_and_count(source: FileSource, spill_dir: str, every: int, counts: Optional[ValueCounts],
                     skip_bad_lines: bool, block_bytes: int, progress: bool) -> tuple[list[str], dict[bool, int], int]:
    """Pass 1: parses every block, counts its training rows' values (if ``counts``) and spills it.

    Returns the spill files, the rows per split (keyed by "is validation") and the data lines read.
    """
    index, spilled, rows = 0, [], {True: 0, False: 0}
    with progress_bar(f"prepare: parse + count ({source.format.name})", None, enabled=progress,
                      unit="rows") as advance:
        for columns in read_columns(source, skip_bad_lines, block_bytes):
            validation = (index + columns.positions) % every == 0
            if counts is not None:
                counts.add(columns, ~validation)
            if columns.rows:
                spilled.append(_spill(spill_dir, len(spilled), columns, validation))
            validation_rows = int(np.count_nonzero(validation))
            rows[True] += validation_rows
            rows[False] += columns.rows - validation_rows
            index += columns.data_lines
            advance(columns.rows)
    return spilled, rows, index


def prepare(
    source: FileSource,
    out: str,
    *,
    validation_fraction: float = 0.1,
    min_count: int = 1,
    max_vocabulary: Optional[int] = None,
    preprocessor: Optional[Preprocessor] = None,
    skip_bad_lines: bool = False,
    shards: Optional[int] = None,
    block_bytes: int = BLOCK_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Cache, list[PassTiming]]:
    """Builds the cache of ``source`` at ``out`` (see the module docstring).

    ``out`` is written atomically, as a tfafm ``data-cache`` directory: an
    existing directory there is replaced only if it is empty or a cache (or
    with ``overwrite``). With ``preprocessor`` given nothing is fitted. Returns
    the opened cache and the timing of each pass.
    """
    every = validation_every(validation_fraction)
    if shards is not None and shards < 1:
        raise UserError(f"shards must be >= 1, got {shards}.")
    data_format = source.format
    fingerprint = source_fingerprint(source.paths)
    counts = ValueCounts(data_format.sparse_names) if preprocessor is None else None
    timings = []
    with atomic_path(out, CACHE_KIND, overwrite=overwrite) as tmp:
        spill_dir = os.path.join(tmp, "spill")
        os.makedirs(spill_dir)
        start = time.perf_counter()
        spilled, rows, index = _parse_and_count(source, spill_dir, every, counts, skip_bad_lines, block_bytes,
                                                progress)
        total = rows[True] + rows[False]
        timings.append(PassTiming("parse + count", total, time.perf_counter() - start))
        start = time.perf_counter()
        if preprocessor is None:
            preprocessor = Preprocessor.from_counts(data_format, counts, min_count, max_vocabulary)
        timings.append(PassTiming("fit vocabularies", total, time.perf_counter() - start))
        start = time.perf_counter()
        row_bytes = 4 * (1 + len(data_format.dense) + len(data_format.sparse_names))
        writers = {split: ShardWriter(tmp, split, rows[split == "validation"],
                                      shards or default_shards(rows[split == "validation"]), row_bytes)
                   for split in SPLITS}
        with progress_bar("prepare: encode + write", total, enabled=progress, unit="rows") as advance:
            for path in spilled:
                columns, validation = _unspill(path, data_format)
                words = pack(preprocessor.encode_columns(columns))
                writers["train"].write(words[~validation])
                writers["validation"].write(words[validation])
                os.remove(path)
                advance(columns.rows)
        os.rmdir(spill_dir)
        preprocessor.save(os.path.join(tmp, PREPROCESSOR_FILE))
        timings.append(PassTiming("encode + write", total, time.perf_counter() - start))
        write_manifest(tmp, {
            "spec": source.spec,
            "format": data_format.to_dict(),
            "source": {"files": fingerprint},
            "split": {"validation_every": every},
            "preprocessing": {"fitted": counts is not None, "min_count": preprocessor.min_count,
                              "max_vocabulary": preprocessor.max_vocabulary, "digest": preprocessor.digest},
            "skip_bad_lines": skip_bad_lines,
            "data_lines": index,
            "bad_lines": index - total,
            "layout": {"dense": list(data_format.dense), "sparse": list(data_format.sparse_names)},
            "splits": {split: {"rows": writer.rows, "shards": writer.finish()} for split, writer in writers.items()},
            "timings": [dataclasses.asdict(t) for t in timings],
        })
    return Cache.open(out), timings


def prepare_spec(spec: str, out: str, *, preprocessor: Optional[Preprocessor] = None,
                 **options) -> tuple[Cache, list[PassTiming]]:
    """:func:`prepare` for a ``--data`` spec (``criteo:``, ``avazu:`` or ``parquet:``)."""
    prefix, _, rest = spec.partition(":")
    if prefix not in FILE_PREFIXES:
        raise UserError(f"tfafm prepare reads {', '.join(p + ':PATH' for p in FILE_PREFIXES)}, not {spec!r}.")
    source = file_source(prefix, rest, spec)
    if preprocessor is not None and preprocessor.format != source.format:
        raise UserError(f"The preprocessor encodes {preprocessor.format.name} data, not {prefix} data.")
    return prepare(source, out, preprocessor=preprocessor, **options)


def _open_if_cache(path: str) -> Optional[Cache]:
    """The cache at ``path``, or None if it is not a readable tfafm cache."""
    try:
        return Cache.open(path)
    except (UserError, OSError, ValueError, KeyError):
        return None


@dataclasses.dataclass(frozen=True)
class CacheRequest:
    """What a cache must have been built from to serve a ``criteo:``/``avazu:``/``parquet:`` spec."""

    source: FileSource
    validation_fraction: float = 0.1
    min_count: int = 1
    max_vocabulary: Optional[int] = None
    preprocessor: Optional[Preprocessor] = None
    skip_bad_lines: bool = False

    def key(self) -> str:
        """A directory name unique to the request."""
        wanted = {"format": self.source.format.to_dict(), "files": [os.path.abspath(p) for p in self.source.paths],
                  "every": validation_every(self.validation_fraction), **self._preprocessing()}
        digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.source.format.name}-{digest}"

    def _preprocessing(self) -> dict[str, Any]:
        if self.preprocessor is not None:
            return {"digest": self.preprocessor.digest}
        return {"min_count": self.min_count, "max_vocabulary": self.max_vocabulary}

    def mismatch(self, cache: Cache) -> Optional[str]:
        """Why ``cache`` cannot serve this request (None when it can)."""
        manifest = cache.manifest
        files = [entry["path"] for entry in manifest["source"]["files"]]
        if files != [os.path.abspath(p) for p in self.source.paths] or \
                manifest["format"] != self.source.format.to_dict():
            return "it was built from other files"
        if manifest["split"]["validation_every"] != validation_every(self.validation_fraction):
            return "its validation split differs"
        preprocessing = manifest["preprocessing"]
        if self.preprocessor is not None:
            if preprocessing["digest"] != self.preprocessor.digest:
                return "it was encoded with another preprocessor"
        elif not preprocessing["fitted"] or (preprocessing["min_count"], preprocessing["max_vocabulary"]) != \
                (self.min_count, self.max_vocabulary):
            return "its vocabularies were fitted with other settings"
        if manifest["bad_lines"] and not self.skip_bad_lines:
            return "it skipped bad lines"
        return stale_reason(manifest)


def ensure_cache(request: CacheRequest, root: str, progress: bool = True) -> Cache:
    """A valid cache for ``request`` under ``root``: reused when one matches, else built.

    Any cache under ``root`` that serves the request is reused (so compressing
    or evaluating a run reuses its training data's cache); a cache of the same
    request that went stale is rebuilt in place.
    """
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            cache = _open_if_cache(os.path.join(root, name))
            if cache is not None and request.mismatch(cache) is None:
                return cache
    out = os.path.join(root, request.key())
    cache, _ = prepare(request.source, out, validation_fraction=request.validation_fraction,
                       min_count=request.min_count, max_vocabulary=request.max_vocabulary,
                       preprocessor=request.preprocessor, skip_bad_lines=request.skip_bad_lines,
                       progress=progress)
    return cache


def rebuild(cache: Cache, progress: bool = True) -> Cache:
    """Builds ``cache`` again from its source files, with the same settings, in place."""
    manifest = cache.manifest
    prefix, _, rest = manifest["spec"].partition(":")
    preprocessing = manifest["preprocessing"]
    rebuilt, _ = prepare(
        file_source(prefix, rest, manifest["spec"]), cache.path,
        validation_fraction=1.0 / manifest["split"]["validation_every"],
        min_count=preprocessing["min_count"], max_vocabulary=preprocessing["max_vocabulary"],
        preprocessor=None if preprocessing["fitted"] else cache.preprocessor,
        skip_bad_lines=manifest["skip_bad_lines"], shards=len(cache.shards("train")), progress=progress)
    return rebuilt
