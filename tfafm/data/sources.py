"""``--data`` specs -> batched, streaming ``tf.data`` datasets.

Specs:
    * ``synthetic`` or ``synthetic:ROWS`` -- the built-in :class:`SyntheticCriteo`.
    * ``criteo:PATH`` -- Criteo Kaggle DAC text (TSV, or CSV with a header).
    * ``avazu:PATH`` -- Avazu CTR CSV.

``PATH`` is a file, a directory (all its data files, sorted) or a
comma-separated list of files; files may be gzipped. Real data is split by line:
every ``round(1 / validation_fraction)``-th data line (starting with the first)
goes to validation, the rest to training.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from tfafm.data.formats import FORMATS, RawRow
from tfafm.data.preprocessing import Preprocessor
from tfafm.data.readers import RowReader, resolve_paths
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.schema import Schema

if TYPE_CHECKING:
    import numpy as np
    import tensorflow as tf

PREFIXES = ("synthetic", *FORMATS)


@dataclasses.dataclass
class DataBundle:
    """Datasets of ``(features, labels)`` batches and how they were made.

    Attributes:
        spec: the ``--data`` spec it was loaded from.
        name: the source kind (``"synthetic"``, ``"criteo"`` or ``"avazu"``).
        description: one line for logs, with row counts.
        schema: the features the datasets yield.
        train: training batches; ``None`` when loaded for evaluation with a
            given preprocessor.
        validation: validation (or, for evaluation, all) batches.
        preprocessor: the fitted or given preprocessor; ``None`` for synthetic data.
        train_rows: rows in ``train`` (0 when it is ``None``).
        validation_rows: rows in ``validation``.
        bad_lines: malformed lines skipped (``skip_bad_lines=True``).
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


def load_data(
    spec: str,
    *,
    batch_size: int = 1024,
    embedding_dim: int = 16,
    validation_fraction: float = 0.1,
    min_count: int = 1,
    skip_bad_lines: bool = False,
    preprocessor: Optional[Preprocessor] = None,
    evaluation_only: Optional[bool] = None,
    synthetic_rows: int = 200_000,
    synthetic_max_vocabulary: int = 100_000,
    seed: int = 0,
) -> DataBundle:
    """Loads the data named by ``spec`` (see the module docstring).

    For real data, one Python pass reads every row before any dataset is built:
    it fits the preprocessor on the training rows (unless ``preprocessor`` is
    given) and validates the rest, so malformed files raise
    :class:`~tfafm.data.errors.DataFormatError` here rather than inside
    ``tf.data``. With ``preprocessor`` given, nothing is fitted and, unless
    ``evaluation_only=False`` (keep the train/validation split, as when
    compressing a trained run), every row is evaluation data (``train`` is ``None``).
    """
    prefix, _, rest = spec.partition(":")
    if prefix not in PREFIXES:
        raise ValueError(
            f"Unknown data source {prefix!r} in {spec!r}; expected one of "
            f"{', '.join(p + ':PATH' if p in FORMATS else p + '[:ROWS]' for p in PREFIXES)}."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not 0.0 < validation_fraction <= 0.5:
        raise ValueError(f"validation_fraction must be in (0, 0.5], got {validation_fraction}.")
    if prefix == "synthetic":
        if preprocessor is not None:
            raise ValueError("Synthetic data takes no preprocessor.")
        return _synthetic(spec, rest, batch_size, embedding_dim, validation_fraction,
                          synthetic_rows, synthetic_max_vocabulary, seed)
    if not rest:
        raise ValueError(f"Data spec {spec!r} needs a path: {prefix}:PATH.")
    reader = RowReader(FORMATS[prefix], resolve_paths(rest), skip_bad_lines=skip_bad_lines)
    every = round(1.0 / validation_fraction)
    evaluation = preprocessor is not None if evaluation_only is None else evaluation_only
    if evaluation and preprocessor is None:
        raise ValueError("evaluation_only=True needs a fitted preprocessor.")
    if preprocessor is not None and preprocessor.format.name != prefix:
        raise ValueError(
            f"The preprocessor encodes {preprocessor.format.name} data, not {prefix} data ({spec!r})."
        )

    def in_validation(index: int) -> bool:
        return evaluation or index % every == 0

    counts = {True: 0, False: 0}

    def counted_training_rows() -> Iterator[RawRow]:
        for index, row in reader.indexed():
            counts[in_validation(index)] += 1
            if not in_validation(index):
                yield row

    if preprocessor is not None:
        for _ in counted_training_rows():
            pass
    else:
        preprocessor = Preprocessor.fit(reader.format, counted_training_rows(), min_count)
    if not evaluation and not counts[False]:
        raise ValueError(f"{spec}: no training rows (only {counts[True]} rows in all).")
    bad_lines = reader.bad_lines

    def stream(validation: bool) -> Callable[[], Iterator[RawRow]]:
        return lambda: (row for index, row in reader.indexed() if in_validation(index) == validation)

    schema = preprocessor.schema(embedding_dim)
    files = len(reader.paths)
    skipped = f", {bad_lines:,} bad lines skipped" if bad_lines else ""
    return DataBundle(
        spec=spec,
        name=prefix,
        description=(
            f"{prefix}: {files} file{'s' if files > 1 else ''}, {counts[False]:,} training / "
            f"{counts[True]:,} {'evaluation' if evaluation else 'validation'} rows{skipped}"
        ),
        schema=schema,
        train=None if evaluation else _dataset(stream(False), preprocessor, schema, batch_size, counts[False]),
        validation=_dataset(stream(True), preprocessor, schema, batch_size, counts[True]),
        preprocessor=preprocessor,
        train_rows=counts[False],
        validation_rows=counts[True],
        bad_lines=bad_lines,
    )


def _synthetic(
    spec: str, rows_text: str, batch_size: int, embedding_dim: int,
    validation_fraction: float, default_rows: int, max_vocabulary: int, seed: int,
) -> DataBundle:
    if rows_text and not (rows_text.isdigit() and int(rows_text) > 0):
        raise ValueError(f"In {spec!r}, ROWS of synthetic:ROWS must be a positive integer.")
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


def _dataset(
    rows: Callable[[], Iterator[RawRow]], preprocessor: Preprocessor, schema: Schema,
    batch_size: int, num_rows: int,
) -> "tf.data.Dataset":
    """A dataset that re-reads ``rows()`` on every iteration and encodes it in batches.

    Its cardinality (``ceil(num_rows / batch_size)``) is declared, so Keras
    progress bars know the number of steps.
    """
    import tensorflow as tf

    def batches() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        iterator = rows()
        while chunk := list(itertools.islice(iterator, batch_size)):
            yield preprocessor.encode(chunk)

    signature = (
        {f.name: tf.TensorSpec((None, 1), tf.float32) for f in schema.dense}
        | {f.name: tf.TensorSpec((None, 1), tf.int32) for f in schema.sparse},
        tf.TensorSpec((None, 1), tf.float32),
    )
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    steps = -(-num_rows // batch_size)
    return dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)
