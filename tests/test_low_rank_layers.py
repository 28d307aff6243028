"""LowRankDense / LowRankEmbedding: config, saving, training, and factoring against numpy references."""

from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402  (tfafm sets the backend on import)

import tfafm
from tfafm import LayerStatistics, LowRankDense, LowRankEmbedding


def _stats_of(rows: np.ndarray) -> LayerStatistics:
    rows = np.asarray(rows, dtype=np.float64)
    return LayerStatistics(float(len(rows)), rows.sum(0), rows.T @ rows)


def _dense(rng, d_in=12, d_out=7, activation="relu"):
    layer = keras.layers.Dense(d_out, activation=activation, name="dense_under_test")
    layer.build((None, d_in))
    layer.set_weights([rng.normal(size=(d_in, d_out)).astype("float32"),
                       rng.normal(size=d_out).astype("float32")])
    return layer


def _embedding(rng, vocab=30, dim=6):
    layer = keras.layers.Embedding(vocab, dim, name="embedding_under_test")
    layer.build((None, 1))
    layer.set_weights([rng.normal(size=(vocab, dim)).astype("float32")])
    return layer


def _top_eigenvectors(cov, k):
    values, vectors = np.linalg.eigh(cov)
    return vectors[:, np.argsort(values)[::-1][:k]]


# ---------------------------------------------------------------- config and shapes


def test_dense_config_round_trip_keeps_inner_activation():
    layer = LowRankDense(10, 3, activation="sigmoid", inner_activation="relu", use_bias=True,
                         kernel_regularizer=keras.regularizers.L2(1e-3), name="lr")
    config = layer.get_config()
    clone = LowRankDense.from_config(config)
    assert clone.get_config() == config
    assert config["units"] == 10 and config["rank"] == 3 and config["name"] == "lr"
    assert clone.inner_activation is keras.activations.relu
    assert clone.activation is keras.activations.sigmoid
    assert isinstance(clone.kernel_regularizer, keras.regularizers.L2)


def test_embedding_config_round_trip():
    layer = LowRankEmbedding(50, 8, 3, embeddings_regularizer=keras.regularizers.L2(1e-4), name="emb")
    config = layer.get_config()
    clone = LowRankEmbedding.from_config(config)
    assert clone.get_config() == config
    assert (config["input_dim"], config["output_dim"], config["rank"]) == (50, 8, 3)


def test_factor_shapes():
    dense = LowRankDense(7, 3)
    dense.build((None, 12))
    assert [tuple(w.shape) for w in dense.get_weights()] == [(12, 3), (3, 7), (3,), (7,)]
    assert dense.count_params() == 3 * (12 + 7) + 3 + 7
    no_bias = LowRankDense(7, 3, use_bias=False)
    no_bias.build((None, 12))
    assert [tuple(w.shape) for w in no_bias.get_weights()] == [(12, 3), (3, 7)]
    emb = LowRankEmbedding(30, 6, 2)
    emb.build()
    assert [tuple(w.shape) for w in emb.get_weights()] == [(30, 2), (2, 6), (6,)]
    out = emb(np.array([[1], [2]], dtype="int32"))
    assert tuple(out.shape) == (2, 1, 6)
    assert tuple(dense(np.ones((4, 5, 12), "float32")).shape) == (4, 5, 7)


@pytest.mark.parametrize("rank", [0, -1, 8, 2.0, True])
def test_invalid_rank_raises_naming_layer(rank):
    with pytest.raises(ValueError, match="bad_layer"):
        LowRankDense(7, rank, name="bad_layer")
    with pytest.raises(ValueError, match="bad_emb"):
        LowRankEmbedding(30, 7, rank, name="bad_emb")


def test_rank_above_input_dim_raises_at_build():
    layer = LowRankDense(10, 6, name="too_wide")
    with pytest.raises(ValueError, match="too_wide"):
        layer.build((None, 4))


# ---------------------------------------------------------------- saving and training


def _low_rank_model():
    ids = keras.Input((1,), dtype="int32", name="ids")
    dense_in = keras.Input((5,), name="x")
    emb = keras.layers.Flatten()(LowRankEmbedding(40, 8, 3, name="lr_emb")(ids))
    h = LowRankDense(16, 4, activation="relu", inner_activation="relu", name="lr_dense")(
        keras.layers.Concatenate()([emb, dense_in]))
    out = keras.layers.Dense(1, activation="sigmoid", name="out")(h)
    return keras.Model({"ids": ids, "x": dense_in}, out)


def _toy_data(rows=256, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 40, size=(rows, 1)).astype("int32")
    x = rng.normal(size=(rows, 5)).astype("float32")
    labels = ((ids[:, 0] % 2) ^ (x[:, 0] > 0)).astype("float32")[:, None]
    return {"ids": ids, "x": x}, labels


def test_keras_save_load_without_custom_objects(tmp_path):
    keras.utils.set_random_seed(1)
    model = _low_rank_model()
    features, _ = _toy_data()
    expected = model.predict(features, verbose=0)
    path = str(tmp_path / "low_rank.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(features, verbose=0), expected)
    dense = loaded.get_layer("lr_dense")
    assert isinstance(dense, LowRankDense) and isinstance(loaded.get_layer("lr_emb"), LowRankEmbedding)
    assert dense.rank == 4 and dense.inner_activation is keras.activations.relu
    assert dense.get_config() == model.get_layer("lr_dense").get_config()


def test_low_rank_layers_train_with_fit():
    keras.utils.set_random_seed(2)
    model = _low_rank_model()
    features, labels = _toy_data()
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy")
    before = [w.copy() for w in model.get_layer("lr_dense").get_weights() + model.get_layer("lr_emb").get_weights()]
    loss_before = model.evaluate(features, labels, verbose=0)
    model.fit(features, labels, epochs=8, batch_size=64, verbose=0)
    loss_after = model.evaluate(features, labels, verbose=0)
    after = model.get_layer("lr_dense").get_weights() + model.get_layer("lr_emb").get_weights()
    assert loss_after < loss_before - 0.01
    assert all(not np.allclose(a, b) for a, b in zip(before, after))


# ---------------------------------------------------------------- factoring vs numpy


@pytest.mark.parametrize("method", ["afm", "svd"])
def test_from_dense_full_rank_is_exact(method):
    rng = np.random.default_rng(0)
    layer = _dense(rng)
    x = rng.normal(size=(200, 12)).astype("float32")
    kernel, bias = (w.astype(np.float64) for w in layer.get_weights())
    stats = _stats_of(x @ kernel + bias)
    low = LowRankDense.from_dense(layer, 7, stats, method=method)
    assert isinstance(low, LowRankDense) and low.name == layer.name and low.rank == 7
    assert [tuple(w.shape) for w in low.get_weights()] == [(12, 7), (7, 7), (7,), (7,)]
    assert np.max(np.abs(np.asarray(low(x)) - np.asarray(layer(x)))) <= 1e-5


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_from_dense_afm_matches_numpy_reference(rank):
    rng = np.random.default_rng(1)
    layer = _dense(rng)
    x = rng.normal(size=(300, 12)).astype("float64")
    kernel, bias = (w.astype(np.float64) for w in layer.get_weights())
    y = x @ kernel + bias
    mu = y.mean(0)
    u = _top_eigenvectors(np.cov(y.T, bias=True), rank)
    expected_pre = y @ u @ u.T + (mu - mu @ u @ u.T)
    low = LowRankDense.from_dense(layer, rank, _stats_of(y), method="afm")
    down, up, down_bias, up_bias = low.get_weights()
    np.testing.assert_allclose(down @ up, kernel @ u @ u.T, atol=1e-5)
    np.testing.assert_allclose(up_bias + down_bias @ up, bias @ u @ u.T + mu - mu @ u @ u.T, atol=1e-5)
    np.testing.assert_allclose(np.asarray(low(x.astype("float32"))), np.maximum(expected_pre, 0), atol=1e-4)


@pytest.mark.parametrize("rank", [1, 3])
def test_from_dense_svd_matches_numpy_reference(rank):
    rng = np.random.default_rng(2)
    layer = _dense(rng, activation=None)
    kernel, bias = (w.astype(np.float64) for w in layer.get_weights())
    a, s, bt = np.linalg.svd(kernel, full_matrices=False)
    low = LowRankDense.from_dense(layer, rank, method="svd")
    down, up, down_bias, up_bias = low.get_weights()
    np.testing.assert_allclose(down @ up, (a[:, :rank] * s[:rank]) @ bt[:rank], atol=1e-5)
    np.testing.assert_allclose(up_bias + down_bias @ up, bias, atol=1e-6)


def test_from_dense_needs_stats_for_afm_and_valid_rank():
    layer = _dense(np.random.default_rng(3))
    with pytest.raises(ValueError, match="dense_under_test"):
        LowRankDense.from_dense(layer, 3, None, method="afm")
    with pytest.raises(ValueError, match="dense_under_test"):
        LowRankDense.from_dense(layer, 8, method="svd")
    with pytest.raises(ValueError, match="method"):
        LowRankDense.from_dense(layer, 3, method="pca")


def test_from_dense_inner_activation_persists():
    rng = np.random.default_rng(4)
    layer = _dense(rng)
    low = LowRankDense.from_dense(layer, 3, method="svd", inner_activation="relu")
    config = low.get_config()
    assert config["inner_activation"] == "relu"
    assert LowRankDense.from_config(config).inner_activation is keras.activations.relu


@pytest.mark.parametrize("method", ["afm", "svd"])
def test_from_embedding_full_rank_is_exact(method):
    rng = np.random.default_rng(5)
    layer = _embedding(rng)
    ids = rng.integers(0, 30, size=(500, 1)).astype("int32")
    table = layer.get_weights()[0].astype(np.float64)
    stats = _stats_of(table[ids[:, 0]])
    low = LowRankEmbedding.from_embedding(layer, 6, stats, method=method)
    assert isinstance(low, LowRankEmbedding) and low.name == layer.name
    assert [tuple(w.shape) for w in low.get_weights()] == [(30, 6), (6, 6), (6,)]
    assert np.max(np.abs(np.asarray(low(ids)) - np.asarray(layer(ids)))) <= 1e-5


def test_from_embedding_low_rank_matches_numpy_reference():
    rng = np.random.default_rng(6)
    layer = _embedding(rng)
    ids = rng.integers(0, 30, size=(400,))
    table = layer.get_weights()[0].astype(np.float64)
    rows = table[ids]
    mu = rows.mean(0)
    u = _top_eigenvectors(np.cov(rows.T, bias=True), 2)
    afm = LowRankEmbedding.from_embedding(layer, 2, _stats_of(rows), method="afm")
    np.testing.assert_allclose(np.asarray(afm(np.arange(30))), (table - mu) @ u @ u.T + mu, atol=1e-5)
    # SVD of the centred table; its mean row becomes the bias.
    mean_row = table.mean(0)
    a, s, bt = np.linalg.svd(table - mean_row, full_matrices=False)
    svd = LowRankEmbedding.from_embedding(layer, 2, method="svd")
    np.testing.assert_allclose(np.asarray(svd(np.arange(30))), (a[:, :2] * s[:2]) @ bt[:2] + mean_row, atol=1e-5)
    with pytest.raises(ValueError, match="embedding_under_test"):
        LowRankEmbedding.from_embedding(layer, 7, method="svd")
    with pytest.raises(ValueError, match="embedding_under_test"):
        LowRankEmbedding.from_embedding(layer, 2, _stats_of(rows[:, :3]), method="afm")


def test_public_exports():
    assert tfafm.LowRankDense is tfafm.layers.LowRankDense is LowRankDense
    assert tfafm.LowRankEmbedding is LowRankEmbedding


# ---------------------------------------------------------------- Fisher-weighted directions


def test_weighted_bases_minimise_the_fisher_weighted_error():
    """Under a metric F the kept rank-k map loses exactly the dropped eigenvalues of L^T M L, no more
    than any other rank-k projection (the variance-optimal one included); down @ up is the identity,
    and without F the bases are the plain eigenvectors."""
    from tfafm.linalg.factorize import FISHER_RIDGE, weighted_bases

    rng = np.random.default_rng(3)
    d, k = 6, 2
    rows = rng.normal(size=(500, d)) @ rng.normal(size=(d, d))
    moment = np.cov(rows.T, bias=True)
    half = rng.normal(size=(d, d))
    fisher = half @ half.T
    values, down, up = weighted_bases(moment, fisher)
    np.testing.assert_allclose(down @ up, np.eye(d), atol=1e-9)
    metric = fisher + FISHER_RIDGE * np.trace(fisher) / d * np.eye(d)

    def weighted_error(projection):
        residual = np.eye(d) - projection
        return float(np.trace(metric @ residual.T @ moment @ residual))  # rows y: error y (I - P)

    best = weighted_error(down[:, :k] @ up[:k])
    np.testing.assert_allclose(best, values[k:].sum(), rtol=1e-8)
    plain = _top_eigenvectors(moment, k)
    assert best < weighted_error(plain @ plain.T)
    for _ in range(20):
        q = np.linalg.qr(rng.normal(size=(d, k)))[0]
        assert best <= weighted_error(q @ q.T) + 1e-9
    values0, down0, up0 = weighted_bases(moment, None)
    np.testing.assert_allclose(up0, down0.T)
    np.testing.assert_allclose(np.abs(down0[:, :k].T @ plain), np.eye(k), atol=1e-8)
