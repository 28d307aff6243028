"""tfafm.compress: exactness at full rank, error vs rank, rank selection, graphs, saving, errors, reports."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import keras  # noqa: E402
import keras_rs

import tfafm
from tfafm import LowRankDense, LowRankEmbedding
from tfafm.graph import iter_layers
from tfafm.compression.report import estimated_file_bytes
from tfafm.compression.targets import find_targets

pytestmark = pytest.mark.slow

HIDDEN = (32, 16)


def compressible_layers(model):
    """Compressible matrices by name."""
    return {t.name: t for t in find_targets(model)[0]}


def _logits(model, features):
    """The pre-sigmoid logit (more sensitive than the squashed prediction)."""
    sub = keras.Model(model.inputs, model.get_layer("prediction").input)
    return sub.predict(features, verbose=0, batch_size=4096)


def _full_ranks(model):
    return {n: min(c.input_dim, c.output_dim) for n, c in compressible_layers(model).items()}


def _layers(model):
    return {layer.name: layer for layer in iter_layers(model)}


def _randomize_embeddings(model, seed=0):
    """Untrained zoo embeddings are ~0.01; make them O(0.3) so exactness checks mean something."""
    rng = np.random.default_rng(seed)
    for layer in iter_layers(model):
        if isinstance(layer, keras.layers.Embedding):
            layer.embeddings.assign(rng.normal(0, 0.3, size=layer.embeddings.shape).astype("float32"))


# ---------------------------------------------------------------- exactness at full rank


@pytest.mark.parametrize("method", ["afm", "svd"])
@pytest.mark.parametrize("name", tfafm.models.available())
def test_full_rank_equals_original_for_every_builder(name, method, schema, calib_features):
    keras.utils.set_random_seed(0)
    model = tfafm.models.build(name, schema, hidden_units=HIDDEN)
    _randomize_embeddings(model)
    ranks = _full_ranks(model)
    assert ranks, name
    compressed, report = tfafm.compress(model, calib_features, method=method, ranks=ranks, progress=False)
    assert max_abs(_logits(compressed, calib_features), _logits(model, calib_features)) <= 1e-5
    layers = _layers(compressed)
    for target_name, rank in ranks.items():
        layer_name, _, matrix = target_name.partition("/")
        new = layers[layer_name]
        if isinstance(new, tfafm.models.layers.CompressedInteraction):
            assert new.ranks[int(matrix.rsplit("_", 1)[1])] == rank
            continue
        assert isinstance(new, (LowRankDense, LowRankEmbedding, keras_rs.layers.FeatureCross)), layer_name
        assert (new.rank if not isinstance(new, keras_rs.layers.FeatureCross) else new.projection_dim) == rank
    assert report.params_before == model.count_params()
    assert report.params_after == compressed.count_params()


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ---------------------------------------------------------------- output error vs rank


def _output_error(model, compressed, layer_name, features):
    """Relative Frobenius error of a layer's pre-activation outputs, from the factors in numpy."""
    original = model.get_layer(layer_name)
    new = _layers(compressed)[layer_name]
    if isinstance(original, keras.layers.Embedding):
        ids = keras.Model(model.inputs, original.input).predict(features, verbose=0).reshape(-1).astype(int)
        table = original.embeddings.numpy().astype(np.float64)[ids]
        low_table, projection, bias = (w.astype(np.float64) for w in new.get_weights())
        approx = low_table[ids] @ projection + bias
        return np.linalg.norm(table - approx) / np.linalg.norm(table - table.mean(0))
    x = keras.Model(model.inputs, original.input).predict(features, verbose=0).astype(np.float64)
    kernel, bias = (w.astype(np.float64) for w in original.get_weights())
    y = x @ kernel + bias
    down, up, down_bias, up_bias = (w.astype(np.float64) for w in new.get_weights())
    approx = (x @ down + down_bias) @ up + up_bias
    return np.linalg.norm(y - approx) / np.linalg.norm(y - y.mean(0))


def test_output_error_decreases_with_rank_and_afm_beats_svd(trained_deepfm, calib_features):
    model = trained_deepfm
    dense, emb = "deep_dense_0", "C6_embedding"  # 51 -> 32 Dense, 2000 x 8 Embedding
    stats = tfafm.calibrate(model, calib_features, layers=[dense, emb], progress=False)
    errors = {"afm": {dense: [], emb: []}, "svd": {dense: [], emb: []}}
    dense_ranks, emb_ranks = (1, 2, 4, 8, 16, 24), (1, 2, 4, 6)
    for method in ("afm", "svd"):
        for k_dense, k_emb in zip(dense_ranks, emb_ranks + (6, 6)):
            compressed, _ = tfafm.compress(model, method=method, ranks={dense: k_dense, emb: k_emb},
                                           statistics=stats, progress=False)
            errors[method][dense].append(_output_error(model, compressed, dense, calib_features))
            errors[method][emb].append(_output_error(model, compressed, emb, calib_features))
    for method in ("afm", "svd"):
        assert np.all(np.diff(errors[method][dense]) < 0), (method, errors[method][dense])
        assert np.all(np.diff(errors[method][emb][:len(emb_ranks)]) < 0), (method, errors[method][emb])
    # AFM keeps the principal directions of the outputs themselves: lower error at every equal rank.
    assert np.all(np.array(errors["afm"][dense]) < np.array(errors["svd"][dense])), errors
    assert np.all(np.array(errors["afm"][emb][:3]) < np.array(errors["svd"][emb][:3])), errors


# ---------------------------------------------------------------- rank selection


def _own_params(layer):
    return sum(int(np.prod(w.shape)) for w in layer.weights)


@pytest.mark.parametrize("name,method", [("deepfm", "afm"), ("autoint", "svd")])
def test_target_ratio_shrinks_compressible_params(name, method, trained_deepfm, schema, calib_features):
    if name == "deepfm":
        model = trained_deepfm
    else:
        keras.utils.set_random_seed(0)
        model = tfafm.models.build(name, schema, hidden_units=HIDDEN)
    # The ratio is the whole file's (tfafm.compression.report.estimated_file_bytes): these small models'
    # first-order weights, biases and per-layer records never shrink, so the matrices shrink by more.
    compressed, report = tfafm.compress(model, calib_features, method=method, target_ratio=3, progress=False)
    file_ratio = estimated_file_bytes(model) / estimated_file_bytes(compressed)
    assert 3 <= file_ratio <= 3.1 and report.compressible_ratio > 3
    assert report.params_before == model.count_params()
    assert report.params_after == compressed.count_params()
    before_layers, after_layers = _layers(model), _layers(compressed)
    before = after = 0
    for row in report.layers:
        assert row.params_before == _own_params(before_layers[row.name]), row
        assert row.params_after == _own_params(after_layers[row.name]), row
        before += _own_params(before_layers[row.name])
        after += _own_params(after_layers[row.name])
    assert before / after > 3
    assert before == report.compressible_before and after == report.compressible_after


def _assert_profitable(report, excluded=()):
    factored = [row for row in report.layers if row.rank is not None]
    assert factored
    for row in factored:
        d_in, d_out = row.input_dim, row.output_dim
        assert row.rank * (d_in + d_out) < d_in * d_out, row
        assert row.params_after < row.params_before, row
        assert row.output_dim != 1 and row.name not in excluded, row
    return factored


def test_energy_keeps_variance(trained_deepfm, calib_features):
    stats = tfafm.calibrate(trained_deepfm, calib_features, progress=False)
    compressed, report = tfafm.compress(trained_deepfm, energy=0.95, statistics=stats, criterion="variance",
                                        progress=False)
    factored = _assert_profitable(report)
    layers = _layers(compressed)
    for row in factored:
        assert row.variance_kept >= 0.95, row
        eig = np.clip(np.linalg.eigvalsh(stats[row.name].covariance), 0, None)[::-1]
        assert row.variance_kept == pytest.approx(eig[:row.rank].sum() / eig.sum(), rel=1e-9)
        assert row.rank == 1 or eig[:row.rank - 1].sum() / eig.sum() < 0.95, row  # the smallest such rank
        assert layers[row.name].rank == row.rank
    for row in report.layers:
        if row.rank is None:
            assert not isinstance(layers[row.name], (LowRankDense, LowRankEmbedding))


@pytest.mark.parametrize("option", [{"energy": 0.9}, {"target_ratio": 1.5}, {"target_ratio": 3}])
def test_automatic_ranks_never_unprofitable_logit_or_excluded(option, trained_deepfm, calib_features):
    exclude = ["deep_dense_1", "C3_embedding"]
    compressed, report = tfafm.compress(trained_deepfm, calib_features, method="svd", exclude=exclude,
                                        progress=False, **option)
    _assert_profitable(report, excluded=exclude)
    names = {row.name for row in report.layers}
    assert not names & {"deep_logit", "linear_logit", *exclude}
    layers = _layers(compressed)
    for name in ("deep_logit", "linear_logit", *exclude):
        assert type(layers[name]) is type(trained_deepfm.get_layer(name)), name


# ---------------------------------------------------------------- saving and fine-tuning


def test_compressed_model_round_trips_and_fine_tunes(trained_deepfm, train_data, calib_features, tmp_path):
    compressed, _ = tfafm.compress(trained_deepfm, calib_features, target_ratio=3,
                                   inner_activation="relu", progress=False)
    path = str(tmp_path / "compressed.keras")
    compressed.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(calib_features, verbose=0),
                                  compressed.predict(calib_features, verbose=0))
    assert any(isinstance(layer, LowRankDense) and layer.inner_activation is keras.activations.relu
               for layer in loaded.layers)
    features, labels = train_data
    features = {k: v[:1024] for k, v in features.items()}
    labels = labels[:1024]
    loaded.compile(optimizer=keras.optimizers.Adam(0.005), loss="binary_crossentropy")
    before = loaded.evaluate(features, labels, verbose=0, batch_size=1024)
    loaded.fit(features, labels, epochs=3, batch_size=256, verbose=0)
    after = loaded.evaluate(features, labels, verbose=0, batch_size=1024)
    assert after < before, (before, after)


# ---------------------------------------------------------------- graph shapes


def test_shared_layer_stays_shared():
    inputs = {"a": keras.Input((16,), name="a"), "b": keras.Input((16,), name="b")}
    shared = keras.layers.Dense(12, activation="relu", name="shared")
    out = keras.layers.Dense(1, name="out")(keras.layers.Concatenate()([shared(inputs["a"]), shared(inputs["b"])]))
    model = keras.Model(inputs, out)
    rng = np.random.default_rng(0)
    data = {"a": rng.normal(size=(256, 16)).astype("float32"), "b": rng.normal(1, 2, size=(256, 16)).astype("float32")}
    for rank, tol in ((12, 1e-5), (4, None)):
        compressed, _ = tfafm.compress(model, data, ranks={"shared": rank}, progress=False)
        low = [layer for layer in compressed.layers if isinstance(layer, LowRankDense)]
        assert len(low) == 1 and low[0].name == "shared" and low[0].rank == rank
        assert len(low[0]._inbound_nodes) == 2
        assert compressed.count_params() == model.count_params() - 16 * 12 - 12 + rank * 28 + rank + 12
        if tol:
            assert max_abs(compressed.predict(data, verbose=0), model.predict(data, verbose=0)) <= tol


def test_nested_functional_model_is_compressed():
    inner_in = keras.Input((20,), name="inner_in")
    h = keras.layers.Dense(16, activation="relu", name="inner_dense")(inner_in)
    inner = keras.Model(inner_in, h, name="inner")
    outer_in = keras.Input((20,), name="features")
    top = keras.layers.Dense(12, activation="relu", name="top_dense")(inner(outer_in))
    model = keras.Model({"features": outer_in}, keras.layers.Dense(1, name="out")(top), name="outer")
    data = {"features": np.random.default_rng(1).normal(size=(300, 20)).astype("float32")}
    compressed, report = tfafm.compress(model, data, ranks={"inner_dense": 16, "top_dense": 12}, progress=False)
    nested = [layer for layer in compressed.layers if isinstance(layer, keras.Model)]
    assert len(nested) == 1 and isinstance(nested[0].get_layer("inner_dense"), LowRankDense)
    assert isinstance(compressed.get_layer("top_dense"), LowRankDense)
    assert max_abs(compressed.predict(data, verbose=0), model.predict(data, verbose=0)) <= 1e-5
    # Layers of nested models are reported under qualified names.
    assert {row.name for row in report.layers} == {"inner/inner_dense", "top_dense"}


@pytest.mark.parametrize("method", ["afm", "svd"])
def test_feature_cross_becomes_low_rank_feature_cross(method, schema, calib_features):
    keras.utils.set_random_seed(4)
    model = tfafm.models.build("dcnv2", schema, hidden_units=HIDDEN, num_cross=2)
    _randomize_embeddings(model)
    dim = model.get_layer("cross_0").dense.kernel.shape[0]
    compressed, _ = tfafm.compress(model, calib_features, method=method,
                                   ranks={"cross_0": dim, "cross_1": 5}, progress=False)
    full, low = compressed.get_layer("cross_0"), compressed.get_layer("cross_1")
    assert type(full) is keras_rs.layers.FeatureCross and full.projection_dim == dim
    assert type(low) is keras_rs.layers.FeatureCross and low.projection_dim == 5
    assert low.count_params() == 5 * 2 * dim + dim
    exact, _ = tfafm.compress(model, calib_features, method=method, ranks={"cross_0": dim, "cross_1": dim},
                              progress=False)
    assert max_abs(_logits(exact, calib_features), _logits(model, calib_features)) <= 1e-5


def test_subclassed_model_raises_type_error(subclassed_model):
    model = subclassed_model
    with pytest.raises(TypeError, match="LowRankDense.from_dense"):
        tfafm.compress(model, method="svd", ranks={"dense": 2}, progress=False)


# ---------------------------------------------------------------- bad input


def test_empty_calibration_data_raises(trained_deepfm, calib_features):
    empty = {k: v[:0] for k, v in calib_features.items()}
    with pytest.raises(ValueError, match="[Cc]alibration data"):
        tfafm.compress(trained_deepfm, empty, target_ratio=4, progress=False)


@pytest.mark.parametrize("rank", [0, -2, 33, 2.5])
def test_bad_rank_raises_naming_layer(rank, trained_deepfm):
    with pytest.raises(ValueError, match="deep_dense_0"):
        tfafm.compress(trained_deepfm, method="svd", ranks={"deep_dense_0": rank}, progress=False)


def test_unknown_names_raise(trained_deepfm):
    with pytest.raises(ValueError, match="no_such_layer"):
        tfafm.compress(trained_deepfm, method="svd", ranks={"no_such_layer": 2}, progress=False)
    with pytest.raises(ValueError, match="deep_logit"):
        tfafm.compress(trained_deepfm, method="svd", ranks={"deep_logit": 1}, progress=False)
    with pytest.raises(ValueError, match="not_a_layer"):
        tfafm.compress(trained_deepfm, method="svd", energy=0.9, exclude=["not_a_layer"], progress=False)
    with pytest.raises(ValueError, match="deep_dense_0"):
        tfafm.compress(trained_deepfm, method="svd", ranks={"deep_dense_0": 2}, exclude=["deep_dense_0"],
                       progress=False)


def test_bad_options_raise(trained_deepfm, calib_features):
    with pytest.raises(ValueError, match="method"):
        tfafm.compress(trained_deepfm, calib_features, method="pca", energy=0.9, progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        tfafm.compress(trained_deepfm, calib_features, energy=0.9, target_ratio=2, progress=False)
    with pytest.raises(ValueError, match="energy"):
        tfafm.compress(trained_deepfm, method="svd", energy=1.5, progress=False)
    with pytest.raises(ValueError, match="target_ratio"):
        tfafm.compress(trained_deepfm, method="svd", target_ratio=0.5, progress=False)
    with pytest.raises(ValueError, match="target_ratio"):
        tfafm.compress(trained_deepfm, method="svd", target_ratio=1e6, progress=False)
    with pytest.raises(ValueError, match="calibration_data"):
        tfafm.compress(trained_deepfm, method="afm", energy=0.9, progress=False)
    with pytest.raises(ValueError, match="include"):
        tfafm.compress(trained_deepfm, method="svd", energy=0.9, include=("convolutions",), progress=False)


def test_nothing_compressible_raises():
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(1, name="only_logit")(x), name="tiny")
    with pytest.raises(ValueError, match="nothing compressible"):
        tfafm.compress(model, {"x": np.ones((8, 4), "float32")}, energy=0.9, progress=False)


def test_non_finite_statistics_raise_naming_layer(trained_deepfm, calib_features):
    bad = dict(calib_features)
    bad["I2"] = bad["I2"].copy()
    bad["I2"][3, 0] = np.nan
    with pytest.raises(ValueError, match="deep_dense_0"):
        tfafm.compress(trained_deepfm, bad, target_ratio=4, progress=False)


# ---------------------------------------------------------------- report


def test_report_markdown_and_json(trained_deepfm, calib_features):
    compressed, report = tfafm.compress(trained_deepfm, calib_features, target_ratio=3, progress=False)
    markdown = report.to_markdown()
    assert report.layers
    for row in report.layers:
        assert f"| {row.name} |" in markdown
    parsed = json.loads(report.to_json())
    totals = parsed["totals"]
    assert parsed["method"] == "afm"
    assert totals["params_before"] == trained_deepfm.count_params() == report.params_before
    assert totals["params_after"] == compressed.count_params() == report.params_after
    assert totals["float32_bytes_before"] == 4 * totals["params_before"]
    assert totals["compressible_params_before"] == sum(r["params_before"] for r in parsed["layers"])
    assert totals["compressible_params_after"] == sum(r["params_after"] for r in parsed["layers"])
    assert totals["compressible_ratio"] == pytest.approx(report.compressible_ratio)
    assert [r["name"] for r in parsed["layers"]] == [row.name for row in report.layers]


def test_dynamic_int8_file_shrinks_by_the_ratio_asked(generator, train_data, calib_features, tmp_path):
    """target_ratio counts the whole LiteRT file under the quantization given, not only the factored matrices."""
    keras.utils.set_random_seed(0)
    model = tfafm.models.build("deepfm", generator.schema(embedding_dim=32), hidden_units=(64, 32))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(*train_data, batch_size=512, epochs=1, verbose=0)
    compressed, _ = tfafm.compress(model, calib_features, target_ratio=4, quantization="dynamic", progress=False)
    sizes = []
    for keras_model, name in ((model, "original"), (compressed, "compressed")):
        path = str(tmp_path / f"{name}.tflite")
        tfafm.export.litert(keras_model, path, quantization="dynamic")
        sizes.append(os.path.getsize(path))
    assert sizes[0] / sizes[1] == pytest.approx(4, rel=0.15), sizes


def test_loss_criterion_keeps_what_the_predictions_see_and_needs_fisher_information():
    """criterion="loss" calibrates with Fisher information (AFM and SVD alike), says so in the
    report, shrinks the model, is exact at full rank, and refuses statistics collected without it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, 32)).astype("float32")
    inputs = keras.Input((32,), name="x")
    hidden = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)
    hidden = keras.layers.Dense(64, activation="relu", name="hidden2")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head")(hidden))
    for method in ("afm", "svd"):
        small, report = tfafm.compress(model, x, method=method, target_ratio=2, criterion="loss", progress=False)
        assert report.criterion == "loss" and "loss criterion" in report.to_markdown()
        assert small.count_params() < model.count_params()
    full, _ = tfafm.compress(model, x, ranks={"hidden2": 64}, criterion="loss", progress=False)
    np.testing.assert_allclose(full.predict(x[:64], verbose=0), model.predict(x[:64], verbose=0), atol=1e-5)
    plain = tfafm.calibrate(model, x, progress=False, fisher=False)
    with pytest.raises(tfafm.UserError, match=r"fisher=True"):
        tfafm.compress(model, statistics=plain, target_ratio=2, criterion="loss", progress=False)
    _, by_energy = tfafm.compress(model, statistics=plain, energy=0.9, criterion="variance", progress=False)
    assert by_energy.criterion == "variance"
    _, svd = tfafm.compress(model, method="svd", target_ratio=2, progress=False)  # no data: SVD from the weights
    assert svd.criterion == "variance"
