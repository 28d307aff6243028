"""Rebuilding a model with some layers replaced, on ``keras.models.clone_model``."""

from __future__ import annotations

import keras


def rebuild(model: keras.Model, replacements: dict[int, keras.layers.Layer]) -> tuple[keras.Model, list[str]]:
    """A copy of ``model`` in which each layer whose ``id`` is in ``replacements`` is swapped
    for its replacement (already built, with its weights).

    Every other layer is re-created from its config and given the original's
    weights, once per layer (shared layers stay shared; nested Sequential and
    functional models are rebuilt recursively); stateless operations (``x *
    2.0``, ``keras.ops.sum``, ...) are reused as they are. A layer that
    cannot be re-created from its config (a custom layer without
    ``get_config``) is reused too, so it shares its weights with ``model``;
    its name is returned in the second element.
    """
    copies: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []
    shared: list[str] = []

    def clone(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer
        if id(layer) in replacements:
            return replacements[id(layer)]
        try:
            copy = layer.__class__.from_config(layer.get_config())
        except (NotImplementedError, TypeError, ValueError):
            shared.append(layer.name)
            return layer
        copies.append((layer, copy))
        return copy

    new_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for original, copy in copies:
        if original.weights:
            copy.set_weights(original.get_weights())
    return new_model, shared
