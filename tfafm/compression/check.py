"""Running a rewritten model once before it is handed back, and naming the layer that fails.

A model that cannot run must never leave :func:`tfafm.compress` or
:func:`tfafm.fuse`: :func:`run_checked` calls it eagerly on sample rows
(:mod:`tfafm.compression.samples`), and any exception or non-finite output
becomes a :class:`~tfafm.errors.UserError` naming the layer at fault.
"""

from __future__ import annotations

import sys
import types

import keras
import numpy as np

from tfafm.compression.keras_graph import is_graph_model, model_inputs, output_names, pack_inputs
from tfafm.errors import UserError


def failing_layer(traceback: types.TracebackType | None) -> keras.layers.Layer | None:
    """The innermost Keras layer (not a model) whose ``__call__`` or ``call`` is on ``traceback``."""
    found = None
    while traceback is not None:
        frame = traceback.tb_frame
        candidate = frame.f_locals.get("self")
        if (frame.f_code.co_name in ("__call__", "call") and isinstance(candidate, keras.layers.Layer)
                and not is_graph_model(candidate)):
            found = candidate
        traceback = traceback.tb_next
    return found


def _summary(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def run_checked(model: keras.Model, rows: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """``model``'s outputs on ``rows`` as ``{output name: array}``, computed eagerly.

    Raises:
        UserError: the model fails on the rows (naming the layer where it
            failed) or gives a non-finite output (naming the output). ``what``
            says which model it is, e.g. ``"The compressed model"``.
    """
    try:
        outputs = model(pack_inputs(model, model_inputs(model, rows)), training=False)
    except UserError:
        raise
    except Exception as error:  # any failure inside TensorFlow or a layer: a model that cannot run
        layer = failing_layer(sys.exc_info()[2])
        where = f" in layer {layer.name!r} ({type(layer).__name__})" if layer is not None else ""
        raise UserError(f"{what} fails to run{where}: {type(error).__name__}: {_summary(error)}") from error
    names = output_names(model)
    flat = [np.asarray(keras.ops.convert_to_numpy(x)) for x in
            (list(outputs.values()) if isinstance(outputs, dict) else keras.tree.flatten(outputs))]
    if isinstance(outputs, dict):
        names = list(outputs)
    result = dict(zip(names, flat))
    for name, value in result.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise UserError(f"{what} gives non-finite values (NaN or inf) in output {name!r} on "
                            f"{len(next(iter(rows.values())))} sample rows.")
    return result
