"""``from_keras2``: a Keras 2 (``tf_keras``) Sequential or functional model -> a Keras 3 functional model."""

from __future__ import annotations

import json
import os
import sys
import zipfile

import keras

from tfafm.errors import MissingFileError, UnsupportedLayerError, UserError
from tfafm.interop.graph import GraphConverter, raw_input_for

_LEGACY_KERAS_HOW = ("set TF_USE_LEGACY_KERAS=1 before TensorFlow is imported "
                     "(e.g. `TF_USE_LEGACY_KERAS=1 python your_script.py`)")
LEGACY_KERAS_HINT = f"TensorFlow Recommenders needs Keras 2: {_LEGACY_KERAS_HOW}"


def require_tf_keras():
    """Imports ``tf_keras`` or says how to install it."""
    try:
        import tf_keras
    except ImportError:
        raise UserError("Converting Keras 2 models needs tf-keras: pip install 'tfafm[interop]'.") from None
    return tf_keras


def import_tfrs_if_available() -> None:
    """Imports TensorFlow Recommenders (registering its layers) when this process can."""
    try:
        import tensorflow_recommenders  # noqa: F401
    except ImportError:
        pass


def _keras_file_version(path: str) -> str | None:
    """The ``keras_version`` a ``.keras`` zip file was written by, if it says."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("metadata.json")).get("keras_version")
    except (zipfile.BadZipFile, KeyError, ValueError):
        return None


def load_keras2(path: str):
    """Loads a Keras 2 model from a ``.h5`` file, a ``.keras`` file or a SavedModel directory.

    Raises:
        MissingFileError: nothing at ``path``.
        UserError: a Keras 3 file, or a file Keras 2 cannot load (the message
            says how to fix the TensorFlow Recommenders case).
    """
    tf_keras = require_tf_keras()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"No Keras 2 model at {path}.")
    version = _keras_file_version(path) if os.path.isfile(path) and path.endswith(".keras") else None
    if version is not None and version.startswith("3."):
        raise UserError(f"{path} was saved by Keras {version}, not Keras 2: compress it with tfafm directly.")
    import_tfrs_if_available()
    import tensorflow as tf

    try:
        return tf_keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError, ImportError, tf.errors.OpError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "tensorflow_recommenders" not in sys.modules:  # its layers load only under Keras 2
            what = "it is a TensorFlow Recommenders layer" if "Unknown layer" in message else \
                "the model holds TensorFlow Recommenders layers"
            message = f"{message.split('. ')[0]}. If {what}: {_LEGACY_KERAS_HOW}"
        raise UserError(f"Cannot load {path} as a Keras 2 model: {message}") from error


def _input_sources(model) -> list[tuple[str, ...]]:
    """Each input's key in what the model is called with: its dict key, else its ``Input`` layer's name."""
    nested = model._nested_inputs
    if isinstance(nested, dict):
        return [(str(key),) for key in sorted(nested)]
    return [(t._keras_history.layer.name,) for t in model.inputs]


def check_keras2_model(model, what: str = "model") -> None:
    """Raises a clear error unless ``model`` is a Keras 2 Sequential or functional model."""
    tf_keras = require_tf_keras()
    if isinstance(model, keras.Model):
        raise UserError(f"{what.capitalize()} {model.name!r} is already a Keras 3 model: use tfafm.compress on it directly.")
    if not isinstance(model, tf_keras.Model):
        raise UserError(f"Expected a Keras 2 (tf_keras) model as {what}, got {type(model).__name__}.")
    if not getattr(model, "_is_graph_network", False):
        hint = ("build that network as a functional or Sequential model" if what.startswith("attribute") else
                "for TFRS models use tfafm.interop.from_tfrs_ranking")
        detail = ("a Sequential model without a known input shape: build it (call it once, or start it with "
                  "an Input)" if isinstance(model, tf_keras.Sequential) else
                  f"a subclassed model ({type(model).__name__}): its graph cannot be read; {hint}")
        subject = what.capitalize() if repr(model.name) in what else f"{what.capitalize()} {model.name!r}"
        raise UnsupportedLayerError(f"{subject} is {detail}.")


def from_keras2(model_or_path) -> keras.Model:
    """Converts a Keras 2 Sequential or functional model into an equivalent Keras 3 functional model.

    Args:
        model_or_path: a ``tf_keras`` model in memory, or the path of a Keras 2
            ``.h5`` / ``.keras`` file or SavedModel directory.

    Returns:
        A Keras 3 functional model with the same weights (see
        :data:`tfafm.interop.layers.SUPPORTED_LAYERS` for the layers it
        converts) that takes one named ``(batch, 1)`` input per feature: int32
        ids or float32 values. ``StringLookup`` / ``IntegerLookup`` /
        ``Hashing`` layers are not in it: ``model.raw_feature_encoder`` (a
        :class:`~tfafm.interop.RawFeatureEncoder`) maps the original raw
        inputs to the new ones exactly as those layers did, and
        :func:`tfafm.interop.schema_of` gives the model's schema.

    Raises:
        UnsupportedLayerError: a layer without an exact Keras 3 equivalent
            (the message names the layer, its class and the supported ones).
        UserError: not a Keras 2 graph model, or an input tfafm cannot take.
    """
    model = load_keras2(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    check_keras2_model(model)
    converter = GraphConverter()
    raws = [raw_input_for(t, source) for t, source in zip(model.inputs, _input_sources(model))]
    return converter.build(converter.run_functional(model, raws), model.name, raws)
