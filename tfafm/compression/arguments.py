"""Checks of :func:`tfafm.compress`'s budget arguments, run before any calibration.

A wrong ``target_ratio`` (``"4"``, ``nan``), ``energy`` or ``ranks`` must not
cost a full calibration pass before it is reported: :func:`check_budget` says
what is wrong, in one :class:`~tfafm.errors.UserError`, before any work.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Optional

from tfafm.errors import UserError


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_budget(ranks: Optional[Mapping], energy: Any, target_ratio: Any, calibration_steps: Any = None,
                 min_calibration_rows: Any = None, max_auc_drop: Any = None, validation_data: Any = None) -> None:
    """Raises a :class:`UserError` unless every argument given (not None) has a usable type and
    value (see :func:`tfafm.compress`, which also checks that exactly one budget is given):
    ``max_auc_drop`` also needs ``validation_data``, and held-out data must be finite."""
    if max_auc_drop is not None:
        if not (_is_real(max_auc_drop) and math.isfinite(max_auc_drop) and 0 <= max_auc_drop < 1):
            raise UserError(f"max_auc_drop must be a number in [0, 1), e.g. 0.001, got {max_auc_drop!r}.")
        if validation_data is None:
            raise UserError("max_auc_drop needs validation_data with labels (held-out rows to measure the AUC on).")
    cardinality = getattr(validation_data, "cardinality", None)
    if cardinality is not None and int(cardinality()) == -1:  # tf.data.INFINITE_CARDINALITY
        raise UserError("validation_data is an infinite dataset (a .repeat() without a count?): evaluation would "
                        "never end; give it a finite number of batches (.take(N)).")
    if target_ratio is not None and not (_is_real(target_ratio) and math.isfinite(target_ratio)
                                         and target_ratio > 1):
        raise UserError(f"target_ratio must be a finite number greater than 1, e.g. 4, got {target_ratio!r}.")
    if energy is not None and not (_is_real(energy) and 0 < energy <= 1):
        raise UserError(f"energy must be a number in (0, 1], e.g. 0.95, got {energy!r}.")
    if ranks is not None:
        if not isinstance(ranks, Mapping) or not ranks:
            raise UserError(f"ranks must be a non-empty mapping of layer names to ranks, got {ranks!r}.")
        for name, rank in ranks.items():
            if not isinstance(name, str):
                raise UserError(f"ranks: keys must be layer names (strings), got {name!r}.")
            if not _is_integer(rank) or rank < 1:
                raise UserError(f"ranks: the rank of {name!r} must be a positive integer, got {rank!r}.")
    if calibration_steps is not None and not (_is_integer(calibration_steps) and calibration_steps >= 1):
        raise UserError(f"calibration_steps must be a positive integer, got {calibration_steps!r}.")
    if min_calibration_rows is not None and not (_is_integer(min_calibration_rows) and min_calibration_rows >= 0):
        raise UserError(f"min_calibration_rows must be an integer >= 0, got {min_calibration_rows!r}.")
