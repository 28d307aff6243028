"""The serving interface every export shares, and its self-description.

Each model input becomes a named signature input with a dynamic batch
dimension (the name is the model's input key for dict inputs, else the input
tensor's name): for tfafm's zoo that is one ``(batch, 1)`` input per feature,
int32 ids for sparse features and float32 for dense ones. Outputs are named:
``prediction`` for a single-output model, the dict keys or output layer
names otherwise.

An :class:`Interface` describes these inputs and outputs, plus each integer
input's vocabulary size (from a :class:`~tfafm.schema.Schema` when given,
else read off the ``Embedding`` layer the input feeds), so a ``.tflite``
file can carry it (:mod:`tfafm.export.litert_export` stores it as metadata) and a
benchmark or an app needs nothing beside the file.
"""

from __future__ import annotations

import dataclasses
import json
import keyword
import re
from typing import Any, Mapping

import numpy as np

from tfafm.errors import UserError

OUTPUT_NAME = "prediction"
INTERFACE_VERSION = 1
_DTYPES = ("int32", "int64", "float32", "string")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: name, dtype, shape without the batch axis, vocabulary size for ids."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    vocabulary_size: int | None = None

    @property
    def sparse(self) -> bool:
        return self.dtype.startswith("int")


@dataclasses.dataclass(frozen=True)
class Interface:
    """Inputs and output names of an exported model (see the module docstring)."""

    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "format": "tfafm-interface",
            "version": INTERFACE_VERSION,
            "inputs": [dict(dataclasses.asdict(spec), shape=list(spec.shape)) for spec in self.inputs],
            "outputs": list(self.outputs),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, config: Mapping) -> "Interface":
        if config.get("format") != "tfafm-interface":
            raise UserError("Not a tfafm interface description.")
        inputs = tuple(InputSpec(i["name"], i["dtype"], tuple(i["shape"]), i.get("vocabulary_size"))
                       for i in config["inputs"])
        return cls(inputs, tuple(config["outputs"]))

    @classmethod
    def from_schema(cls, schema) -> "Interface":
        """The interface of a tfafm zoo model built for ``schema``."""
        inputs = tuple(
            InputSpec(f.name, "int32", (1,), f.vocabulary_size) if f in schema.sparse
            else InputSpec(f.name, "float32", (1,))
            for f in schema.features
        )
        return cls(inputs, (OUTPUT_NAME,))


def _flat_outputs(model) -> list[str]:
    from tfafm.graph import output_names, output_structure

    names = output_names(model)
    return [OUTPUT_NAME] if len(names) == 1 and not isinstance(output_structure(model), dict) else names


def interface(model, schema=None, vocabularies: bool = True) -> Interface:
    """The serving interface of ``model`` (vocabulary sizes from ``schema`` or read off the
    model, unless ``vocabularies=False``).

    Raises:
        UserError: for an input without a batch axis or of an unsupported dtype.
    """
    from tfafm.graph import input_names

    vocabularies = _vocabularies(model) if vocabularies else {}
    if schema is not None:
        vocabularies.update({f.name: f.vocabulary_size for f in schema.sparse})
    specs = []
    for name, tensor in zip(input_names(model), model.inputs):
        dtype, shape = str(tensor.dtype), tuple(tensor.shape)
        if not shape:
            raise UserError(f"Model {model.name!r} input {name!r} is a scalar; exports need a batch axis.")
        if dtype not in _DTYPES:
            raise UserError(f"Model {model.name!r} input {name!r} has dtype {dtype}; exports take {_DTYPES} "
                            "(do other conversions before the model).")
        if any(d is None for d in shape[1:]):
            raise UserError(f"Model {model.name!r} input {name!r} has shape {shape}; exports need every axis "
                            "but the batch one fixed.")
        specs.append(InputSpec(name, dtype, tuple(int(d) for d in shape[1:]),
                               vocabularies.get(name) if dtype.startswith("int") else None))
    return Interface(tuple(specs), tuple(_flat_outputs(model)))


def _vocabularies(model) -> dict[str, int]:
    """Vocabulary size of each integer input: the table or encoding its ids index."""
    from tfafm.compression.samples import input_domains

    return {name: domain.high for name, domain in input_domains(model).items() if domain.high is not None}


# Input names each format carries as they are (others are renamed in its graph or signature, and an app
# feeding the documented names fails): SavedModel signature arguments are Python parameter names that
# TensorFlow keeps (no leading '_', no keyword, not 'self'); ONNX graph inputs are TensorFlow op names.
# Neither tells two names apart by case alone.
_NAME_RULES = {
    "saved_model": ("a SavedModel signature", re.compile(r"[A-Za-z][A-Za-z0-9_]*"),
                    "ASCII letters, digits and '_', a letter first, not a Python keyword or 'self'"),
    "onnx": ("an ONNX graph", re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-/>]*"),
             "ASCII letters, digits, '_', '.', '-', '/' and '>', a letter, digit or '.' first"),
}


def check_input_names(model, export_format: str) -> None:
    """Refuses, naming the input, a model whose input names an ``export_format`` file (``"saved_model"``,
    ``"onnx"``) would not keep as they are (LiteRT signatures keep any name)."""
    label, pattern, allowed = _NAME_RULES[export_format]
    names = [spec.name for spec in interface(model, vocabularies=False).inputs]
    for name in names:
        if not pattern.fullmatch(name) or export_format == "saved_model" and (keyword.iskeyword(name)
                                                                               or name == "self"):
            raise UserError(f"Model {model.name!r}: input {name!r} cannot keep its name in {label} ({allowed}): "
                            "rename its keras.Input (a LiteRT file keeps it).")
    first: dict[str, str] = {}
    for name in names:
        other = first.setdefault(name.lower(), name)
        if other != name:
            raise UserError(f"Model {model.name!r}: inputs {other!r} and {name!r} differ only by case, which "
                            f"{label} does not tell apart: rename one (a LiteRT file keeps both).")


def tensor_specs(model) -> dict[str, Any]:
    """``{name: tf.TensorSpec((None, *shape), dtype, name=name)}`` per model input, in order."""
    import tensorflow as tf

    return {spec.name: tf.TensorSpec((None, *spec.shape), tf.as_dtype(spec.dtype), name=spec.name)
            for spec in interface(model, vocabularies=False).inputs}


def _named_outputs(model, outputs) -> dict:
    import keras

    if isinstance(outputs, dict):
        return dict(outputs)
    names = _flat_outputs(model)
    return dict(zip(names, keras.tree.flatten(outputs)))


def serving_function(model):
    """A ``tf.function`` taking a dict of input tensors, returning a dict of named outputs."""
    import tensorflow as tf

    from tfafm.graph import pack_inputs

    specs = tensor_specs(model)

    @tf.function(input_signature=[specs], autograph=False)
    def serve(inputs):
        flat = [inputs[name] for name in specs]
        return _named_outputs(model, model(pack_inputs(model, flat), training=False))

    return serve


def positional_function(model):
    """Like :func:`serving_function` but with one positional argument per input (for tf2onnx)."""
    import tensorflow as tf

    from tfafm.graph import pack_inputs

    specs = list(tensor_specs(model).values())

    def serve(*args):
        return _named_outputs(model, model(pack_inputs(model, list(args)), training=False))

    return tf.function(serve, input_signature=specs, autograph=False), specs


def as_batch(features: Mapping, inputs: tuple[InputSpec, ...]) -> dict[str, np.ndarray]:
    """Casts a feature dict to the exported dtypes and shapes ``(batch, *shape)``; checks names."""
    missing = [spec.name for spec in inputs if spec.name not in features]
    if missing:
        raise UserError(f"Features missing from the batch: {missing}.")
    batch = {}
    for spec in inputs:
        array = np.asarray(features[spec.name])
        dtype = object if spec.dtype == "string" else spec.dtype
        batch[spec.name] = array.reshape((len(array), *spec.shape)).astype(dtype, copy=False)
    return batch
