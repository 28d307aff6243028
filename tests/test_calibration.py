"""tfafm.calibrate: streaming moments against numpy, shared/nested/cross layers, strategies, npz, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras  # noqa: E402

import tfafm
from tfafm import Statistics
from tfafm.compression.targets import find_targets

pytestmark = pytest.mark.slow

HIDDEN = (32, 16)


def compressible_layers(model):
    """Compressible matrices by name."""
    return {t.name: t for t in find_targets(model)[0]}


def _assert_moments(stats, rows, name):
    rows = np.asarray(rows, dtype=np.float64)
    assert stats.count == len(rows), name
    np.testing.assert_allclose(stats.mean, rows.mean(0), rtol=1e-5, atol=1e-6, err_msg=name)
    expected = np.cov(rows.T, bias=True)
    scale = max(np.abs(expected).max(), 1e-12)
    np.testing.assert_allclose(stats.covariance, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def _pre_activation_rows(model, layer, features):
    """Numpy reference of a layer's calibrated output rows (pre-activation for Dense)."""
    if isinstance(layer, keras.layers.Dense):
        x = keras.Model(model.inputs, layer.input).predict(features, verbose=0, batch_size=4096)
        y = x.astype(np.float64) @ layer.kernel.numpy().astype(np.float64)
        if layer.use_bias:
            y = y + layer.bias.numpy().astype(np.float64)
        return y.reshape(-1, layer.units)
    out = keras.Model(model.inputs, layer.output).predict(features, verbose=0, batch_size=4096)
    return out.reshape(-1, out.shape[-1])


def test_statistics_match_numpy(trained_deepfm, calib_features):
    model = trained_deepfm
    # batch_size 256 over 600 rows: 3 batches, the last one partial.
    stats = tfafm.calibrate(model, calib_features, batch_size=256, progress=False)
    candidates = compressible_layers(model)
    assert set(stats) == set(candidates)
    assert {"deep_dense_0", "deep_dense_1"} <= set(stats)
    assert "deep_logit" not in stats and "linear_logit" not in stats
    for name in stats:
        layer = model.get_layer(name)
        rows = _pre_activation_rows(model, layer, calib_features)
        assert stats[name].dim == candidates[name].output_dim
        _assert_moments(stats[name], rows, name)


def test_dataset_input_and_steps(trained_deepfm, generator):
    dataset = generator.dataset(700, batch_size=200, split="calibration")  # (features, labels) batches
    stats = tfafm.calibrate(trained_deepfm, dataset, layers=["deep_dense_0", "C6_embedding"],
                            calibration_steps=2, progress=False)
    assert set(stats) == {"deep_dense_0", "C6_embedding"}
    assert stats["deep_dense_0"].count == 400 and stats["C6_embedding"].count == 400
    features = {k: np.concatenate([b[0][k] for b in generator.batches(400, 200, "calibration")])
                for k in trained_deepfm.input}
    for name in stats:
        _assert_moments(stats[name], _pre_activation_rows(trained_deepfm, trained_deepfm.get_layer(name), features),
                        name)


def test_feature_cross_and_3d_dense_statistics(schema, calib_features):
    keras.utils.set_random_seed(3)
    model = tfafm.models.build("dcnv2", schema, hidden_units=HIDDEN, num_cross=2)
    stats = tfafm.calibrate(model, calib_features, layers=["cross_0", "cross_1"], batch_size=300, progress=False)
    x0 = keras.Model(model.inputs, model.get_layer("deep_input").output).predict(calib_features, verbose=0)
    x1 = keras.Model(model.inputs, model.get_layer("cross_0").output).predict(calib_features, verbose=0)
    for name, x in (("cross_0", x0), ("cross_1", x1)):
        dense = model.get_layer(name).dense
        kernel, bias = (w.astype(np.float64) for w in dense.get_weights())
        _assert_moments(stats[name], x.astype(np.float64) @ kernel + bias, name)

    attention = tfafm.models.build("autoint", schema, hidden_units=HIDDEN)
    stats = tfafm.calibrate(attention, calib_features, layers=["attention_0_projection"], progress=False)
    layer = attention.get_layer("attention_0_projection")
    rows = _pre_activation_rows(attention, layer, calib_features)  # (batch * fields, 4 * 32)
    assert rows.shape[0] == 600 * 6
    _assert_moments(stats["attention_0_projection"], rows, "attention_0_projection")


def test_shared_layer_statistics_cover_every_call():
    inputs = {"a": keras.Input((10,), name="a"), "b": keras.Input((10,), name="b")}
    shared = keras.layers.Dense(8, activation="relu", name="shared")
    merged = keras.layers.Concatenate()([shared(inputs["a"]), shared(inputs["b"])])
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(merged))
    rng = np.random.default_rng(0)
    data = {"a": rng.normal(size=(300, 10)).astype("float32"),
            "b": (3.0 + rng.normal(size=(300, 10))).astype("float32")}
    stats = tfafm.calibrate(model, data, batch_size=100, progress=False)
    kernel, bias = (w.astype(np.float64) for w in shared.get_weights())
    rows = np.concatenate([data["a"] @ kernel + bias, data["b"] @ kernel + bias])
    _assert_moments(stats["shared"], rows, "shared")


def test_feature_cross_called_with_keyword_x():
    import keras_rs

    x0 = keras.Input((6,), name="x0")
    h = keras.layers.Dense(6, name="pre")(x0)
    cross = keras_rs.layers.FeatureCross(name="kw_cross")(x0, x=h)
    model = keras.Model(x0, keras.layers.Dense(1, name="out")(cross))
    data = {"x0": np.random.default_rng(2).normal(size=(200, 6)).astype("float32")}
    stats = tfafm.calibrate(model, data, layers=["kw_cross"], progress=False)
    pre_k, pre_b = (w.astype(np.float64) for w in model.get_layer("pre").get_weights())
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("kw_cross").dense.get_weights())
    _assert_moments(stats["kw_cross"], (data["x0"] @ pre_k + pre_b) @ kernel + bias, "kw_cross")


def test_nested_model_statistics():
    inner_in = keras.Input((10,), name="inner_in")
    inner = keras.Model(inner_in, keras.layers.Dense(12, activation="relu", name="inner_dense")(inner_in),
                        name="inner")
    outer_in = keras.Input((10,), name="outer_in")
    model = keras.Model(outer_in, keras.layers.Dense(1, name="out")(inner(outer_in)), name="outer")
    data = {"outer_in": np.random.default_rng(1).normal(size=(200, 10)).astype("float32")}
    stats = tfafm.calibrate(model, data, progress=False)
    assert set(stats) == {"inner/inner_dense"}
    kernel, bias = (w.astype(np.float64) for w in inner.get_layer("inner_dense").get_weights())
    _assert_moments(stats["inner/inner_dense"], data["outer_in"] @ kernel + bias, "inner_dense")


def test_statistics_npz_round_trip(trained_deepfm, calib_features, tmp_path):
    stats = tfafm.calibrate(trained_deepfm, calib_features, layers=["deep_dense_0", "C1_embedding"],
                            progress=False)
    path = str(tmp_path / "stats.npz")
    stats.save(path)
    loaded = Statistics.load(path)
    assert isinstance(loaded, Statistics) and set(loaded) == set(stats)
    for name in stats:
        assert loaded[name].count == stats[name].count
        np.testing.assert_array_equal(loaded[name].total, stats[name].total)
        np.testing.assert_array_equal(loaded[name].outer, stats[name].outer)
        np.testing.assert_array_equal(loaded[name].mean, stats[name].mean)
        np.testing.assert_array_equal(loaded[name].covariance, stats[name].covariance)
    with pytest.raises(FileNotFoundError):
        Statistics.load(str(tmp_path / "missing.npz"))


def test_repeated_calls_reuse_the_traced_step_and_keep_no_model_alive():
    import gc
    import weakref

    from tfafm.compression import calibration

    inputs = keras.Input((10,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(keras.layers.Dense(8, name="d")(inputs)))
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("d").get_weights())
    rng = np.random.default_rng(4)
    first, second = (rng.normal(loc, size=(rows, 10)).astype("float32") for loc, rows in ((0.0, 300), (2.0, 200)))
    tfafm.calibrate(model, first, layers=["d"], batch_size=128, progress=False)
    _, kept = calibration._calibrators[model]
    stats = tfafm.calibrate(model, second, layers=["d"], batch_size=128, progress=False)
    assert calibration._calibrators[model][1] is kept
    assert kept.step.experimental_get_tracing_count() == 1
    _assert_moments(stats["d"], second @ kernel + bias, "d")  # the accumulators start from zero
    alive = weakref.ref(model)
    del model, kept
    gc.collect()
    assert alive() is None


_DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import tfafm
    from tfafm.data import SyntheticCriteo

    generator = SyntheticCriteo(seed=0, max_vocabulary=2000, num_sparse=6, num_dense=3)
    keras.utils.set_random_seed(0)
    model = tfafm.models.build("dcnv2", generator.schema(embedding_dim=8), hidden_units=(32, 16), num_cross=1)
    features = next(generator.batches(600, 600, "calibration"))[0]
    single = tfafm.calibrate(model, features, batch_size=200, progress=False)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    mirrored = tfafm.calibrate(model, features, batch_size=200, strategy=strategy, progress=False)
    assert set(single) == set(mirrored) and len(single) > 5, (sorted(single), sorted(mirrored))
    for name in single:
        a, b = single[name], mirrored[name]
        assert a.count == b.count == 600, (name, a.count, b.count)
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-6, atol=1e-9, err_msg=name)
        scale = np.abs(a.covariance).max()
        np.testing.assert_allclose(b.covariance, a.covariance, rtol=1e-6, atol=1e-6 * scale, err_msg=name)
    print("DISTRIBUTED_OK", len(single))
    """
)


def test_mirrored_strategy_matches_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", _DISTRIBUTED_SCRIPT], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0 and "DISTRIBUTED_OK" in result.stdout, result.stdout + result.stderr[-4000:]


# ---------------------------------------------------------------- errors


def _two_input_model():
    ids, numbers = keras.Input((4,), dtype="int32", name="ids"), keras.Input((6,), name="numbers")
    x = keras.layers.Concatenate()([keras.layers.Flatten()(keras.layers.Embedding(50, 4)(ids)), numbers])
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    return keras.Model([ids, numbers], keras.layers.Dense(1, activation="sigmoid")(x))


def _two_input_rows(rows=512):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 50, (rows, 4)).astype("int32"), rng.normal(size=(rows, 6)).astype("float32"),
            (rng.random(rows) < 0.4).astype("float32"))


def test_features_only_elements_of_a_list_input_model_calibrate():
    """``((ids, numbers),)`` is features only, as Keras reads it: it was unwrapped, then read as
    ``(features, labels)`` ("Model takes 2 input(s), the data gives 1")."""
    import tensorflow as tf

    model = _two_input_model()
    ids, numbers, _ = _two_input_rows()
    features_only = tf.data.Dataset.from_tensor_slices(((ids, numbers),)).batch(128)
    expected = tfafm.calibrate(model, [ids, numbers], layers=["hidden"])["hidden"]
    stats = tfafm.calibrate(model, features_only, layers=["hidden"])["hidden"]
    assert stats.count == 512
    np.testing.assert_allclose(stats.covariance, expected.covariance, rtol=1e-4, atol=1e-7)  # float32 batches of 128


def test_a_dataset_of_single_rows_is_refused_in_one_line():
    import tensorflow as tf

    from tfafm.errors import UserError

    model = _two_input_model()
    ids, numbers, labels = _two_input_rows()
    rows = tf.data.Dataset.from_tensor_slices(((ids, numbers), labels))
    message = r"Feature 'ids' comes as \(4,\) where model .* takes \(None, 4\).*dataset.batch\(N\)"
    with pytest.raises(UserError, match=message):
        tfafm.calibrate(model, rows, layers=["hidden"])
    with pytest.raises(UserError, match=message):
        tfafm.compress(model, [ids, numbers], ranks={"hidden": 4}, validation_data=rows, progress=False)


def test_sample_weights_of_the_validation_data_are_said_to_be_unused():
    import tensorflow as tf

    model = _two_input_model()
    ids, numbers, labels = _two_input_rows()
    weighted = tf.data.Dataset.from_tensor_slices(((ids, numbers), labels, np.ones(512, "float32"))).batch(128)
    with pytest.warns(UserWarning, match="carries sample weights, which tfafm does not use"):
        tfafm.compress(model, [ids, numbers], ranks={"hidden": 4}, validation_data=weighted, progress=False)


def test_empty_data_raises(trained_deepfm, calib_features):
    empty = {k: v[:0] for k, v in calib_features.items()}
    with pytest.raises(ValueError, match="empty"):
        tfafm.calibrate(trained_deepfm, empty, progress=False)


def test_non_finite_statistics_raise_naming_layer(trained_deepfm, calib_features):
    bad = dict(calib_features)
    bad["I1"] = bad["I1"].copy()
    bad["I1"][5, 0] = np.nan
    with pytest.raises(ValueError, match="deep_dense_0"):
        tfafm.calibrate(trained_deepfm, bad, layers=["C1_embedding", "deep_dense_0"], progress=False)


def test_unknown_or_uncompressible_layers_raise(trained_deepfm, calib_features):
    with pytest.raises(ValueError, match="no_such_layer"):
        tfafm.calibrate(trained_deepfm, calib_features, layers=["no_such_layer"], progress=False)
    with pytest.raises(ValueError, match="deep_logit"):
        tfafm.calibrate(trained_deepfm, calib_features, layers=["deep_logit"], progress=False)
    with pytest.raises(ValueError, match="steps"):
        tfafm.calibrate(trained_deepfm, calib_features, calibration_steps=0, progress=False)


def test_subclassed_model_raises_type_error(subclassed_model):
    model = subclassed_model
    with pytest.raises(TypeError, match="from_dense"):
        tfafm.calibrate(model, {"x": np.zeros((2, 8), "float32")}, progress=False)



@pytest.mark.parametrize("activation", ["sigmoid", None])
def test_fisher_information_matches_numpy(activation, tmp_path):
    """calibrate() (fisher=True by default) sums w g g^T per row: g the gradient of the prediction with respect to
    the layer's output, w = 1 / (p (1 - p)) for a probability, p (1 - p) for a logit; saved and
    loaded with the other moments."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype("float32")
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation=activation, name="head")(hidden))
    statistics = tfafm.calibrate(model, x, layers=["hidden"], batch_size=100, progress=False)
    v = model.get_layer("head").kernel.numpy()[:, 0]
    out = model.predict(x, verbose=0)[:, 0].astype(np.float64)
    p = out if activation else 1 / (1 + np.exp(-out))
    if activation:  # dp/dh = p (1 - p) v, weighted by 1 / (p (1 - p))
        g = (p * (1 - p))[:, None] * v
        expected = (g / (p * (1 - p))[:, None]).T @ g
    else:  # dz/dh = v, weighted by p (1 - p)
        expected = np.sum(p * (1 - p)) * np.outer(v, v)
    np.testing.assert_allclose(statistics["hidden"].fisher, expected, rtol=1e-4)
    statistics.save(str(tmp_path / "s.npz"))
    np.testing.assert_allclose(tfafm.Statistics.load(str(tmp_path / "s.npz"))["hidden"].fisher, expected, rtol=1e-4)
    assert tfafm.calibrate(model, x, layers=["hidden"], progress=False, fisher=False)["hidden"].fisher is None
