"""Equivalent forms of a model that a serving runtime can run with its builtin ops.

Two kinds of layer need a different form for export, not a different model:

* **Recurrent layers** (``GRU``, ``LSTM``, ``SimpleRNN``, any ``keras.layers.RNN``,
  also inside ``Bidirectional``) run a ``while`` loop over ``TensorList`` ops,
  which LiteRT's builtins and ONNX (through tf2onnx) cannot take. With the
  sequence length fixed by the model's input, the loop is unrolled
  (``unroll=True``): the same weights and outputs, as plain matmuls and
  element-wise ops. A sequence of unknown length cannot be unrolled: that is
  an error that says how to fix it.
* **Mixed precision** (``mixed_float16``, ``mixed_bfloat16``): LiteRT has no
  builtin kernels computing in float16 or bfloat16, so the LiteRT export
  computes in float32 (the variables are float32 already); ask for
  ``quantization="float16"`` to store float16 weights.

:func:`servable` returns the model in its servable form (the model itself
when nothing changes) with one note per change.
"""

from __future__ import annotations

import keras

from tfafm.graph import iter_layers
from tfafm.compression.rewrite import copy_state, rebuild
from tfafm.errors import UnsupportedLayerError

_RECURRENT = (keras.layers.RNN, keras.layers.Bidirectional)
_FLOAT32_NEEDED = ("litert",)


def _recurrent(layer) -> bool:
    return isinstance(layer, _RECURRENT) and not _unrolled(layer)


def _unrolled(layer) -> bool:
    if isinstance(layer, keras.layers.Bidirectional):
        return layer.forward_layer.unroll and layer.backward_layer.unroll
    return bool(layer.unroll)


def _half_precision(layer) -> bool:
    return layer.dtype_policy.compute_dtype in ("float16", "bfloat16")


def _sequence_length(layer) -> int | None:
    inputs = layer.input
    first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
    return first.shape[1] if len(first.shape) >= 3 else None


def _with_unroll(config: dict) -> dict:
    config = dict(config, unroll=True)
    for key in ("layer", "backward_layer"):  # Bidirectional wraps serialized RNN layers
        if isinstance(config.get(key), dict):
            config[key] = {**config[key], "config": _with_unroll(config[key]["config"])}
    return config


def servable(model: keras.Model, export_format: str) -> tuple[keras.Model, list[str]]:
    """``model`` in a form ``export_format`` (``"litert"``, ``"onnx"``, ``"saved_model"``) runs
    with its builtin ops, and a note per change (see the module docstring).

    Raises:
        UnsupportedLayerError: a recurrent layer over a sequence of unknown length.
    """
    if export_format == "saved_model":
        return model, []
    layers = list(iter_layers(model))
    recurrent = [layer for layer in layers if _recurrent(layer)]
    half = [layer for layer in layers if _half_precision(layer)] if export_format in _FLOAT32_NEEDED else []
    if not recurrent and not half:
        return model, []
    for layer in recurrent:
        if _sequence_length(layer) is None:
            raise UnsupportedLayerError(
                f"Layer {layer.name!r} ({type(layer).__name__}) runs over a sequence of unknown length: "
                f"{export_format} exports unroll recurrent layers into builtin ops, which needs a fixed length. "
                "Give the model's sequence input a fixed length (keras.Input((LENGTH, ...))), padding or "
                "truncating sequences to it.")
    replacements, notes = {}, []
    for layer in recurrent + [layer for layer in half if layer not in recurrent]:
        config = layer.get_config()
        if layer in recurrent:
            config = _with_unroll(config)
        if layer in half:
            config["dtype"] = "float32"
        new = layer.__class__.from_config(config)
        new.build_from_config(layer.get_build_config())
        copy_state(layer, new)
        replacements[id(layer)] = new
    if recurrent:
        notes.append(f"recurrent layer(s) {', '.join(repr(l.name) for l in recurrent)} unrolled over their fixed "
                     "sequence length (same weights and outputs, builtin ops only)")
    if half:
        policy = half[0].dtype_policy.name
        notes.append(f"computes in float32: {len(half)} layer(s) use the {policy} policy, which has no LiteRT "
                     "builtin kernels (weights unchanged; quantization='float16' stores them as float16)")
    return rebuild(model, replacements)[0], notes
