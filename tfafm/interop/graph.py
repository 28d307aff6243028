"""Replaying a Keras 2 (``tf_keras``) graph with Keras 3 layers.

:class:`GraphConverter` walks a Keras 2 functional or Sequential model node by
node (nested models are inlined) and calls the Keras 3 equivalent of every
layer (:mod:`tfafm.interop.layers`) on Keras 3 symbolic tensors, so every
intermediate tensor keeps the shape it had in the original. Raw model inputs
stay placeholders (:class:`RawInput`) until a layer reads them: a lookup layer
reading one is moved into the preprocessing sidecar
(:mod:`tfafm.interop.sidecar`) and replaced by integer id inputs; any other
layer gets plain inputs. Every converted input is a named ``(batch, 1)``
tensor, the convention of tfafm's exports; a raw input of shape ``(batch,)``
is reshaped back, one of shape ``(batch, k)`` is split into ``k`` inputs and
concatenated again.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from functools import partial
from typing import Any

import keras

from tfafm.errors import UnsupportedLayerError, UserError
from tfafm.interop.layers import class_label, conversions, unsupported
from tfafm.interop.sidecar import FeatureEncoding, RawFeatureEncoder
from tfafm.schema import DenseFeature, Schema, SparseFeature

_DROPPED_CALL_OPTIONS = ("training", "mask")


def feature_name(text: str) -> str:
    """``text`` made a valid feature name (letters, digits and underscores)."""
    name = re.sub(r"\W", "_", str(text)).strip("_")
    return name or "feature"


@dataclasses.dataclass(frozen=True)
class RawInput:
    """An input of the original model, not yet turned into Keras 3 inputs.

    Attributes:
        source: its key path in the original model's inputs.
        name: the feature name its converted inputs are named after.
        kind: ``"string"``, ``"int"`` or ``"float"``.
        shape: its shape without the batch dimension: ``()``, ``(1,)`` or ``(k,)``.
    """

    source: tuple[str, ...]
    name: str
    kind: str
    shape: tuple[int, ...]


def raw_input_for(tensor, source: tuple[str, ...]) -> RawInput:
    """The :class:`RawInput` standing for a Keras 2 ``Input`` tensor."""
    dtype = tensor.dtype
    kind = "string" if dtype.name == "string" else "int" if dtype.is_integer else "float" if dtype.is_floating else None
    shape = tuple(tensor.shape[1:])
    label = "/".join(source)
    if kind is None:
        raise UserError(f"Model input {label!r} has dtype {dtype.name}; tfafm takes strings, integers or floats.")
    if len(shape) > 1 or None in shape:
        raise UserError(
            f"Model input {label!r} has shape {tuple(tensor.shape)}; tfafm takes one value per row "
            "((batch,) or (batch, 1)) or a fixed number of columns (batch, k)."
        )
    if getattr(tensor, "sparse", False) or getattr(tensor, "ragged", False):
        raise UserError(f"Model input {label!r} is sparse or ragged; tfafm takes dense inputs only.")
    return RawInput(source, feature_name(source[-1]), kind, shape)


def _lookup_classes() -> dict[type, str]:
    import tf_keras

    layers = tf_keras.layers
    return {layers.StringLookup: "string_lookup", layers.IntegerLookup: "integer_lookup", layers.Hashing: "hashing"}


def _lookup_options(layer, kind: str) -> tuple[dict[str, Any], int]:
    """The sidecar options of a Keras 2 lookup layer and its number of ids."""
    if getattr(layer, "output_mode", "int") != "int" or getattr(layer, "sparse", False):
        raise unsupported(layer, f"output_mode={layer.output_mode!r}; only integer ids can move to the sidecar")
    if kind == "hashing":
        salt = None if layer.salt is None else [int(s) for s in layer.salt]
        return {"num_bins": int(layer.num_bins), "mask_value": layer.mask_value, "salt": salt}, int(layer.num_bins)
    if layer.invert:
        raise unsupported(layer, "invert=True (ids to values) cannot move to the sidecar")
    tokens = layer.get_vocabulary(include_special_tokens=False)
    if kind == "integer_lookup":
        tokens = [int(t) for t in tokens]
    mask = layer.mask_token
    if kind == "integer_lookup" and mask is not None:
        mask = int(mask)
    elif isinstance(mask, bytes):
        mask = mask.decode("utf-8")
    options = {"tokens": tokens, "mask_token": mask, "num_oov_indices": int(layer.num_oov_indices)}
    return options, int(layer.vocabulary_size())


class GraphConverter:
    """Builds one Keras 3 functional model out of Keras 2 layer calls (see the module docstring)."""

    def __init__(self):
        self._conversions = conversions()
        self._lookups = _lookup_classes()
        tfrs = sys.modules.get("tensorflow_recommenders")
        self._tfrs_mlp = tfrs.layers.blocks.MLP if tfrs is not None else None
        # Keyed by id(); the objects are kept in the values so that no id is reused meanwhile.
        self._converted: dict[int, tuple[Any, keras.layers.Layer]] = {}  # id(old) -> (old, new)
        self._names: set[str] = set()
        self._inputs: dict[str, Any] = {}
        self._encodings: list[FeatureEncoding] = []
        self._materialized: dict[tuple, Any] = {}
        self._features_of: dict[int, tuple[Any, list[FeatureEncoding]]] = {}  # id(tensor) -> (tensor, encodings)

    # ------------------------------------------------------------------ names and inputs

    def unique_name(self, name: str) -> str:
        """``name``, or ``name_2``, ``name_3``, ... if taken (Keras 3 wants unique layer names)."""
        candidate, n = name, 1
        while candidate in self._names:
            n += 1
            candidate = f"{name}_{n}"
        self._names.add(candidate)
        return candidate

    def _materialize(self, raw: RawInput, key, kind: str, dtype: str, reader, **encoding) -> Any:
        """Keras 3 ``(batch, 1)`` inputs for ``raw`` (one per column), shaped back like ``raw``."""
        if key in self._materialized:
            return self._materialized[key]
        columns = [None] if len(raw.shape) == 0 or raw.shape == (1,) else list(range(raw.shape[0]))

        def taken(base: str) -> bool:  # the input names it would give are a layer's (Ranking's "dense" MLP)
            return any((base if column is None else f"{base}_{column}") in self._names for column in columns)

        base = raw.name if not taken(raw.name) else f"{raw.name}_{feature_name(reader.name)}"
        tensors, encodings = [], []
        for column in columns:
            name = self.unique_name(base if column is None else f"{base}_{column}")
            tensors.append(keras.Input(shape=(1,), dtype=dtype, name=name))
            self._inputs[name] = tensors[-1]
            encodings.append(FeatureEncoding(name, raw.source, column, kind, dtype, raw_kind=raw.kind, **encoding))
        self._encodings.extend(encodings)
        if len(tensors) > 1:
            value = keras.layers.Concatenate(axis=-1, name=self.unique_name(f"{base}_columns"))(tensors)
        elif raw.shape == ():
            value = keras.layers.Reshape((), name=self.unique_name(f"{base}_squeeze"))(tensors[0])
        else:
            value = tensors[0]
        self._features_of[id(value)] = (value, encodings)
        self._materialized[key] = value
        return value

    def _input_for(self, raw: RawInput, reader) -> Any:
        """``raw`` as read by the non-lookup layer ``reader``: float values, or ids for an ``Embedding``."""
        import tf_keras

        if raw.kind == "float":
            return self._materialize(raw, (raw.source, "value"), "value", "float32", reader)
        if raw.kind == "int" and type(reader) is tf_keras.layers.Embedding:
            return self._materialize(raw, (raw.source, "value"), "value", "int32", reader,
                                     vocabulary_size=int(reader.input_dim), layer=reader.name)
        reads = "integer ids for an Embedding" if raw.kind == "int" else "lookup layers"
        raise UserError(
            f"Model input {'/'.join(raw.source)!r} ({raw.kind}) is read by layer {reader.name!r} "
            f"({class_label(reader)}); tfafm's models take {raw.kind} inputs only through {reads}."
        )

    def _lift_lookup(self, layer, value) -> Any:
        kind = self._lookups[type(layer)]
        if not isinstance(value, RawInput):
            raise unsupported(layer, "a lookup moves to the preprocessing sidecar only when it reads a model input "
                                     "directly")
        options, size = _lookup_options(layer, kind)
        return self._materialize(value, (value.source, id(layer)), kind, "int32", layer,
                                 vocabulary_size=size, options=options, layer=layer.name)

    # ------------------------------------------------------------------ layers

    def _new_layer(self, layer) -> tuple[keras.layers.Layer, bool]:
        """The Keras 3 twin of ``layer`` (made once, so shared layers stay shared) and whether it is new."""
        if id(layer) in self._converted:
            return self._converted[id(layer)][1], False
        conversion = self._conversions.get(type(layer))
        if conversion is None:
            raise unsupported(layer)
        new = conversion.build(layer, self.unique_name(feature_name(layer.name)))
        self._converted[id(layer)] = (layer, new)
        return new, True

    def apply(self, layer, args: tuple, kwargs: dict) -> Any:
        """Calls the Keras 3 equivalent of ``layer`` on converted arguments; returns its converted outputs."""
        import tensorflow as tf
        import tf_keras

        kwargs = {k: v for k, v in kwargs.items() if k not in _DROPPED_CALL_OPTIONS}
        if isinstance(layer, tf_keras.Sequential):
            value = args[0]
            for inner in layer.layers:
                value = self.apply(inner, (value,), {})
            return value
        if isinstance(layer, tf_keras.Model):
            if not getattr(layer, "_is_graph_network", False):
                raise UnsupportedLayerError(
                    f"Layer {layer.name!r} is a subclassed Keras 2 model ({type(layer).__name__}): its graph "
                    "cannot be read. Use Sequential or functional sub-models."
                )
            return self.run_functional(layer, _reference_order(layer, args[0]))
        if type(layer) is self._tfrs_mlp:
            value = args[0]
            for inner in layer._sublayers:
                value = self.apply(inner, (value,), {})
            return value
        if type(layer) in self._lookups:
            return self._lift_lookup(layer, args[0])
        new, first_call = self._new_layer(layer)
        args, kwargs = tf.nest.map_structure(
            lambda v: self._input_for(v, layer) if isinstance(v, RawInput) else v, (args, kwargs))
        outputs = new(*args, **kwargs)
        if first_call:
            self._conversions[type(layer)].copy(layer, new)
        if type(layer) is tf_keras.layers.Embedding and isinstance(args[0], keras.KerasTensor):
            for encoding in self._features_of.get(id(args[0]), (None, []))[1]:
                encoding.embedding_dim = int(layer.output_dim)
        return outputs

    def run_functional(self, model, values: list) -> Any:
        """Replays the graph of a Keras 2 functional ``model`` on converted ``values`` (one per input)."""
        import tensorflow as tf

        if len(values) != len(model.inputs):
            raise UserError(f"Model {model.name!r} takes {len(model.inputs)} inputs, got {len(values)}.")
        converted = {id(ref): value for ref, value in zip(model.inputs, values)}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.is_input or any(id(t) not in converted for t in node.keras_inputs):
                    continue
                args, kwargs = tf.nest.map_structure(
                    partial(_replace, converted, {id(t) for t in node.keras_inputs}),
                    (node.call_args, node.call_kwargs))
                outputs = self.apply(node.layer, tuple(args), dict(kwargs))
                for ref, value in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
                    converted[id(ref)] = value
        missing = [t.name for t in model.outputs if id(t) not in converted]
        if missing:
            raise UserError(f"Model {model.name!r}: outputs {missing} could not be computed from its inputs.")
        return tf.nest.pack_sequence_as(model._nested_outputs, [converted[id(t)] for t in model.outputs])

    # ------------------------------------------------------------------ result

    def build(self, outputs, name: str, raw_inputs: list[RawInput]) -> keras.Model:
        """The converted Keras 3 model; its ``raw_feature_encoder`` maps raw inputs to its inputs.

        The encoder lists features in the order of ``raw_inputs`` (the original inputs), columns in order.
        """
        if not self._inputs:
            raise UserError(f"Model {name!r} reads none of its inputs.")
        rank = {raw.source: i for i, raw in enumerate(raw_inputs)}
        encodings = sorted(self._encodings, key=lambda f: (rank.get(f.source, len(rank)), f.column or 0))
        model = keras.Model(inputs={f.name: self._inputs[f.name] for f in encodings}, outputs=outputs, name=name)
        model.raw_feature_encoder = RawFeatureEncoder(encodings)
        return model


def _replace(converted: dict, keras_ids: set, value):
    """The converted value of a Keras 2 tensor of a node's call (other arguments unchanged)."""
    return converted[id(value)] if id(value) in keras_ids else value


def _reference_order(model, value) -> list:
    """``value`` (what a nested Keras 2 functional model is called with) as a list in ``model.inputs`` order."""
    import tensorflow as tf

    if isinstance(value, dict) and getattr(model, "_enable_dict_to_input_mapping", False):
        nested = model._nested_inputs
        if isinstance(nested, dict):
            names = sorted(nested)
        else:
            names = [t._keras_history.layer.name for t in tf.nest.flatten(nested)]
        if all(n in value for n in names):
            return [value[n] for n in names]
    return tf.nest.flatten(value)


def schema_of(encoder: RawFeatureEncoder) -> Schema:
    """The :class:`~tfafm.Schema` of a converted model's inputs, in input order."""
    return Schema(
        SparseFeature(f.name, f.vocabulary_size, f.embedding_dim or 16) if f.dtype == "int32"
        else DenseFeature(f.name)
        for f in encoder.features
    )
