"""BlockwiseDense and BlockwiseLowRankDense: the same functions as Dense and LowRankDense, computed block by block
(the keras-rs way: hand-computed outputs)."""

from __future__ import annotations

import numpy as np
import pytest

import keras

import tfafm  # noqa: F401  (registers the layers)
from tfafm.layers import BlockwiseDense, BlockwiseLowRankDense, LowRankDense


def test_ones_kernel_sums_each_block_once():
    layer = BlockwiseDense(2, blocks=[1, 2], kernel_initializer="ones", bias_initializer="zeros", activation="relu")
    x = np.array([[1.0, 2.0, 3.0], [-4.0, 1.0, 1.0]], dtype="float32")
    # 1 + 2 + 3 = 6 on both units; -4 + 1 + 1 = -2, cut to 0 by the relu.
    np.testing.assert_array_equal(layer(x).numpy(), [[6.0, 6.0], [0.0, 0.0]])


def test_same_output_as_dense_with_its_weights_over_fields():
    rng = np.random.default_rng(0)
    dense = keras.layers.Dense(5, activation="tanh")
    x = rng.normal(size=(4, 3, 7)).astype("float32")  # (batch, fields, features)
    expected = dense(x).numpy()
    blockwise = BlockwiseDense(5, blocks=[3, 4], activation="tanh")
    blockwise.build(x.shape)
    blockwise.set_weights(dense.get_weights())
    np.testing.assert_allclose(blockwise(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    kernel, bias = dense.get_weights()
    np.testing.assert_allclose(expected, np.tanh(x @ kernel + bias), rtol=1e-5, atol=1e-6)


def test_config_and_keras_file_round_trip(tmp_path):
    inputs = keras.Input((6,), name="x")
    model = keras.Model(inputs, BlockwiseDense(3, blocks=[2, 4], name="split", use_bias=False)(inputs))
    config = model.get_layer("split").get_config()
    assert config["blocks"] == [2, 4] and BlockwiseDense.from_config(config).get_config() == config
    path = str(tmp_path / "m.keras")
    model.save(path)
    x = np.random.default_rng(1).normal(size=(2, 6)).astype("float32")
    np.testing.assert_array_equal(keras.models.load_model(path)(x).numpy(), model(x).numpy())


def test_blocks_that_do_not_cover_the_input_are_refused_naming_the_layer():
    with pytest.raises(ValueError, match="'split': blocks \\[2, 2\\] sum to 4, the input has 5"):
        BlockwiseDense(3, blocks=[2, 2], name="split").build((None, 5))
    with pytest.raises(ValueError, match="positive block widths"):
        BlockwiseDense(3, blocks=[2, 0])


def test_low_rank_ones_factors_sum_each_block_once():
    layer = BlockwiseLowRankDense(3, rank=2, blocks=[2, 1], kernel_initializer="ones", bias_initializer="ones")
    x = np.array([[1.0, 2.0, 3.0]], dtype="float32")
    # Code: 1 + 2 + 3 + 1 = 7 on both; output: 7 + 7 + 1 = 15 on each of the 3 units.
    np.testing.assert_array_equal(layer(x).numpy(), [[15.0, 15.0, 15.0]])


def test_low_rank_same_output_as_low_rank_dense_with_its_weights(tmp_path):
    rng = np.random.default_rng(2)
    plain = LowRankDense(5, rank=3, activation="relu", inner_activation="tanh")
    x = rng.normal(size=(4, 7)).astype("float32")
    expected = plain(x).numpy()
    split = BlockwiseLowRankDense(5, rank=3, blocks=[4, 3], activation="relu", inner_activation="tanh")
    split.build(x.shape)
    split.set_weights(plain.get_weights())
    np.testing.assert_allclose(split(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    down, up, down_bias, up_bias = plain.get_weights()
    np.testing.assert_allclose(expected, np.maximum(np.tanh(x @ down + down_bias) @ up + up_bias, 0), rtol=1e-5,
                               atol=1e-6)
    inputs = keras.Input((7,), name="x")
    model = keras.Model(inputs, split(inputs))
    config = split.get_config()
    assert config["blocks"] == [4, 3] and BlockwiseLowRankDense.from_config(config).get_config() == config
    path = str(tmp_path / "low.keras")
    model.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path)(x).numpy(), model(x).numpy())
    with pytest.raises(ValueError, match="blocks \\[4, 4\\] sum to 8, the input has 7"):
        BlockwiseLowRankDense(5, rank=3, blocks=[4, 4], name="split").build((None, 7))
