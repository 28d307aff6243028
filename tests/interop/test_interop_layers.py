"""Layer conversions against numpy, and the errors for what cannot be converted."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as k2
from interop_checks import PARITY, max_difference

from tfafm.errors import UnsupportedLayerError, UserError
from tfafm.interop import from_keras2


def _cross_reference(x, w_layers, bias, diag_scale, activation):
    """``x0 * (act(x W + b) + diag_scale * x) + x`` for a single cross layer (x0 = x)."""
    projected = x
    for kernel in w_layers:
        projected = projected @ kernel
    inner = activation(projected + bias) + diag_scale * x
    return x * inner + x


@pytest.mark.parametrize("projection_dim, use_bias, diag_scale, preactivation", [
    (None, True, 0.0, None), (3, True, 0.5, "relu"), (None, False, 0.25, None),
])
def test_cross_becomes_feature_cross_with_the_same_math(projection_dim, use_bias, diag_scale, preactivation):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    inputs = k2.Input(shape=(8,), name="x")
    cross = tfrs.layers.dcn.Cross(projection_dim=projection_dim, use_bias=use_bias, diag_scale=diag_scale,
                                  preactivation=preactivation, bias_initializer="random_normal", name="cross")
    original = k2.Model(inputs, k2.layers.Dense(1, name="out")(cross(inputs)))
    converted = from_keras2(original)
    new_cross = converted.get_layer("cross")
    assert type(new_cross).__name__ == "FeatureCross" and new_cross.projection_dim == projection_dim
    assert new_cross.use_bias == use_bias and new_cross.diag_scale == diag_scale

    kernels = [cross._dense.kernel.numpy()] if projection_dim is None else [cross._dense_u.kernel.numpy(),
                                                                           cross._dense_v.kernel.numpy()]
    bias_layer = cross._dense if projection_dim is None else cross._dense_v
    bias = bias_layer.bias.numpy() if use_bias else 0.0
    activation = (lambda v: np.maximum(v, 0.0)) if preactivation == "relu" else (lambda v: v)
    expected_cross = _cross_reference(x.astype(np.float64), kernels, bias, diag_scale, activation)
    head = original.get_layer("out")
    expected = expected_cross @ head.kernel.numpy() + head.bias.numpy()
    assert max_difference(original.predict(x, verbose=0), expected) < PARITY
    assert max_difference(converted.predict(converted.raw_feature_encoder.encode({"x": x}), verbose=0),
                          expected) < PARITY


def _pairs_reference(vectors, self_interaction, skip_gather):
    """Lower triangle of the Gram matrix, row by row (diagonal included with ``self_interaction``)."""
    gram = np.einsum("bik,bjk->bij", vectors, vectors)
    n = vectors.shape[1]
    keep = np.tril(np.ones((n, n), bool), k=0 if self_interaction else -1)
    if skip_gather:
        return (gram * keep).reshape(len(vectors), n * n)
    return gram[:, keep]


@pytest.mark.parametrize("self_interaction", [False, True])
@pytest.mark.parametrize("skip_gather", [False, True])
def test_dot_interaction_keeps_pairs_and_their_order(self_interaction, skip_gather):
    rng = np.random.default_rng(1)
    names = ["a", "b", "c", "d"]
    values = {name: rng.normal(size=(32, 5)).astype(np.float32) for name in names}
    inputs = [k2.Input(shape=(5,), name=name) for name in names]
    layer = tfrs.layers.feature_interaction.DotInteraction(self_interaction=self_interaction,
                                                            skip_gather=skip_gather, name="pairs")
    original = k2.Model(inputs, layer(inputs))
    converted = from_keras2(original)
    expected = _pairs_reference(np.stack([values[n] for n in names], axis=1).astype(np.float64),
                                self_interaction, skip_gather)
    encoded = converted.raw_feature_encoder.encode(values)
    assert max_difference(original.predict([values[n] for n in names], verbose=0), expected) < PARITY
    assert max_difference(converted.predict(encoded, verbose=0), expected) < PARITY


def test_an_unsupported_layer_is_named_with_its_class_and_the_supported_ones():
    inputs = k2.Input(shape=(12,), name="sequence")
    hidden = k2.layers.LSTM(4, name="history_lstm")(k2.layers.Reshape((4, 3))(inputs))
    model = k2.Model(inputs, k2.layers.Dense(1)(hidden))
    with pytest.raises(UnsupportedLayerError) as error:
        from_keras2(model)
    message = str(error.value)
    assert "'history_lstm' (LSTM)" in message and "Dense" in message and "tfrs Cross" in message
    assert "StringLookup" in message and "\n" not in message


def test_an_activation_keras_3_computes_otherwise_is_refused():
    """Keras 2's hard_sigmoid is clip(0.2 x + 0.5), Keras 3's clip(x / 6 + 0.5): converted by name, a model ending
    in it predicted up to 0.12 off, without a word (the command line's parity check raised a RuntimeError)."""
    inputs = k2.Input(shape=(3,), name="x")
    for output in (k2.layers.Dense(1, activation="hard_sigmoid", name="ctr")(inputs),
                   k2.layers.Activation("hard_sigmoid", name="squash")(k2.layers.Dense(1)(inputs))):
        with pytest.raises(UnsupportedLayerError, match=r"activation 'hard_sigmoid' computes clip\(0.2 x \+ 0.5"):
            from_keras2(k2.Model(inputs, output))


def test_lambda_layers_and_tensorflow_operations_are_refused():
    inputs = k2.Input(shape=(3,), name="x")
    model = k2.Model(inputs, k2.layers.Lambda(lambda t: t * 2.0, name="double")(inputs))
    with pytest.raises(UnsupportedLayerError, match=r"'double' \(Lambda\)"):
        from_keras2(model)
    model = k2.Model(inputs, tf.concat([inputs, inputs], axis=1))
    with pytest.raises(UnsupportedLayerError, match=r"'tf.concat' \(TFOpLambda\): a TensorFlow operation"):
        from_keras2(model)


def test_a_lookup_inside_the_graph_cannot_move_to_the_sidecar():
    inputs = k2.Input(shape=(1,), dtype=tf.int64, name="code")
    shifted = k2.layers.IntegerLookup(vocabulary=[1, 2, 3], name="first")(inputs)
    again = k2.layers.IntegerLookup(vocabulary=[1, 2], name="second")(shifted)
    model = k2.Model(inputs, k2.layers.Embedding(4, 2)(again))
    with pytest.raises(UnsupportedLayerError, match="'second'.*reads a model input directly"):
        from_keras2(model)


def test_an_inverting_lookup_is_refused():
    inputs = k2.Input(shape=(1,), dtype=tf.int64, name="code")
    model = k2.Model(inputs, k2.layers.IntegerLookup(vocabulary=[5, 6], invert=True, name="back")(inputs))
    with pytest.raises(UnsupportedLayerError, match="'back'.*invert=True"):
        from_keras2(model)


def test_subclassed_and_keras3_models_are_refused_clearly():
    class Tower(k2.Model):
        def __init__(self):
            super().__init__()
            self.dense = k2.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    tower = Tower()
    tower(np.zeros((1, 2), np.float32))
    with pytest.raises(UnsupportedLayerError, match="subclassed model.*from_tfrs_ranking"):
        from_keras2(tower)
    keras3 = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(UserError, match="already a Keras 3 model"):
        from_keras2(keras3)


def test_shared_layers_stay_shared_and_nested_models_are_inlined():
    inputs = {name: k2.Input(shape=(1,), dtype=tf.int64, name=name) for name in ("left", "right")}
    table = k2.layers.Embedding(10, 4, name="shared_table")
    tower = k2.Sequential([k2.layers.Flatten(), k2.layers.Dense(3, activation="relu")], name="tower")
    merged = k2.layers.Concatenate()([tower(table(inputs["left"])), tower(table(inputs["right"]))])
    original = k2.Model(inputs, k2.layers.Dense(1)(merged))
    converted = from_keras2(original)
    assert original.count_params() == converted.count_params()
    raw = {"left": np.arange(10).reshape(-1, 1), "right": np.arange(10)[::-1].reshape(-1, 1)}
    assert max_difference(original.predict(raw, verbose=0),
                          converted.predict(converted.raw_feature_encoder.encode(raw), verbose=0)) < PARITY
