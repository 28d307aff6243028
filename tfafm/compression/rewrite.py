"""Rebuilding a model with some layers replaced, on ``keras.models.clone_model``.

A re-created layer gets its original's whole state the way Keras' own
``.keras`` saving captures it: for the layer and each of its sub-layers, the
variables written by ``save_own_variables`` and the files written by
``save_assets`` (an adapted ``StringLookup``'s vocabulary, a
``TextVectorization``'s lookup table, a user layer's assets), not only its
weights. So every layer that survives a ``.keras`` round trip also survives
a rewrite.

Keras version note: the sub-layers are listed with ``Layer._flatten_layers``
(private; Keras is pinned to 3.15 in ``setup.py``).
"""

from __future__ import annotations

import tempfile
from typing import Callable

import keras

from tfafm.graph import clone


def rebuild(model: keras.Model, replacements: dict[int, keras.layers.Layer],
            call_hook: Callable | None = None) -> tuple[keras.Model, list[str], list]:
    """A copy of ``model`` in which each layer whose ``id`` is in ``replacements`` is swapped
    for its replacement (already built, with its weights).

    Every other layer is re-created from its config and given the original's
    state (:func:`copy_state`), once per layer (shared layers stay shared;
    nested Sequential and functional models are rebuilt recursively);
    stateless operations (``x * 2.0``, ``keras.ops.sum``, ...) are reused as
    they are. A layer that cannot be re-created from its config (a custom
    layer without ``get_config``) is reused too, so it shares its weights with
    ``model``; its name is returned in the second element. The third lists
    the ``(original, copy)`` pairs of re-created layers. The copy is not
    compiled (see :func:`clone`).

    ``call_hook(original, new, layer_for, *args, **kwargs)``, when given, sees every
    layer call of the copy: it returns the tensor(s) that call produces, or None to
    call ``new`` as usual; ``layer_for(original)`` is the copy of any layer.
    """
    copies: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []
    shared: list[str] = []
    made: dict[int, keras.layers.Layer] = {}
    originals: dict[int, keras.layers.Layer] = {}

    def clone_layer(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer
        if id(layer) not in made:
            made[id(layer)] = _copy_of(layer, replacements, copies, shared)
            originals[id(made[id(layer)])] = layer
        return made[id(layer)]

    def call(new, *args, **kwargs):
        result = call_hook(originals.get(id(new), new), new, clone_layer, *args, **kwargs)
        return new(*args, **kwargs) if result is None else result

    new_model = clone(model, clone_function=clone_layer, call_function=call if call_hook else None, recursive=True)
    for original, copy in copies:
        copy_state(original, copy)
    return new_model, shared, copies


def _copy_of(layer, replacements, copies: list, shared: list[str]):
    if id(layer) in replacements:
        return replacements[id(layer)]
    try:
        copy = layer.__class__.from_config(layer.get_config())
    except (NotImplementedError, TypeError, ValueError):
        shared.append(layer.name)
        return layer
    copies.append((layer, copy))
    return copy


def copy_state(original: keras.layers.Layer, copy: keras.layers.Layer) -> None:
    """Gives ``copy`` (re-created from ``original``'s config) ``original``'s state, layer by
    sub-layer, through Keras' saving hooks: ``save_own_variables`` / ``load_own_variables``
    and ``save_assets`` / ``load_assets``, as ``model.save`` and ``keras.models.load_model``
    do (an adapted ``Normalization`` derives its mean and variance in ``load_own_variables``).

    A copy whose sub-layers do not mirror the original's (a layer that builds
    differently from its config) falls back to ``set_weights``.
    """
    if not copy.built:
        return
    sources = original._flatten_layers(include_self=True)
    targets = copy._flatten_layers(include_self=True)
    if len(sources) != len(targets) or any(type(a) is not type(b) for a, b in zip(sources, targets)):
        if original.weights:
            copy.set_weights(original.get_weights())
        return
    for source, target in zip(sources, targets):
        store: dict = {}
        source.save_own_variables(store)
        if store:
            target.load_own_variables(store)
        if hasattr(source, "save_assets"):
            with tempfile.TemporaryDirectory(prefix="tfafm-assets-") as folder:
                source.save_assets(folder)
                target.load_assets(folder)
