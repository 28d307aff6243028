"""DotProductDense: a one-unit Dense as a product and a sum (hand-computed outputs, keras-rs style)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfafm.errors import UserError
from tfafm.layers import DotProductDense


def test_ones_weights_sum_the_features_plus_the_bias():
    layer = DotProductDense(1, kernel_initializer="ones", bias_initializer="ones")
    np.testing.assert_allclose(layer(np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]], "float32")).numpy(),
                               [[7.0], [4.0]])


def test_same_output_and_weights_as_dense():
    x = np.random.default_rng(0).normal(size=(5, 3, 7)).astype("float32")  # any leading axes, as Dense
    dense = keras.layers.Dense(1, activation="sigmoid")
    dense.build(x.shape)
    layer = DotProductDense.from_config(dense.get_config())
    layer.build(x.shape)
    layer.set_weights(dense.get_weights())
    assert [w.shape for w in layer.weights] == [w.shape for w in dense.weights]
    np.testing.assert_allclose(layer(x).numpy(), dense(x).numpy(), rtol=1e-5, atol=1e-6)
    no_bias = DotProductDense(1, use_bias=False, kernel_initializer="ones")
    np.testing.assert_allclose(no_bias(np.array([[2.0, 5.0]], "float32")).numpy(), [[7.0]])


def test_one_unit_only_and_config_round_trip(tmp_path):
    with pytest.raises(UserError, match="one unit"):
        DotProductDense(2)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, DotProductDense(1, name="logit")(inputs))
    path = str(tmp_path / "dot.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("logit")) is DotProductDense
    x = np.arange(8, dtype="float32").reshape(2, 4)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
