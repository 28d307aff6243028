"""Running a rewritten model once before it is handed back, and naming the layer that fails.

A model that cannot run must never leave :func:`tfafm.compress` or
:func:`tfafm.fuse`: :func:`run_checked` calls it eagerly on sample rows
(:mod:`tfafm.compression.samples`), and any exception or non-finite output
becomes a :class:`~tfafm.errors.UserError` naming the layer at fault.
"""

from __future__ import annotations

import contextlib
import re
import sys
import types
from typing import Iterator

import keras
import numpy as np

from tfafm.graph import input_names, is_graph_model, model_inputs, output_names, pack_inputs
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
    lines = [line for line in lines if not line.startswith("Exception encountered when calling")] or lines
    text = re.sub(r"\x1b\[[0-9;]*m", "", lines[0]) if lines else type(error).__name__
    return text if len(text) <= 300 else text[:300] + "..."


@contextlib.contextmanager
def failures_named(what: str) -> Iterator[None]:
    """Turns any exception inside the block into a one-line :class:`UserError` that says
    ``what`` failed and names the layer where it did (``UserError`` passes through)."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # any failure inside TensorFlow or a layer
        layer = failing_layer(sys.exc_info()[2])
        where = f" in layer {layer.name!r} ({type(layer).__name__})" if layer is not None else ""
        raise UserError(f"{what}{where}: {type(error).__name__}: {_summary(error)}") from error


def run_checked(model: keras.Model, rows: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """``model``'s outputs on ``rows`` as ``{output name: array}``, computed eagerly.

    Raises:
        UserError: the model fails on the rows (naming the layer where it
            failed) or gives a non-finite output (naming the output). ``what``
            says which model it is, e.g. ``"The compressed model"``.
    """
    with failures_named(f"{what} fails to run"):
        outputs = model(pack_inputs(model, model_inputs(model, rows)), training=False)
    names = output_names(model)
    flat = [np.asarray(x.numpy() if hasattr(x, "numpy") else x) for x in
            (list(outputs.values()) if isinstance(outputs, dict) else keras.tree.flatten(outputs))]
    if isinstance(outputs, dict):
        names = list(outputs)
    result = dict(zip(names, flat))
    for name, value in result.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise UserError(f"{what} gives non-finite values (NaN or inf) in output {name!r} on "
                            f"{len(next(iter(rows.values())))} sample rows (rows generated within each input's "
                            "type when no data was given: a model that only accepts part of that range, such as "
                            "log1p of a positive price, needs rows of its own data: --data, verification_data= "
                            "or calibration data).")
    return result


def check_input_layers(model: keras.Model, pairs, rows: dict[str, np.ndarray]) -> None:
    """Each re-created layer that reads model inputs directly (lookups, hashing, normalization,
    a user's preprocessing) must compute on ``rows`` exactly what its original computes.

    ``pairs`` are ``(original, copy)`` layers of ``model`` and of its rewrite.
    This catches state that Keras' own saving does not capture either (not a
    weight, not in the config, not an asset), which a copy would silently lose.

    Raises:
        UserError: naming the layer whose copy computes differently.
    """
    values = dict(zip((id(t) for t in model.inputs), model_inputs(model, rows)))
    for original, copy in pairs:
        try:
            inputs = original.input
        except (AttributeError, ValueError):  # not called, or called several times
            continue
        flat = keras.tree.flatten(inputs)
        if not flat or any(id(tensor) not in values for tensor in flat):
            continue
        arguments = keras.tree.pack_sequence_as(inputs, [values[id(tensor)] for tensor in flat])
        try:
            expected = keras.tree.flatten(original(arguments))
        except Exception:  # the original fails on these rows too: the run check reports it
            continue
        got = keras.tree.flatten(copy(arguments))
        if any(not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6, equal_nan=True)
               for a, b in zip(expected, got)):
            raise UserError(
                f"Layer {original.name!r} ({type(original).__name__}) computes differently once re-created from "
                "its config: it holds state that is not a weight, not in get_config() and not saved by "
                "save_assets(), so Keras' own .keras saving loses it too. Save that state in save_assets / "
                "load_assets (or as a weight) and compress again.")
