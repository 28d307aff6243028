"""Row lookups for ids already known to lie inside their table.

Keras' ``ops.take`` wraps negative ids around (``id + V`` when ``id < 0``),
which costs a comparison, an addition and a select per lookup. tfafm models
guard every id with :class:`~tfafm.layers.ClipToVocabulary` first, so those
ops are dead weight; on LiteRT at batch 1 they are a large share of the run
time of a model with dozens of fields.
"""

from __future__ import annotations

import keras
from keras import ops


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
    :class:`~tfafm.layers.ClipToVocabulary` in front of it: out-of-range ids
    are an error here, not a silent wrap-around.
    """

    def call(self, inputs):
        if self.quantization_mode or self.lora_enabled:
            return super().call(inputs)
        return ops.cast(gather_rows(self.embeddings, inputs), dtype=self.compute_dtype)
