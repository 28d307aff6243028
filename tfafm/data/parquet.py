"""Reading Parquet click tables in row batches -> :class:`~tfafm.data.columnar.Columns`.

Columns are matched by name: exactly, else case-insensitively when that
match is unique (two columns differing only in case need the exact name).
Every column's Arrow type is checked before the first row is read: the label
and dense columns must be numbers (integers, floats, decimals, booleans, or
numbers written as text), categorical columns any scalar type, read as text
(integers in decimal, binary values decoded as UTF-8 with undecodable bytes
replaced, as in text files); lists, structs, maps and unions are refused
naming the column and its type. A file pyarrow cannot read (truncated,
corrupt) is a one-line :class:`~tfafm.data.errors.DataFormatError` naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfafm.data.columnar import Columns, hour_features
from tfafm.data.errors import DataFormatError
from tfafm.data.formats import DataFormat

if TYPE_CHECKING:
    import pyarrow.parquet as pq

BATCH_ROWS = 256 * 1024
_READ_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError)


def open_parquet(path: str) -> "pq.ParquetFile":
    """``path`` opened as a Parquet file; a file pyarrow cannot open is a :class:`DataFormatError`."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except _READ_ERRORS as error:
        raise DataFormatError(f"not a readable Parquet file ({_one_line(error)})", path=path) from None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def resolve_columns(available: list[str], wanted: tuple[str, ...], path: str) -> list[str]:
    """The file's column for each wanted name: the same name, else the only one equal ignoring case."""
    resolved, missing = [], []
    for name in wanted:
        check_unique(available, [name], path)
        if name in available:
            resolved.append(name)
            continue
        matches = [column for column in available if column.lower() == name.lower()]
        if len(matches) > 1:
            raise DataFormatError(f"column {name} matches {', '.join(matches)}, which differ only in case; "
                                  "name the one to read exactly", path=path)
        if matches:
            resolved.append(matches[0])
        else:
            missing.append(name)
    if missing:
        raise DataFormatError(f"missing column(s) {', '.join(missing)}; the file has {', '.join(available)}",
                              path=path)
    return resolved


def check_unique(available: list[str], names: list[str], path: str) -> None:
    """Refuses a name of ``names`` that the file's columns (``available``) hold more than once."""
    for name in names:
        if available.count(name) > 1:
            raise DataFormatError(f"the file has {available.count(name)} columns named {name}", path=path)


def _is_number(kind: pa.DataType) -> bool:
    return (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
            or pa.types.is_boolean(kind) or pa.types.is_null(kind) or pa.types.is_string(kind)
            or pa.types.is_large_string(kind))


def _check_types(schema: pa.Schema, columns: list[str], data_format: DataFormat, path: str) -> None:
    """Refuses, naming the column and its type, a column whose type its role cannot read."""
    numeric = {data_format.label, *data_format.dense}
    for role_name, column in zip(data_format.columns, columns):
        kind = schema.field(column).type
        value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
        if role_name in numeric and not _is_number(value_kind):
            role = "the label" if role_name == data_format.label else "a dense column"
            raise DataFormatError(f"column {column} is {role} but holds {kind} values, not numbers", path=path)
        if pa.types.is_nested(value_kind):
            raise DataFormatError(f"column {column} holds {kind} values; tfafm reads one value per row and "
                                  "column (numbers or text), not lists, structs or maps", path=path)


def parquet_columns(path: str, data_format: DataFormat, skip_bad_lines: bool = False,
                    batch_rows: int = BATCH_ROWS) -> Iterator[Columns]:
    """The rows of a Parquet file in batches; a "line" is a row, counted from 1 (see the module docstring)."""
    parquet = open_parquet(path)
    schema = parquet.schema_arrow
    columns = resolve_columns(schema.names, data_format.columns, path)
    _check_types(schema, columns, data_format, path)
    start = 0
    batches = parquet.iter_batches(batch_size=batch_rows, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except _READ_ERRORS as error:
            raise DataFormatError(f"cannot read rows after row {start} ({_one_line(error)}); the file is damaged",
                                  path=path) from None
        if batch is None:
            return
        yield _parquet_batch(batch, data_format, path, start, skip_bad_lines)
        start += batch.num_rows


def _numbers(array: pa.Array, column: str, path: str) -> pa.Array:
    try:
        return pc.cast(array, pa.float64())
    except _READ_ERRORS as error:
        raise DataFormatError(f"column {column}: values that are not numbers ({_one_line(error)})",
                              path=path) from None


def _text(array: pa.Array, column: str, path: str) -> pa.DictionaryArray:
    """``array``'s values as dictionary-encoded text, ``""`` where null."""
    kind = array.type.value_type if pa.types.is_dictionary(array.type) else array.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        array = _decoded(array)
    try:
        text = pc.cast(array, pa.string())
    except _READ_ERRORS as error:
        raise DataFormatError(f"column {column} holds {array.type} values, which cannot be read as text "
                              f"({_one_line(error)})", path=path) from None
    return pc.fill_null(text, "").dictionary_encode()


def _decoded(array: pa.Array) -> pa.Array:
    """Binary values as UTF-8 text, undecodable bytes replaced (once per distinct value)."""
    encoded = array if pa.types.is_dictionary(array.type) else array.dictionary_encode()
    values = [None if v is None else v.decode("utf-8", errors="replace") for v in encoded.dictionary.to_pylist()]
    return pc.take(pa.array(values, pa.string()), encoded.indices)


def _parquet_batch(batch: pa.RecordBatch, data_format: DataFormat, path: str, start: int,
                   skip_bad_lines: bool) -> Columns:
    columns = dict(zip(data_format.columns, batch.columns))
    names = dict(zip(data_format.columns, batch.schema.names))
    n = batch.num_rows
    labels = _numbers(columns[data_format.label], names[data_format.label], path).to_numpy(zero_copy_only=False)
    dense = [_numbers(columns[c], names[c], path) for c in data_format.dense]
    good = (labels == 0.0) | (labels == 1.0)
    values = np.empty((n, len(dense)))
    for j, column in enumerate(dense):
        values[:, j] = column.to_numpy(zero_copy_only=False)
        finite = np.isfinite(values[:, j])
        if data_format.integer_dense:
            finite &= values[:, j] == np.floor(values[:, j])
        good &= finite | column.is_null().to_numpy(zero_copy_only=False)
    sparse = [_text(columns[c], names[c], path) for c in data_format.categorical]
    if data_format.time:
        hour, weekday, valid = hour_features(_text(columns[data_format.time], names[data_format.time], path))
        good &= valid
        sparse = [hour, weekday] + sparse
    if not good.all() and not skip_bad_lines:
        row = int(np.argmin(good))
        raise _row_error(data_format, [_as_text(columns[c][row]) for c in data_format.columns],
                         path, start + row + 1)
    kept = np.flatnonzero(good)
    mask = pa.array(good)
    return Columns(labels[kept].astype(np.float32), values[kept], [a.filter(mask) for a in sparse],
                   kept.astype(np.int64), n)


def _row_error(data_format: DataFormat, fields: list[str], path: str, line: int) -> DataFormatError:
    """The exact parser's error for a row the columnar checks rejected."""
    try:
        data_format.parse(fields, data_format.resolve(data_format.columns))
    except DataFormatError as error:
        return error.at(path, line)
    return DataFormatError("row breaks the format's rules", path=path, line=line)


def _as_text(value: pa.Scalar) -> str:
    if not value.is_valid:
        return ""
    value = value.as_py()
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
