"""``keras.layers.MultiHeadAttention`` with low-rank query/key/value/output projections.

:class:`LowRankMultiHeadAttention` is Keras' own layer (same call, masking
and attention code) whose ``EinsumDense`` projections named in ``ranks`` are
:class:`~tfafm.layers.LowRankEinsumDense` layers.

Keras version note: Keras builds the projections in
``MultiHeadAttention.build`` and keeps them in the private attributes
``_query_dense``, ``_key_dense``, ``_value_dense`` and ``_output_dense``;
this layer swaps them after ``build`` and untracks the replaced ones through
the layer's private ``_tracker``. Tested with Keras 3.15 (pinned in
``setup.py``); ``tests/test_user_models.py`` checks the weights and outputs.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras

from tfafm.errors import UserError
from tfafm.layers.low_rank import LowRankEinsumDense

# projection name (the sublayer's own name) -> private attribute of MultiHeadAttention
PROJECTIONS = {
    "query": "_query_dense",
    "key": "_key_dense",
    "value": "_value_dense",
    "attention_output": "_output_dense",
}


@keras.saving.register_keras_serializable(package="tfafm")
class LowRankMultiHeadAttention(keras.layers.MultiHeadAttention):
    """``MultiHeadAttention`` whose projections listed in ``ranks`` are low-rank.

    Args:
        ranks: ``{projection: rank}`` for projections among ``"query"``,
            ``"key"``, ``"value"`` and ``"attention_output"``.
        **kwargs: every ``MultiHeadAttention`` argument.
    """

    def __init__(self, ranks: Mapping[str, int] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        ranks = dict(ranks or {})
        unknown = sorted(set(ranks) - set(PROJECTIONS))
        if unknown:
            raise UserError(f"Layer {self.name!r}: unknown projection(s) {unknown}; expected some of "
                            f"{sorted(PROJECTIONS)}.")
        self.ranks = {name: int(rank) for name, rank in ranks.items()}

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        for name, rank in self.ranks.items():
            attribute = PROJECTIONS[name]
            full = getattr(self, attribute)
            low = LowRankEinsumDense(
                full.equation, tuple(full.kernel.shape), rank, activation=full.activation,
                use_bias=full.bias is not None, kernel_regularizer=full.kernel_regularizer,
                bias_regularizer=full.bias_regularizer, name=full.name, dtype=full.dtype_policy,
            )
            low.build()
            self._tracker.untrack(full)
            setattr(self, attribute, low)

    def projection(self, name: str):
        """The projection layer ``name`` (``EinsumDense`` or ``LowRankEinsumDense``)."""
        return getattr(self, PROJECTIONS[name])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ranks": dict(self.ranks)}
