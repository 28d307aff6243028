"""``from_tfrs_ranking``: TensorFlow Recommenders ranking models -> Keras 3 functional models."""

from __future__ import annotations

import keras

from tfafm.errors import UnsupportedLayerError, UserError
from tfafm.interop.graph import GraphConverter, RawInput, feature_name, raw_input_for
from tfafm.interop.keras2 import LEGACY_KERAS_HINT, check_keras2_model, from_keras2, require_tf_keras


def _tfrs():
    require_tf_keras()
    try:
        import tensorflow_recommenders as tfrs
    except ImportError as error:
        raise UserError(f"Cannot import tensorflow_recommenders ({error}). {LEGACY_KERAS_HINT}.") from None
    return tfrs


def from_tfrs_ranking(model, attribute: str = "ranking_model") -> keras.Model:
    """Converts a TFRS ranking model into a Keras 3 functional model (as :func:`~tfafm.interop.from_keras2`).

    Two shapes are understood:

    * ``tfrs.experimental.models.Ranking`` (DLRM / DCN): its embedding layer
      (a ``PartialTPUEmbedding`` holding Keras embeddings only, or a Keras 2
      functional model from a dict of sparse features to embeddings), bottom
      stack, feature interaction (``DotInteraction``, ``Cross`` or a
      Sequential of supported layers) and top stack. The converted model takes
      ``dense_0 .. dense_{n-1}`` (the columns of ``dense_features``) and one id
      input per sparse feature (its key, or ``sparse_KEY`` when the key is not
      a name); ``raw_feature_encoder.encode`` takes the Ranking model's own
      ``{"dense_features": ..., "sparse_features": {...}}`` dict. It returns
      the top stack's ``(batch, 1)`` output, where Ranking reshapes it to
      ``(batch,)``.
    * any ``tfrs.Model`` whose ranking network is a Keras 2 Sequential or
      functional model in the attribute ``attribute`` (as in the TFRS ranking
      tutorials); that network is converted.

    Raises:
        UserError: TensorFlow Recommenders cannot be imported (it needs
            ``TF_USE_LEGACY_KERAS=1``), the attribute is missing, or the model
            was never built.
        UnsupportedLayerError: a part without an exact Keras 3 equivalent.
    """
    tfrs = _tfrs()
    if isinstance(model, tfrs.experimental.models.Ranking):
        return _convert_ranking(model, tfrs)
    if not isinstance(model, tfrs.models.Model):
        raise UserError(f"Expected a tfrs.Model, got {type(model).__name__}.")
    network = getattr(model, attribute, None)
    if network is None:
        tf_keras = require_tf_keras()
        found = sorted(name for name, value in vars(model).items()
                       if isinstance(value, tf_keras.Model) and not name.startswith("_"))
        raise UserError(
            f"TFRS model {model.name!r} has no attribute {attribute!r}; its Keras models are in "
            f"{found or 'no public attribute'}: pass attribute=NAME."
        )
    check_keras2_model(network, what=f"attribute {attribute!r}")
    converted = from_keras2(network)
    _check_call_is_the_network(model, network, attribute, converted.raw_feature_encoder.sample(256, 0))
    return converted


def _check_call_is_the_network(model, network, attribute: str, raw) -> None:
    """Refuses a TFRS model whose own ``call`` gives other values than the network converted (a sigmoid
    or another step around it): only the network would be served. A model without a ``call`` of its
    own (it trains through ``compute_loss`` only) passes."""
    import numpy as np
    import tensorflow as tf

    try:
        whole = model(raw, training=False)
    except Exception:  # noqa: BLE001 -- no call of its own, or one taking other features: nothing to compare
        return
    part = network(raw, training=False)
    whole, part = tf.nest.flatten(whole), tf.nest.flatten(part)
    if len(whole) != len(part) or any(np.size(w) != np.size(p) for w, p in zip(whole, part)):
        raise UnsupportedLayerError(f"TFRS model {model.name!r}: its call returns other outputs than {attribute!r}, "
                                    f"the network converted; move what its call adds into that network.")
    difference = max(float(np.max(np.abs(np.ravel(w) - np.ravel(p)))) for w, p in zip(whole, part))
    if difference > _CALL_TOLERANCE:
        raise UnsupportedLayerError(
            f"TFRS model {model.name!r}: its call computes other values than {attribute!r}, the network converted "
            f"(max abs difference {difference:.3g} on {len(np.ravel(part[0]))} sampled rows: an activation or "
            "another step around it?); only that network would be served: move the step into it.")


_CALL_TOLERANCE = 1e-5


def _squeezed(converter: GraphConverter, tensor, name: str):
    """``tensor`` without its size-1 non-batch axes (what ``tf.squeeze`` does to Ranking's embeddings)."""
    shape = tuple(tensor.shape[1:])
    target = tuple(d for d in shape if d != 1)
    if target == shape:
        return tensor
    return keras.layers.Reshape(target, name=converter.unique_name(f"{name}_squeeze"))(tensor)


def _sparse_name(key: str) -> str:
    return key if key.isidentifier() else f"sparse_{feature_name(key)}"


def _sparse_embeddings(converter: GraphConverter, layer, tfrs) -> tuple[list, list[RawInput]]:
    """The embedded sparse features, in the order ``tf.nest.flatten`` gives Ranking (sorted keys), and their inputs."""
    import tensorflow as tf

    tf_keras = require_tf_keras()
    if isinstance(layer, tfrs.experimental.layers.embedding.PartialTPUEmbedding):
        if layer.tpu_embedding is not None:
            raise UnsupportedLayerError(
                f"Embedding layer {layer.name!r} (PartialTPUEmbedding) holds TPU embedding tables; "
                "only its Keras embeddings convert (size_threshold=None)."
            )
        tables = layer.keras_embedding_layers
        raws = [RawInput(("sparse_features", key), _sparse_name(key), "int", ()) for key in sorted(tables)]
        embedded = {raw.source[-1]: converter.apply(tables[raw.source[-1]], (raw,), {}) for raw in raws}
    elif isinstance(layer, tf_keras.Model):
        check_keras2_model(layer, what="embedding layer")
        nested = layer._nested_inputs
        if not isinstance(nested, dict):
            raise UnsupportedLayerError(
                f"Embedding model {layer.name!r} must take a dict of sparse features, as Ranking passes it."
            )
        raws = [raw_input_for(nested[key], ("sparse_features", key)) for key in sorted(nested)]
        raws = [RawInput(r.source, _sparse_name(r.source[-1]), r.kind, r.shape) for r in raws]
        embedded = converter.run_functional(layer, raws)
    else:
        raise UnsupportedLayerError(
            f"Embedding layer {layer.name!r} ({type(layer).__name__}) is not supported: use a "
            "PartialTPUEmbedding with Keras tables or a Keras 2 functional model."
        )
    flat = tf.nest.flatten(embedded)
    return [_squeezed(converter, t, f"embedding_{i}") for i, t in enumerate(flat)], raws


def _convert_ranking(model, tfrs) -> keras.Model:
    bottom = model._bottom_stack
    shape = getattr(bottom, "_build_input_shape", None)
    if not model.built or shape is None:
        raise UserError(f"Ranking model {model.name!r} was never called: fit it or call it once before converting.")
    width = int(shape[-1])
    converter = GraphConverter()
    embedded, sparse = _sparse_embeddings(converter, model._embedding_layer, tfrs)
    dense = RawInput(("dense_features",), "dense", "float", (width,) if width > 1 else (1,))
    dense_vector = converter.apply(bottom, (dense,), {})
    interaction = converter.apply(model._feature_interaction, (embedded + [dense_vector],), {})
    if model._concat_dense:
        interaction = keras.layers.Concatenate(axis=1, name=converter.unique_name("concat_dense"))(
            [dense_vector, interaction])
    return converter.build(converter.apply(model._top_stack, (interaction,), {}), model.name, [dense, *sparse])
