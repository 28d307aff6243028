"""One Keras 2 (``tf_keras``) or TFRS layer -> its Keras 3 equivalent, weights included.

Each supported layer class maps to a builder that makes the Keras 3 layer from
the old layer's configuration, and to a weight copy run once the new layer is
built. Classes are matched exactly (a subclass may override ``call``, so it is
not assumed to compute the same thing).
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, Callable, NamedTuple

import keras
import numpy as np

from tfafm.errors import UnsupportedLayerError
from tfafm.layers.lookup import InRangeEmbedding

# Shown in error messages: every layer class from_keras2 accepts.
SUPPORTED_LAYERS = (
    "Dense", "Embedding", "BatchNormalization", "Dropout", "Concatenate", "Flatten", "Reshape", "Add",
    "Multiply", "Activation", "Normalization", "tfrs Cross", "tfrs DotInteraction", "tfrs MLP",
    "nested Sequential/functional models",
    "StringLookup / IntegerLookup / Hashing on a model input (moved to the preprocessing sidecar)",
)

# Options of Keras 2 layers that Keras 3 lacks, with the value that makes dropping them exact
# (shape-only options such as Embedding's input_length are dropped whatever their value).
_DROPPED_OPTIONS = {
    "Embedding": {"sparse": False},
    "BatchNormalization": {"renorm": False, "virtual_batch_size": None, "adjustment": None, "fused": None,
                           "synchronized": False},
}


def class_label(layer) -> str:
    """``'Dense'`` for Keras layers, ``'tfrs Cross'`` for TFRS ones: how messages name a class."""
    cls = type(layer)
    return f"tfrs {cls.__name__}" if cls.__module__.startswith("tensorflow_recommenders") else cls.__name__


def unsupported(layer, why: str | None = None) -> UnsupportedLayerError:
    """The error for a layer ``from_keras2`` cannot convert, listing what it can."""
    if why is None and type(layer).__name__ in ("TFOpLambda", "SlicingOpLambda"):
        why = "a TensorFlow operation applied to a tensor is not converted; use the Keras layer that does the same"
    reason = why or "this layer class is not supported"
    if class_label(layer).startswith("Custom>") and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        reason += ("; a layer saved as 'Custom>' (TensorFlow Recommenders' among them) loads as itself only under "
                   "Keras 2: set TF_USE_LEGACY_KERAS=1 before TensorFlow is imported")
    return UnsupportedLayerError(
        f"Layer {layer.name!r} ({class_label(layer)}): {reason}. tfafm.interop converts: "
        f"{', '.join(SUPPORTED_LAYERS)}."
    )


class Conversion(NamedTuple):
    """How to rebuild one layer class: ``build(old, name) -> new``, then ``copy(old, new)`` once built."""

    build: Callable[[Any, str], keras.layers.Layer]
    copy: Callable[[Any, keras.layers.Layer], None]


def _plain_config(value):
    """Keras 2 configs hold ``ListWrapper``/tuples; Keras 3 wants plain lists, ints and dicts."""
    if isinstance(value, dict):
        return {k: _plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListWrapper":
        return [_plain_config(v) for v in value]
    return value


def _check_float32(old) -> None:
    policy = getattr(getattr(old, "dtype_policy", None), "name", "float32")
    if policy != "float32":
        raise unsupported(old, f"dtype policy {policy!r}; only float32 models convert exactly")


# Activations whose Keras 3 function of the same name computes something else.
_CHANGED_ACTIVATIONS = {
    "hard_sigmoid": "computes clip(0.2 x + 0.5, 0, 1) in Keras 2 and clip(x / 6 + 0.5, 0, 1) in Keras 3 (0.700 "
                    "against 0.667 at x = 1): the converted model would predict other values (for a Dense layer, its "
                    "kernel and bias times 1.2 under Keras 3's hard_sigmoid compute the same)",
}


def _activation_name(activation) -> str | None:
    """An activation of a layer config as its name (a string, or a serialized function)."""
    if isinstance(activation, dict):
        activation = activation.get("config", activation.get("class_name"))
    return activation if isinstance(activation, str) else None


def _from_config(new_class, old, name: str, rename: dict[str, str] | None = None, **overrides):
    """``new_class`` built from the options of ``old``'s config that it accepts."""
    _check_float32(old)
    config = _plain_config(old.get_config())
    for option, harmless in _DROPPED_OPTIONS.get(type(old).__name__, {}).items():
        if config.get(option) not in (harmless, None):
            raise unsupported(old, f"option {option}={config[option]!r} has no Keras 3 equivalent")
    if _activation_name(config.get("activation")) in _CHANGED_ACTIVATIONS:
        name_ = _activation_name(config["activation"])
        raise unsupported(old, f"activation {name_!r} {_CHANGED_ACTIVATIONS[name_]}")
    for old_key, new_key in (rename or {}).items():
        config[new_key] = config.pop(old_key)
    accepted = set(inspect.signature(new_class.__init__).parameters) | {"trainable"}
    options = {k: v for k, v in config.items() if k in accepted and k not in ("name", "dtype")}
    options.update(overrides)
    try:
        return new_class(name=name, **options)
    except (ValueError, TypeError) as error:
        raise unsupported(old, f"its configuration has no Keras 3 equivalent ({error})") from None


def _short_name(variable) -> str:
    return variable.name.split(":")[0].rsplit("/", 1)[-1]


def copy_weights(old, new) -> None:
    """Copies ``old``'s weights into ``new``, checking that names and shapes line up."""
    old_names = [(_short_name(w), tuple(w.shape)) for w in old.weights]
    new_names = [(_short_name(w), tuple(w.shape)) for w in new.weights]
    if old_names != new_names:
        raise RuntimeError(
            f"Converting layer {old.name!r}: Keras 2 weights {old_names} do not match Keras 3 weights {new_names}."
        )
    new.set_weights(old.get_weights())


def _batch_normalization(old, name):
    axis = _plain_config(old.get_config()["axis"])
    if isinstance(axis, list):
        if len(axis) != 1:
            raise unsupported(old, f"normalization over several axes {axis}")
        axis = axis[0]
    return _from_config(keras.layers.BatchNormalization, old, name, axis=axis)


def _normalization(old, name):
    """Keras 3 ``Normalization`` with the old layer's (adapted or given) mean and variance as constants."""
    _check_float32(old)
    if getattr(old, "mean", None) is None:
        raise unsupported(old, "it was never adapted nor given a mean and variance")
    mean, variance = np.asarray(old.mean, np.float64), np.asarray(old.variance, np.float64)
    keep = sorted(a % mean.ndim for a in old.axis)
    kept_shape = [mean.shape[d] for d in keep]
    return keras.layers.Normalization(
        axis=tuple(old.axis), mean=mean.reshape(kept_shape).tolist(),
        variance=variance.reshape(kept_shape).tolist(), invert=bool(old.invert), name=name,
    )


def _no_weights(old, new) -> None:
    if old.weights:
        raise RuntimeError(f"Layer {old.name!r} has weights the conversion does not copy.")


def _feature_cross(old, name):
    """TFRS ``Cross`` -> keras_rs ``FeatureCross``: the same ``x0 * (W x + b + diag_scale x) + x``."""
    import keras_rs

    _check_float32(old)
    config = old.get_config()
    return keras_rs.layers.FeatureCross(
        projection_dim=config["projection_dim"], diag_scale=config["diag_scale"], use_bias=config["use_bias"],
        pre_activation=config["preactivation"], kernel_initializer=config["kernel_initializer"],
        bias_initializer=config["bias_initializer"], kernel_regularizer=config["kernel_regularizer"],
        bias_regularizer=config["bias_regularizer"], trainable=config["trainable"], name=name,
    )


def _copy_feature_cross(old, new) -> None:
    # TFRS: _dense (full rank) or _dense_u (no bias) then _dense_v; keras_rs: [down_proj_dense,] dense.
    if old._projection_dim is None:
        copy_weights(old._dense, new.dense)
    else:
        copy_weights(old._dense_u, new.down_proj_dense)
        copy_weights(old._dense_v, new.dense)


def _dot_interaction(old, name):
    """TFRS ``DotInteraction`` -> keras_rs ``DotInteraction``: same pairs, same row-major lower-triangle order."""
    import keras_rs

    _check_float32(old)
    return keras_rs.layers.DotInteraction(
        self_interaction=bool(old._self_interaction), skip_gather=bool(old._skip_gather),
        trainable=old.trainable, name=name,
    )


def _same_class(new_class) -> Callable:
    return lambda old, name: _from_config(new_class, old, name)


def conversions() -> dict[type, Conversion]:
    """Supported Keras 2 / TFRS layer classes -> how to convert them (TFRS ones only when it is imported)."""
    import tf_keras

    old, new = tf_keras.layers, keras.layers
    table = {
        old.Dense: Conversion(_same_class(new.Dense), copy_weights),
        # Ids come from the sidecar, always in range: a plain gather, like Keras 2's lookup (no negative-id wrap).
        old.Embedding: Conversion(_same_class(InRangeEmbedding), copy_weights),
        old.BatchNormalization: Conversion(_batch_normalization, copy_weights),
        old.Normalization: Conversion(_normalization, lambda old, new: None),
    }
    for name in ("Dropout", "Concatenate", "Flatten", "Reshape", "Add", "Multiply", "Activation"):
        table[getattr(old, name)] = Conversion(_same_class(getattr(new, name)), _no_weights)
    tfrs = sys.modules.get("tensorflow_recommenders")
    if tfrs is not None:
        table[tfrs.layers.dcn.Cross] = Conversion(_feature_cross, _copy_feature_cross)
        table[tfrs.layers.feature_interaction.DotInteraction] = Conversion(_dot_interaction, _no_weights)
    return table
