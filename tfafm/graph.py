"""What tfafm needs to know about a Keras model's graph, through Keras' public API.

Rewriting uses ``keras.models.clone_model``; this module adds the pieces
around it: which models have a graph (``Sequential`` and functional models,
not subclassed ones), a walk over every layer with a unique qualified name
(``tower/dense``), how often each layer is called, and how a feature batch
maps onto a model's inputs.

Keras version note: the one private name used is
``keras.src.models.functional.Functional``, the class of functional models
(the same check ``clone_model`` itself makes); Keras is pinned to 3.15 in
``setup.py``.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import keras
from keras.src.models.functional import Functional

from tfafm.errors import UnsupportedLayerError, UserError

SUBCLASSED_HINT = (
    "its graph cannot be rewritten. Build it with the functional API or keras.Sequential, or "
    "replace layers yourself with tfafm.LowRankDense.from_dense / LowRankEmbedding.from_embedding "
    "(or implement tfafm.CompressibleLayer on your own layers)."
)


def is_graph_model(model) -> bool:
    """True for ``keras.Sequential`` and functional models (their graph is known to Keras)."""
    return isinstance(model, (keras.Sequential, Functional))


def require_graph_model(model) -> None:
    """Raises :class:`UnsupportedLayerError` for anything but a built Sequential or functional model."""
    if not isinstance(model, keras.Model):
        raise UnsupportedLayerError(f"Expected a keras.Model, got {type(model).__name__}.")
    if not is_graph_model(model):
        raise UnsupportedLayerError(f"Model {model.name!r} is a subclassed model: {SUBCLASSED_HINT}")
    if not model.built or not model.inputs:
        raise UserError(f"Model {model.name!r} is not built: call it on data or give it a keras.Input first.")


def as_functional(model: keras.Model) -> keras.Model:
    """``model`` itself, or for a ``Sequential`` a functional model calling the same layers."""
    if not isinstance(model, keras.Sequential):
        return model
    source = model.inputs[0]
    inputs = keras.Input(batch_shape=source.shape, dtype=source.dtype, name=source.name)
    outputs = inputs
    for layer in model.layers:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs, name=model.name)


def walk(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    """``(qualified_name, layer)`` for every layer, descending into nested Sequential/functional
    models (``outer/inner``). A layer object reached twice is yielded once."""
    seen: set[int] = set()

    def visit(current, path):
        for layer in current.layers:
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            name = f"{path}{layer.name}"
            if is_graph_model(layer):
                yield from visit(layer, name + "/")
            else:
                yield name, layer

    yield from visit(model, prefix)


def iter_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model`` (nested models descended into), each once."""
    return (layer for _, layer in walk(model))


def resolve_names(model: keras.Model, names, what: str) -> dict[str, keras.layers.Layer]:
    """Maps user-given layer names to layers: a qualified name (``tower/dense``), or a plain
    layer name that is unique in the model. Raises ``UserError`` naming ``what`` otherwise."""
    layers = dict(walk(model))
    by_short: dict[str, list[str]] = {}
    for qualified, layer in layers.items():
        by_short.setdefault(layer.name, []).append(qualified)
    resolved = {}
    for name in names:
        if name in layers:
            resolved[name] = layers[name]
        elif len(by_short.get(name, [])) == 1:
            resolved[name] = layers[by_short[name][0]]
        elif name in by_short:
            raise UserError(f"{what}: layer name {name!r} is ambiguous in model {model.name!r}; use one of "
                            f"{by_short[name]}.")
        else:
            raise UserError(f"{what} names unknown layer {name!r} of model {model.name!r}.")
    return resolved


def call_counts(model: keras.Model) -> dict[int, int]:
    """How many times each layer (by ``id``) is called in the graph of the model that holds it."""
    counts: dict[int, int] = {}

    def visit(current):
        if isinstance(current, keras.Sequential):
            for layer in current.layers:
                counts[id(layer)] = counts.get(id(layer), 0) + 1
                if is_graph_model(layer):
                    visit(layer)
            return
        config_layers = {entry["name"]: entry for entry in current.get_config()["layers"]}
        for layer in current.layers:
            entry = config_layers.get(layer.name)
            calls = len(entry.get("inbound_nodes", [])) if entry else 0
            counts[id(layer)] = counts.get(id(layer), 0) + calls
            if is_graph_model(layer):
                visit(layer)

    visit(model)
    return counts


# Keras' counters advance by one: names with larger numeric suffixes are never reached by auto-naming.
_RESERVED_SUFFIX_LIMIT = 100_000


def reserve_names(model: keras.Model) -> None:
    """Advances Keras' automatic naming past every operation name of ``model`` (nested models
    included), so that the layers and ops made while rewriting it never take a name it already uses:
    a model loaded from a file holds names (``reshape``, ``dense_3``) this session's counters never
    gave out, and a clash makes the rewritten model fail to build."""
    names: set[str] = set()

    def visit(graph) -> None:
        for operation in getattr(graph, "operations", None) or graph.layers:
            names.add(operation.name)
            if is_graph_model(operation):
                visit(operation)

    visit(model)
    for name in names:
        base, _, number = name.rpartition("_")
        base, needed = (base, int(number) + 1) if base and number.isdigit() else (name, 1)
        if needed > _RESERVED_SUFFIX_LIMIT:  # "tower_20240615": no session names that many objects
            continue
        while keras.backend.get_uid(base) < needed:
            pass


def output_structure(model: keras.Model):
    """What ``model(...)`` returns, as KerasTensors: a dict, list or single tensor."""
    return model.outputs[0] if isinstance(model, keras.Sequential) else model.output


def output_names(model: keras.Model) -> list[str]:
    """One name per model output, in Keras' order (``model.outputs``, the order a list or tuple of
    labels pairs with): the keys of a dict output, sorted as Keras flattens a dict, else the producing
    layers' names."""
    outputs = output_structure(model)
    if isinstance(outputs, dict):
        return keras.tree.flatten({name: name for name in outputs})
    names = list(getattr(model, "output_names", None) or [])
    flat = keras.tree.flatten(outputs)
    if len(names) != len(flat) or len(set(names)) != len(names):
        names = [f"output_{i}" for i in range(len(flat))]
    return names


def output_activations(model: keras.Model) -> list[str | None]:
    """Per model output (in :func:`output_names` order), the activation its last layer applies
    (``"sigmoid"``, ``"linear"``, ...), or None where the graph does not say (a subclassed model, a
    custom layer)."""
    try:
        outputs = output_structure(model)
    except (AttributeError, ValueError):  # a subclassed model that was never called symbolically
        return [None] * len(output_names(model)) if hasattr(model, "outputs") else [None]
    flat = keras.tree.flatten(outputs)
    activations = []
    for tensor in flat:
        history = getattr(tensor, "_keras_history", None)
        operation = history.operation if history is not None else None
        while isinstance(operation, (keras.layers.Reshape, keras.layers.Flatten)):  # shape only: look through
            history = getattr(operation._inbound_nodes[history.node_index].input_tensors[0], "_keras_history", None)
            operation = history.operation if history is not None else None
        activation = getattr(operation, "activation", None)
        name = None
        if callable(activation):
            serialized = keras.activations.serialize(activation)
            name = serialized if isinstance(serialized, str) else None
        elif type(operation).__name__ == "Sigmoid":  # keras.ops.sigmoid in a functional graph
            name = "sigmoid"
        activations.append(name)
    return activations


def input_structure(model: keras.Model):
    """The structure ``model(...)`` takes: its input dict, list or single input tensor."""
    if isinstance(model, keras.Sequential):
        return model.inputs[0]
    return model.input


def input_names(model: keras.Model) -> list[str]:
    """The name of each of ``model.inputs``: its key when the model takes a dict, else the
    input tensor's name."""
    structure = input_structure(model)
    if isinstance(structure, dict):
        return [str(path[0]) for path, _ in keras.tree.flatten_with_path(structure)]
    return [tensor.name for tensor in model.inputs]


def split_element(element: Any) -> tuple[Any, Any, Any]:
    """``(features, labels, sample weights)`` of a dataset element, ``None`` for what it lacks, as Keras reads
    it: ``(features,)``, ``(features, labels)``, ``(features, labels, weights)``, else the element is the
    features (a list-input model's ``((ids, numbers),)`` is its features)."""
    if isinstance(element, (tuple, list)) and 1 <= len(element) <= 3:
        return (*element, None, None)[:3]
    return element, None, None


def model_inputs(model: keras.Model, features) -> list:
    """Orders and casts a batch to ``model``'s flat input list (``model.inputs`` order).

    ``features`` is a dict keyed by input name (extra keys, such as labels,
    are ignored), one array for a single-input model, or a list in input
    order. Arrays missing the trailing ``1`` of a ``(batch, 1)`` input are
    expanded.
    """
    from keras import ops

    specs, names = model.inputs, input_names(model)
    if isinstance(features, dict):
        missing = [name for name in names if name not in features]
        if missing:
            raise UserError(f"Data has no feature(s) {missing} that model {model.name!r} expects "
                            f"(it has {sorted(features)[:10]}).")
        features = [features[name] for name in names]
    elif not isinstance(features, (list, tuple)):
        features = [features]
    if len(features) != len(specs):
        raise UserError(f"Model {model.name!r} takes {len(specs)} input(s), the data gives {len(features)}.")
    flat = []
    for name, spec, value in zip(names, specs, features):
        if _is_text(value) and not _is_text(spec):
            raise UserError(f"Feature {name!r} holds strings, but model {model.name!r} takes {spec.dtype} there: "
                            "encode the values to ids first (as the model was trained), or give the model a "
                            "string input with its own lookup (e.g. keras.layers.StringLookup).")
        value = ops.cast(value, spec.dtype)
        if len(value.shape) == len(spec.shape) - 1 and spec.shape[-1] == 1:
            value = ops.expand_dims(value, -1)
        if len(value.shape) < len(spec.shape):
            raise UserError(f"Feature {name!r} comes as {tuple(value.shape)} where model {model.name!r} takes "
                            f"{tuple(spec.shape)} (batch first): give arrays with one row per example, and a "
                            "dataset of batches (dataset.batch(N)), not of single rows.")
        flat.append(value)
    return flat


def _is_text(value) -> bool:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return False
    try:
        return keras.backend.standardize_dtype(dtype) == "string"
    except ValueError:  # a dtype Keras has no name for (numpy object arrays hold text here)
        return getattr(dtype, "kind", "") in ("U", "S", "O")


def pack_inputs(model: keras.Model, flat: list):
    """The flat input list in the structure ``model(...)`` takes (dict, list or one tensor)."""
    structure = input_structure(model)
    if isinstance(structure, dict):
        return dict(zip(input_names(model), flat))
    return list(flat) if isinstance(structure, (list, tuple)) else flat[0]


def call_sources(model: keras.Model) -> dict[str, list[tuple[str, int]]]:
    """For each layer of a functional ``model`` called once: the ``(layer name, output index)``
    that produced each tensor of its call's arguments, in order (nested lists flattened)."""
    sources: dict[str, list[tuple[str, int]]] = {}

    def tensors(value):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            name, _, index = value["config"]["keras_history"]
            yield name, index
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from tensors(item)

    for entry in model.get_config()["layers"]:
        nodes = entry.get("inbound_nodes", [])
        if len(nodes) == 1:
            sources[entry["name"]] = list(tensors(nodes[0]["args"]))
    return sources


def readers(model: keras.Model) -> dict[tuple[str, int], list[str]]:
    """For each ``(layer name, output index)`` of a functional ``model``'s own graph: the names of the
    layers and operations whose calls read that tensor (in arguments or keyword arguments; once per
    call that reads it), with ``""`` for each model output that is that tensor."""
    found: dict[tuple[str, int], list[str]] = {}

    def tensors(value):
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                name, _, index = value["config"]["keras_history"]
                yield name, index
            else:
                for item in value.values():
                    yield from tensors(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from tensors(item)

    config = model.get_config()
    for entry in config["layers"]:
        for node in entry.get("inbound_nodes", []):
            for source in set(tensors([node.get("args", ()), node.get("kwargs", {})])):
                found.setdefault(source, []).append(entry["name"])
    for name, _, index in _flat_outputs(config["output_layers"]):
        found.setdefault((name, index), []).append("")
    return found


def _flat_outputs(value) -> list:
    """``[name, node, index]`` triples of a (nested) ``output_layers`` config."""
    if isinstance(value, dict):
        return [t for item in value.values() for t in _flat_outputs(item)]
    if isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str):
        return [value]
    return [t for item in value for t in _flat_outputs(item)]


def layer_of_node(node_name: str, layer_names: list[str]) -> str | None:
    """The Keras layer whose name scope holds a graph node (``model_1/lookup_1/Find`` ->
    ``lookup``), innermost first."""
    for part in reversed(node_name.split("/")[:-1]):
        for name in layer_names:
            if part == name or re.fullmatch(re.escape(name) + r"_\d+", part):
                return name
    return None


def clone(model: keras.Model, **clone_kwargs) -> keras.Model:
    """``keras.models.clone_model(model, **clone_kwargs)``, never compiled.

    ``clone_model`` compiles the copy of a compiled model and builds its
    optimizer, allocating the optimizer's slots (two per weight for Adam),
    which a ``.keras`` file then stores: a compressed model would weigh three
    times its weights, on disk and in memory. The copy is left uncompiled
    instead, like a freshly built model: ``compile`` it to fine-tune. Layers and ops made while
    cloning are named past the model's own names (:func:`tfafm.graph.reserve_names`).
    """
    reserve_names(model)
    if not model.compiled:
        return keras.models.clone_model(model, **clone_kwargs)
    model.compiled = False  # read by clone_model only; restored before anything else sees the model
    try:
        return keras.models.clone_model(model, **clone_kwargs)
    finally:
        model.compiled = True
