"""Columnar parsing of click logs with pyarrow: text blocks -> :class:`Columns` (Parquet: :mod:`tfafm.data.parquet`).

A text block is parsed by pyarrow's multithreaded CSV reader (quoting off,
categorical columns dictionary-encoded) and validated with numpy. If pyarrow
rejects the block or a value breaks the format's rules, the block is split in
halves and each half retried, down to blocks of about :data:`EXACT_BYTES`,
which the exact line-by-line parser (:func:`tfafm.data.readers.exact_rows`)
reads: it raises the same ``file:line: column X: ...`` error as before, or
skips and counts the bad lines. Good blocks never go through Python per row.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from tfafm.data.errors import DataFormatError
from tfafm.data.formats import DataFormat, RawRow, _hour_fields
from tfafm.data.readers import exact_rows
from tfafm.data.textfiles import TextBlock

EXACT_BYTES = 256 << 10
_CSV_BLOCK_BYTES = 4 << 20
_CATEGORY = pa.dictionary(pa.int32(), pa.string())
_HOURS = pa.array([str(h) for h in range(24)])
_WEEKDAYS = pa.array([str(d) for d in range(7)])


@dataclasses.dataclass
class Columns:
    """Parsed, not yet encoded, rows in columns.

    Attributes:
        labels: float32 ``(n,)``, 0 or 1.
        dense: float64 ``(n, len(format.dense))``, ``nan`` where missing.
        sparse: per ``format.sparse_names``, a dictionary array of ``n`` strings
            (``""`` where missing).
        positions: int64 ``(n,)``, each row's data-line index counted from the
            start of this part of the file (bad lines included).
        data_lines: data lines this part covers, bad ones included.
    """

    labels: np.ndarray
    dense: np.ndarray
    sparse: list[pa.DictionaryArray]
    positions: np.ndarray
    data_lines: int

    @property
    def rows(self) -> int:
        return len(self.labels)

    @property
    def bad_lines(self) -> int:
        return self.data_lines - self.rows

    @classmethod
    def from_rows(cls, rows: Sequence[RawRow], data_format: DataFormat,
                  positions: np.ndarray | None = None, data_lines: int | None = None) -> "Columns":
        """Columns of parsed rows (the exact parser's output; Python per row)."""
        n = len(rows)
        return cls(
            labels=np.array([r.label for r in rows], dtype=np.float32),
            dense=np.array([r.dense for r in rows], dtype=np.float64).reshape(n, len(data_format.dense)),
            sparse=[pa.array([r.sparse[j] for r in rows], pa.string()).dictionary_encode()
                    for j in range(len(data_format.sparse_names))],
            positions=np.arange(n, dtype=np.int64) if positions is None else positions,
            data_lines=n if data_lines is None else data_lines,
        )

    @classmethod
    def concat(cls, parts: Sequence["Columns"]) -> "Columns":
        """The parts one after the other (positions shifted accordingly)."""
        if len(parts) == 1:
            return parts[0]
        offsets = np.cumsum([0] + [p.data_lines for p in parts[:-1]])
        names = [str(j) for j in range(len(parts[0].sparse))]
        table = pa.Table.from_batches(
            [pa.record_batch(p.sparse, names=names) for p in parts if p.rows]
            or [pa.record_batch(parts[0].sparse, names=names)]
        ).unify_dictionaries()
        return cls(
            labels=np.concatenate([p.labels for p in parts]),
            dense=np.concatenate([p.dense for p in parts]),
            sparse=[table[name].combine_chunks() for name in names],
            positions=np.concatenate([p.positions + o for p, o in zip(parts, offsets)]),
            data_lines=sum(p.data_lines for p in parts),
        )


class _Invalid(Exception):
    """A value breaks the format's rules; the exact parser will say which and where."""


def parse_block(block: TextBlock, data_format: DataFormat, skip_bad_lines: bool = False) -> Columns:
    """Parses one block of lines (see the module docstring)."""
    try:
        return _parse_fast(block, data_format)
    except (pa.ArrowInvalid, _Invalid):
        pass
    halves = block.split() if len(block.data) > EXACT_BYTES else None
    if halves is None:
        return _parse_exact(block, data_format, skip_bad_lines)
    return Columns.concat([parse_block(half, data_format, skip_bad_lines) for half in halves])


def _parse_exact(block: TextBlock, data_format: DataFormat, skip_bad_lines: bool) -> Columns:
    rows, positions, data_lines = [], [], 0
    for position, row in enumerate(exact_rows(block, data_format, skip_bad_lines)):
        data_lines = position + 1
        if row is not None:
            rows.append(row)
            positions.append(position)
    return Columns.from_rows(rows, data_format, np.array(positions, dtype=np.int64), data_lines)


def _parse_fast(block: TextBlock, data_format: DataFormat) -> Columns:
    layout = block.layout
    names = layout.columns
    label, dense = names[layout.label], [names[i] for i in layout.dense]
    time = names[layout.time] if layout.time is not None else None
    categorical = [names[i] for i in layout.categorical]
    types = {label: pa.float64(), **{c: pa.float64() for c in dense},
             **{c: _CATEGORY for c in categorical + ([time] if time else [])}}
    table = pacsv.read_csv(
        pa.py_buffer(block.data),
        read_options=pacsv.ReadOptions(column_names=list(names), block_size=_CSV_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(delimiter=block.delimiter, quote_char=False,
                                         double_quote=False, escape_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types=types, include_columns=list(types), null_values=[""],
            strings_can_be_null=False, quoted_strings_can_be_null=False),
    ).unify_dictionaries()
    labels = _checked_labels(table[label])
    values = _checked_dense([table[c] for c in dense], table.num_rows, data_format.integer_dense)
    sparse = [table[c].combine_chunks() for c in categorical]
    if time:
        hour, weekday, valid = hour_features(table[time].combine_chunks())
        if not valid.all():
            raise _Invalid
        sparse = [hour, weekday] + sparse
    n = table.num_rows
    return Columns(labels, values, sparse, np.arange(n, dtype=np.int64), n)


def _checked_labels(column) -> np.ndarray:
    labels = _float_values(column)
    if not np.all((labels == 0.0) | (labels == 1.0)):
        raise _Invalid
    return labels.astype(np.float32)


def _float_values(column) -> np.ndarray:
    """float64 values of a numeric (chunked) array, ``nan`` where null."""
    values = column.to_numpy()
    return values if values.dtype == np.float64 else values.astype(np.float64)


def _checked_dense(columns: list, n: int, integers: bool) -> np.ndarray:
    """``(n, len(columns))`` float64 values, ``nan`` where empty; raises :class:`_Invalid` for
    non-finite (or, with ``integers``, fractional) values."""
    out = np.empty((n, len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        values = _float_values(column)
        valid = np.isfinite(values)
        if integers:
            valid &= values == np.floor(values)
        if not valid.all():
            missing = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else False
            if not np.all(valid | missing):
                raise _Invalid
        out[:, j] = values
    return out


def hour_features(hours: pa.DictionaryArray) -> tuple[pa.DictionaryArray, pa.DictionaryArray, np.ndarray]:
    """``hour_of_day`` and ``weekday`` of ``YYMMDDHH`` values (computed once per distinct
    value), and which rows hold a valid hour."""
    fields = []
    for value in hours.dictionary.to_pylist():
        try:
            fields.append(tuple(int(f) for f in _hour_fields(value)) + (True,))
        except ValueError:
            fields.append((0, 0, False))
    table = np.array(fields, dtype=np.int32).reshape(-1, 3)
    indices = hours.indices.to_numpy(zero_copy_only=False)
    return (pa.DictionaryArray.from_arrays(pa.array(table[indices, 0]), _HOURS),
            pa.DictionaryArray.from_arrays(pa.array(table[indices, 1]), _WEEKDAYS),
            table[indices, 2].astype(bool))
