"""Row lookups for ids already known to lie inside their table.

Keras' ``ops.take`` wraps negative ids around (``id + V`` when ``id < 0``),
which costs a comparison, an addition and a select per lookup. tfafm models
guard every id with :class:`~tfafm.models.layers.ClipToVocabulary` first, so those
ops are dead weight; on LiteRT at batch 1 they are a large share of the run
time of a model with dozens of fields.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from tfafm.errors import UserError


def gather_rows(table, ids):
    """``table[ids]`` for ids in ``[0, len(table))``, without negative-id wrap-around."""
    if ops.dtype(ids) not in ("int32", "int64"):
        ids = ops.cast(ids, "int32")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.gather(table, ids)
    return ops.take(table, ids, axis=0)


@keras.saving.register_keras_serializable(package="tfafm")
class InRangeEmbedding(keras.layers.Embedding):
    """A ``keras.layers.Embedding`` whose ids are guaranteed in range.

    Same weights, config and output as ``Embedding``; the lookup is a plain
    gather (see :func:`gather_rows`). Put a
    :class:`~tfafm.models.layers.ClipToVocabulary` in front of it: out-of-range ids
    are an error here, not a silent wrap-around.
    """

    def call(self, inputs):
        if self.quantization_mode or self.lora_enabled:
            return super().call(inputs)
        return ops.cast(gather_rows(self.embeddings, inputs), dtype=self.compute_dtype)


@keras.saving.register_keras_serializable(package="tfafm")
class WrappedEmbedding(InRangeEmbedding):
    """An ``Embedding`` whose negative ids wrap around by ``rows`` instead of the table's length.

    A negative id ``i`` reads row ``rows + i``, as ``keras.layers.Embedding``
    does with a table of ``rows`` rows. The LiteRT export uses it as a short
    stand-in for a big user table during conversion (the real rows are
    written into the file afterwards), so the converted graph keeps Keras' id
    semantics for the real table.

    Args:
        input_dim, output_dim: the (stand-in) table's shape.
        rows: the row count negative ids wrap around by.
    """

    def __init__(self, input_dim: int, output_dim: int, rows: int, **kwargs: Any):
        super().__init__(input_dim, output_dim, **kwargs)
        self.rows = int(rows)

    def call(self, inputs):
        ids = ops.cast(inputs, "int32")
        ids = ops.where(ops.less(ids, 0), ops.add(ids, self.rows), ids)
        return ops.cast(gather_rows(self.embeddings, ids), dtype=self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rows": self.rows}


@keras.saving.register_keras_serializable(package="tfafm")
class MergedEmbedding(keras.layers.Layer):
    """The rows of several fields' embedding tables, read by ONE gather.

    Field ``f`` has a ``(vocabulary_sizes[f], widths[f])`` table. All tables
    are stored flattened one after the other in a single 1-D weight
    ``embeddings`` (``sum_f V_f k_f`` values): row ``i`` of field ``f``
    starts at element ``start_f + i * k_f``. The graph spreads the ids over
    the output columns, turns them into element indices
    (``id * k_f + start_f + j`` for column ``j`` of field ``f``) and reads all
    columns of all fields with one gather, so a quantized table is dequantized
    only where it was read. When every table has the same width ``k``, the
    weight is one ``(sum_f V_f, k)`` table instead, read by one gather of whole
    rows (each field's id plus its table's first row): per-element gathers
    cost a batch of rows dearly (~1 ms for 256 rows of 350 columns). With
    ``layout="rows"`` the tables are stored one weight per run of consecutive
    tables of one width (``(sum V_f, k)`` each) and every field is read as a
    whole row: one addition of the tables' first rows, one split of the ids by
    run, one gather of rows per run and one concatenation (a few ops more per
    width, but one index per field and row instead of one per column).

    Input: a list of int ``(batch,)`` id tensors (the output of
    :class:`~tfafm.models.layers.ClipToVocabulary`), or one int ``(batch, n)``
    tensor of them side by side (its output with ``stacked=True``: no split
    and re-stack); table ``f`` reads input (column) ``sources[f]`` (by
    default ``f``), so several tables may read one field's ids. Output
    ``(batch, sum_f k_f)``: the tables' rows side by side,
    ``concat_f table_f[ids[sources[f]]]``.

    Ids must lie in ``[0, V_f)`` as for :class:`InRangeEmbedding`: put a
    :class:`~tfafm.models.layers.ClipToVocabulary` in front of it (an id outside its
    field's range would read another field's rows). :func:`tfafm.fuse` builds
    it for the tables behind such a guard.

    Args:
        vocabulary_sizes: ``V_f`` per field.
        widths: ``k_f`` per field (the width of its stored rows).
        embeddings_initializer: for the flat table.
        sources: the input each table reads (default: table ``f`` reads input ``f``).
        layout: ``"elements"`` (one flat weight, read element by element unless
            every width is the same) or ``"rows"`` (one weight per run of equal
            widths, every table read as whole rows).
    """

    LAYOUTS = ("elements", "rows")

    def __init__(self, vocabulary_sizes: Sequence[int], widths: Sequence[int],
                 embeddings_initializer="uniform", sources: Sequence[int] | None = None,
                 layout: str = "elements", **kwargs: Any):
        super().__init__(**kwargs)
        self.vocabulary_sizes = [int(v) for v in vocabulary_sizes]
        self.widths = [int(k) for k in widths]
        if (len(self.vocabulary_sizes) != len(self.widths) or not self.widths
                or min(self.vocabulary_sizes + self.widths) < 1):
            raise UserError(f"Layer {self.name!r}: vocabulary_sizes and widths must be as many positive integers, "
                            f"got {vocabulary_sizes} and {widths}.")
        self.sources = list(range(len(self.widths))) if sources is None else [int(i) for i in sources]
        if len(self.sources) != len(self.widths) or min(self.sources) < 0:
            raise UserError(f"Layer {self.name!r}: sources must give a non-negative input index per table, "
                            f"got {sources} for {len(self.widths)} tables.")
        self.table_size = sum(v * k for v, k in zip(self.vocabulary_sizes, self.widths))
        if self.table_size >= 2**31:
            raise UserError(f"Layer {self.name!r}: {self.table_size:,} table values exceed int32 indexing.")
        if layout not in self.LAYOUTS:
            raise UserError(f"Layer {self.name!r}: layout must be one of {self.LAYOUTS}, got {layout!r}.")
        self.layout = layout
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        starts = np.cumsum([0] + [v * k for v, k in zip(self.vocabulary_sizes, self.widths)])[:-1]
        self.row_width = self.widths[0] if len(set(self.widths)) == 1 else None
        # Runs of consecutive tables of one width: [first table, last table + 1) each, one weight per run.
        bounds = [0] + [f for f in range(1, len(self.widths)) if self.widths[f] != self.widths[f - 1]]
        self._runs = (list(zip(bounds, bounds[1:] + [len(self.widths)]))
                      if layout == "rows" and self.row_width is None else [(0, len(self.widths))])
        self._row_start = np.concatenate([np.cumsum([0] + self.vocabulary_sizes[a:b])[:-1]
                                          for a, b in self._runs]).astype(np.int32)
        self.table_shapes = ([(self.table_size,)] if self.row_width is None and len(self._runs) == 1 else
                             [(sum(self.vocabulary_sizes[a:b]), self.widths[a]) for a, b in self._runs])
        self._column_field = np.repeat(self.sources, self.widths).astype(np.int32)
        self._column_stride = np.repeat(self.widths, self.widths).astype(np.int32)
        self._column_start = np.concatenate(
            [start + np.arange(k) for start, k in zip(starts, self.widths)]).astype(np.int32)

    def build(self, input_shape=None):
        self.tables = [self.add_weight(name="embeddings" if len(self.table_shapes) == 1 else f"embeddings_{r}",
                                       shape=shape, initializer=self.embeddings_initializer)
                       for r, shape in enumerate(self.table_shapes)]
        self.embeddings = self.tables[0] if len(self.tables) == 1 else None

    def _columns(self, ids, columns: list[int]):
        """Inputs (columns) ``columns`` of ``ids`` side by side, as one int32 ``(batch, len(columns))`` tensor."""
        if isinstance(ids, (list, tuple)):
            count = len(ids)
        elif len(ids.shape) == 2:
            count = ids.shape[-1]
        else:
            raise UserError(f"Layer {self.name!r}: expected a list of (batch,) id tensors or one (batch, n) "
                            f"tensor of them, got shape {tuple(ids.shape)}.")
        if count is not None and count <= max(self.sources):
            raise UserError(f"Layer {self.name!r}: its tables read inputs up to {max(self.sources)}, "
                            f"but {count} id columns were given.")
        if isinstance(ids, (list, tuple)):
            return ops.stack([ops.cast(ids[i], "int32") for i in columns], axis=1)
        ids = ops.cast(ids, "int32")
        if columns == list(range(count)):
            return ids
        if columns == list(range(columns[0], columns[0] + len(columns))):
            return ids[:, columns[0]:columns[0] + len(columns)]
        return ops.take(ids, ops.convert_to_tensor(columns, "int32"), axis=1)

    def call(self, ids):
        if self.row_width is not None or len(self._runs) > 1:
            index = self._columns(ids, self.sources) + ops.convert_to_tensor(self._row_start)
            parts = [index] if len(self._runs) == 1 else ops.split(index, [a for a, _ in self._runs[1:]], axis=1)
            rows = [ops.reshape(gather_rows(table, part), (-1, (b - a) * self.widths[a]))
                    for table, part, (a, b) in zip(self.tables, parts, self._runs)]
            return ops.cast(rows[0] if len(rows) == 1 else ops.concatenate(rows, axis=1), self.compute_dtype)
        count = len(ids) if isinstance(ids, (list, tuple)) else ids.shape[-1]
        stacked = self._columns(ids, list(range(count)))
        spread = ops.take(stacked, ops.convert_to_tensor(self._column_field), axis=1)
        index = spread * ops.convert_to_tensor(self._column_stride) + ops.convert_to_tensor(self._column_start)
        return ops.cast(gather_rows(self.embeddings, index), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0] if isinstance(input_shape[0], (int, type(None))) else input_shape[0][0]
        return (batch, sum(self.widths))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "vocabulary_sizes": self.vocabulary_sizes,
            "widths": self.widths,
            "sources": self.sources,
            "layout": self.layout,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }

    @classmethod
    def from_tables(cls, tables: Sequence[np.ndarray], **kwargs: Any) -> "MergedEmbedding":
        """A built layer holding ``tables`` (each ``(V_f, k_f)``), e.g. the ``embeddings`` of existing layers."""
        arrays = [np.asarray(t) for t in tables]
        layer = cls([len(t) for t in arrays], [t.shape[1] for t in arrays], embeddings_initializer="zeros", **kwargs)
        layer.build()
        for weight, (a, b) in zip(layer.tables, layer._runs):
            flat = np.concatenate([t.reshape(-1) for t in arrays[a:b]])
            weight.assign(flat.reshape(weight.shape).astype(weight.dtype))
        return layer
