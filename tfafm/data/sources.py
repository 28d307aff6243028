"""``--data`` specs -> batched ``tf.data`` datasets.

Specs:
    * ``synthetic`` or ``synthetic:ROWS`` -- the built-in :class:`SyntheticCriteo`.
    * ``criteo:PATH`` -- Criteo Kaggle DAC text (TSV, or CSV with a header) or Parquet.
    * ``avazu:PATH`` -- Avazu CTR CSV or Parquet.
    * ``parquet:PATH[?label=..&categorical=..&dense=..]`` -- any Parquet table
      (see :mod:`tfafm.data.specs`).
    * ``cache:DIR`` -- a cache built by ``tfafm prepare`` (:mod:`tfafm.data.prepare`).

``PATH`` is a file, a directory (all its data files, sorted) or a
comma-separated list of files; text files may be gzipped. Real data is split by
line: every ``round(1 / validation_fraction)``-th data line (starting with the
first) goes to validation, the rest to training.

File specs are read through a cache: the first use parses the files once,
fits the vocabularies on the training rows and writes the encoded rows to
binary shards; later uses of the same files with the same settings reuse it
(and rebuild it if a file changed). The cache lives under ``cache_dir``, else
``$TFAFM_CACHE_DIR``, else in a temporary directory removed with the datasets.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import weakref
from typing import TYPE_CHECKING, Optional

from tfafm.data.cache import Cache, stale_reason
from tfafm.data.preprocessing import Preprocessor
from tfafm.data.prepare import CacheRequest, ensure_cache, rebuild
from tfafm.data.specs import FILE_PREFIXES, file_source
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.config import MAX_COUNT
from tfafm.errors import UserError
from tfafm.schema import Schema
from tfafm_choices import CACHE_DATA as CACHE_PREFIX, SYNTHETIC_DATA

if TYPE_CHECKING:
    import tensorflow as tf

PREFIXES = (SYNTHETIC_DATA, *FILE_PREFIXES, CACHE_PREFIX)
CACHE_DIR_VARIABLE = "TFAFM_CACHE_DIR"


@dataclasses.dataclass
class DataBundle:
    """Datasets of ``(features, labels)`` batches and how they were made.

    Attributes:
        spec: the ``--data`` spec it was loaded from.
        name: the source kind (``"synthetic"``, ``"criteo"``, ``"avazu"`` or ``"parquet"``).
        description: one line for logs, with row counts.
        schema: the features the datasets yield.
        train: training batches; ``None`` when loaded for evaluation with a
            given preprocessor.
        validation: validation (or, for evaluation, all) batches.
        preprocessor: the fitted or given preprocessor; ``None`` for synthetic data.
        train_rows: rows in ``train`` (0 when it is ``None``).
        validation_rows: rows in ``validation``.
        bad_lines: malformed lines skipped (``skip_bad_lines=True``).
        cache: the cache real data is read from (``None`` for synthetic data).
    """

    spec: str
    name: str
    description: str
    schema: Schema
    train: Optional["tf.data.Dataset"]
    validation: "tf.data.Dataset"
    preprocessor: Optional[Preprocessor]
    train_rows: int
    validation_rows: int
    bad_lines: int = 0
    cache: Optional[Cache] = None


def load_data(
    spec: str,
    *,
    batch_size: int = 1024,
    embedding_dim: int = 16,
    validation_fraction: float = 0.1,
    min_count: int = 1,
    max_vocabulary: Optional[int] = None,
    skip_bad_lines: bool = False,
    preprocessor: Optional[Preprocessor] = None,
    evaluation_only: Optional[bool] = None,
    synthetic_rows: int = 200_000,
    synthetic_max_vocabulary: int = 100_000,
    seed: int = 0,
    cache_dir: Optional[str] = None,
    rebuild_stale: bool = True,
    progress: bool = False,
) -> DataBundle:
    """Loads the data named by ``spec`` (see the module docstring).

    For file specs the cache is built (or found) here, so malformed files raise
    :class:`~tfafm.data.errors.DataFormatError` here rather than inside
    ``tf.data``. The preprocessor is fitted on the training rows (keeping values
    seen ``min_count`` times, at most ``max_vocabulary`` per field) unless
    ``preprocessor`` is given; then, unless ``evaluation_only=False`` (keep the
    train/validation split, as when compressing a trained run), every row is
    evaluation data (``train`` is ``None``).

    A ``cache:DIR`` spec uses the split and preprocessing the cache was built
    with (``validation_fraction``, ``min_count`` and ``max_vocabulary`` do not
    apply); if its source files changed it is rebuilt in place, or, with
    ``rebuild_stale=False``, refused. ``progress`` draws a bar per pass.

    Example:

    >>> import tfafm
    >>> data = tfafm.load_data("synthetic:5000", batch_size=500)
    >>> data.train_rows, data.validation_rows, len(data.schema.sparse) > 0
    (5000, 500, True)
    >>> features, labels = next(iter(data.validation))
    >>> labels.shape
    TensorShape([500, 1])
    """
    prefix, _, rest = spec.partition(":")
    if prefix not in PREFIXES:
        raise UserError(
            f"Unknown data source {prefix!r} in {spec!r}; expected one of "
            f"{', '.join(_usage(p) for p in PREFIXES)}."
        )
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}.")
    if not 0.0 < validation_fraction <= 0.5:
        raise UserError(f"validation_fraction must be in (0, 0.5], got {validation_fraction}.")
    if prefix == "synthetic":
        if preprocessor is not None:
            raise UserError("Synthetic data takes no preprocessor.")
        return _synthetic(spec, rest, batch_size, embedding_dim, validation_fraction,
                          synthetic_rows, synthetic_max_vocabulary, seed)
    evaluation = preprocessor is not None if evaluation_only is None else evaluation_only
    if evaluation and preprocessor is None:
        raise UserError("evaluation_only=True needs a fitted preprocessor.")
    owner = None
    if prefix == CACHE_PREFIX:
        cache = open_cache(rest, rebuild_stale=rebuild_stale, progress=progress)
        if preprocessor is not None and preprocessor.digest != cache.preprocessor.digest:
            raise UserError(
                f"Cache {rest} was encoded with another preprocessor than the one given; prepare it with "
                "that one: tfafm prepare --data ... --preprocessor RUN/preprocessor.json --out DIR."
            )
    else:
        source = file_source(prefix, rest, spec)
        if preprocessor is not None and preprocessor.format != source.format:
            raise UserError(
                f"The preprocessor encodes {preprocessor.format.name} data, not {prefix} data ({spec!r})."
            )
        root = cache_dir or os.environ.get(CACHE_DIR_VARIABLE)
        if not root:
            root = owner = _TemporaryDirectory()
        request = CacheRequest(source, validation_fraction, min_count, max_vocabulary, preprocessor,
                               skip_bad_lines)
        cache = ensure_cache(request, str(root), progress=progress)
    return _bundle(spec, cache, batch_size, embedding_dim, evaluation, owner)


def _usage(prefix: str) -> str:
    return {"synthetic": "synthetic[:ROWS]", CACHE_PREFIX: "cache:DIR"}.get(prefix, f"{prefix}:PATH")


def open_cache(path: str, rebuild_stale: bool = True, progress: bool = False) -> Cache:
    """Opens ``path``; rebuilds it if its source files changed (or refuses, without ``rebuild_stale``)."""
    if not path:
        raise UserError("Data spec 'cache:' needs a directory: cache:DIR.")
    cache = Cache.open(path)
    reason = stale_reason(cache.manifest)
    if reason is None:
        return cache
    if not rebuild_stale:
        raise UserError(f"Cache {path} is out of date ({reason}); run tfafm prepare again.")
    return rebuild(cache, progress=progress)


class _TemporaryDirectory:
    """A private temporary directory, removed when the last dataset using it is gone."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="tfafm-cache-")
        weakref.finalize(self, shutil.rmtree, self.path, True)

    def __str__(self) -> str:
        return self.path


def _bundle(spec: str, cache: Cache, batch_size: int, embedding_dim: int, evaluation: bool,
            owner: Optional[_TemporaryDirectory]) -> DataBundle:
    train_rows, validation_rows = cache.rows("train"), cache.rows("validation")
    if not evaluation and not train_rows:
        raise UserError(f"{spec}: no training rows (only {validation_rows} rows in all).")
    if evaluation:
        train, validation = None, cache.dataset(("train", "validation"), batch_size)
        train_rows, validation_rows = 0, train_rows + validation_rows
    else:
        train, validation = cache.dataset(("train",), batch_size), cache.dataset(("validation",), batch_size)
    for dataset in (train, validation):
        if dataset is not None:
            dataset._tfafm_cache_owner = owner  # keeps a temporary cache alive while the dataset is
    files = len(cache.manifest["source"]["files"])
    skipped = f", {cache.bad_lines:,} bad lines skipped" if cache.bad_lines else ""
    name = cache.manifest["format"]["name"]
    return DataBundle(
        spec=spec,
        name=name,
        description=(
            f"{name}: {files} file{'s' if files > 1 else ''}, {train_rows:,} training / "
            f"{validation_rows:,} {'evaluation' if evaluation else 'validation'} rows{skipped}"
        ),
        schema=cache.schema(embedding_dim),
        train=train,
        validation=validation,
        preprocessor=cache.preprocessor,
        train_rows=train_rows,
        validation_rows=validation_rows,
        bad_lines=cache.bad_lines,
        cache=cache,
    )


def _synthetic(
    spec: str, rows_text: str, batch_size: int, embedding_dim: int,
    validation_fraction: float, default_rows: int, max_vocabulary: int, seed: int,
) -> DataBundle:
    if rows_text and not (rows_text.isdigit() and 0 < int(rows_text) <= MAX_COUNT):
        raise UserError(f"In {spec!r}, ROWS of synthetic:ROWS must be a positive integer of at most {MAX_COUNT}.")
    rows = int(rows_text) if rows_text else default_rows
    validation_rows = max(1, round(rows * validation_fraction))
    generator = SyntheticCriteo(seed=seed, max_vocabulary=max_vocabulary)
    return DataBundle(
        spec=spec,
        name="synthetic",
        description=(
            f"synthetic Criteo-like data (seed {seed}, vocabularies up to {max_vocabulary:,}): "
            f"{rows:,} training / {validation_rows:,} validation rows"
        ),
        schema=generator.schema(embedding_dim),
        train=generator.dataset(rows, batch_size, "train"),
        validation=generator.dataset(validation_rows, batch_size, "validation"),
        preprocessor=None,
        train_rows=rows,
        validation_rows=validation_rows,
    )
