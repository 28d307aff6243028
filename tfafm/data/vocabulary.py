"""Exact, streaming counts of categorical values, and the vocabularies chosen from them.

:class:`ValueCounts` keeps, per field, a table of distinct values and their
counts in Arrow buffers (about 20 bytes per distinct 8-character value plus
its count), so memory grows with the distinct values, never with the rows.
Each parsed block adds its own (value, count) table; tables are merged with
a hash aggregation whenever the unmerged ones outgrow the merged one, so the
merge work stays O(distinct values x log blocks).

Counting is a map/merge job: counts of disjoint parts of the data merge
exactly (:meth:`ValueCounts.merge`), and :meth:`ValueCounts.save` writes a
plain Parquet table ``(field, value, count)``, so any batch engine can run the
map side (see :func:`tfafm.data.prepare.count_file`).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfafm.data.columnar import Columns
from tfafm.data.errors import DataFormatError
from tfafm.errors import UserError
from tfafm.io_utils import atomic_path

_MIN_MERGE_ROWS = 1 << 20
_SCHEMA = pa.schema([("value", pa.string()), ("count", pa.int64())])


class ValueCounts:
    """Per-field counts of categorical values.

    Args:
        fields: the categorical fields, in the order of :attr:`Columns.sparse`.

    Attributes:
        rows: rows counted.
    """

    def __init__(self, fields: Sequence[str]):
        self.fields = tuple(fields)
        self.rows = 0
        self._merged: list[Optional[pa.Table]] = [None] * len(self.fields)
        self._pending: list[list[pa.Table]] = [[] for _ in self.fields]

    def add(self, columns: Columns, mask: Optional[np.ndarray] = None) -> None:
        """Counts the values of ``columns``' rows where ``mask`` is True (every row if None)."""
        if len(columns.sparse) != len(self.fields):
            raise ValueError(f"Expected {len(self.fields)} categorical columns, got {len(columns.sparse)}.")
        for field, array in enumerate(columns.sparse):
            indices = array.indices.to_numpy(zero_copy_only=False)
            if mask is not None:
                indices = indices[mask]
            counts = np.bincount(indices, minlength=len(array.dictionary))
            seen = np.flatnonzero(counts)
            self._add(field, pa.table([array.dictionary.take(pa.array(seen)).cast(pa.string()),
                                       pa.array(counts[seen], pa.int64())], schema=_SCHEMA))
        self.rows += columns.rows if mask is None else int(np.count_nonzero(mask))

    def merge(self, other: "ValueCounts") -> None:
        """Adds ``other``'s counts (of other rows of the same fields) to these."""
        if other.fields != self.fields:
            raise UserError(f"Cannot merge counts of fields {other.fields} into {self.fields}.")
        for field in range(len(self.fields)):
            self._add(field, other.table(self.fields[field]))
        self.rows += other.rows

    def _add(self, field: int, table: pa.Table) -> None:
        pending = self._pending[field]
        pending.append(table)
        merged = self._merged[field]
        if sum(t.num_rows for t in pending) > max(_MIN_MERGE_ROWS, merged.num_rows if merged else 0):
            self._compact(field)

    def _compact(self, field: int) -> None:
        tables = ([self._merged[field]] if self._merged[field] is not None else []) + self._pending[field]
        if not tables:
            self._merged[field] = _SCHEMA.empty_table()
        elif len(tables) == 1:
            self._merged[field] = tables[0]
        else:
            summed = pa.concat_tables(tables).group_by("value").aggregate([("count", "sum")])
            self._merged[field] = pa.table([summed["value"], summed["count_sum"]], schema=_SCHEMA)
        self._pending[field] = []

    def table(self, field: str) -> pa.Table:
        """The distinct values of ``field`` and their counts (columns ``value``, ``count``; any order)."""
        index = self.fields.index(field)
        self._compact(index)
        return self._merged[index]

    def as_dict(self, field: str) -> dict[str, int]:
        """``{value: count}`` of ``field`` (Python objects: for small data and tests)."""
        table = self.table(field)
        return dict(zip(table["value"].to_pylist(), table["count"].to_pylist()))

    def vocabulary(self, field: str, min_count: int = 1, max_size: Optional[int] = None) -> pa.Array:
        """The values of ``field`` seen at least ``min_count`` times, missing (``""``)
        excluded, most frequent first, ties in value order; at most ``max_size``."""
        table = self.table(field)
        table = table.filter(pc.and_(pc.greater_equal(table["count"], min_count),
                                     pc.not_equal(table["value"], "")))
        order = pc.sort_indices(table, sort_keys=[("count", "descending"), ("value", "ascending")])
        if max_size is not None:
            order = order[:max_size]
        return table["value"].take(order).combine_chunks()

    def save(self, path: str) -> None:
        """Writes a Parquet table ``(field, value, count)`` (rows counted in its metadata), atomically."""
        import pyarrow.parquet as pq

        tables = [self.table(f) for f in self.fields]
        field_column = pa.DictionaryArray.from_arrays(
            pa.array(np.repeat(np.arange(len(self.fields), dtype=np.int32), [t.num_rows for t in tables])),
            pa.array(self.fields, pa.string()))
        values = pa.concat_tables(tables) if tables else _SCHEMA.empty_table()
        table = pa.table({"field": field_column, "value": values["value"], "count": values["count"]})
        table = table.replace_schema_metadata({"tfafm.rows": str(self.rows),
                                               "tfafm.fields": ",".join(self.fields)})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)

    @classmethod
    def load(cls, path: str) -> "ValueCounts":
        """Reads counts written by :meth:`save` (or any Parquet table ``field, value, count``)."""
        import pyarrow.parquet as pq

        if not os.path.isfile(path):
            raise FileNotFoundError(f"Counts file not found: {path}")
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as error:
            raise DataFormatError(f"not a readable Parquet file ({error})", path=path) from None
        metadata = table.schema.metadata or {}
        fields = metadata.get(b"tfafm.fields", b"").decode()
        counts = cls(fields.split(",") if fields else pc.unique(table["field"].cast(pa.string())).to_pylist())
        counts.rows = int(metadata.get(b"tfafm.rows", b"0"))
        field_names = table["field"].cast(pa.string())
        for index, field in enumerate(counts.fields):
            part = table.filter(pc.equal(field_names, field))
            counts._add(index, pa.table([part["value"].cast(pa.string()), part["count"].cast(pa.int64())],
                                        schema=_SCHEMA))
        return counts
