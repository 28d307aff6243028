"""Every model-zoo builder: builds, trains, round-trips through .keras and exports."""

import os

import keras
import numpy as np
import pytest

from tfafm import models
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.schema import DenseFeature, Schema, SparseFeature

pytestmark = pytest.mark.slow

SMALL = {"hidden_units": (16, 8)}


@pytest.fixture(scope="module")
def synthetic():
    generator = SyntheticCriteo(seed=3, num_dense=3, num_sparse=5, max_vocabulary=300)
    features, labels = next(generator.batches(1024, 1024))
    return generator.schema(embedding_dim=4), features, labels


def test_available_lists_every_builder_and_the_command_line_knows_them():
    from tfafm.data.formats import FORMATS
    from tfafm_choices import FORMAT_DATA, MODEL_NAMES

    assert models.available() == sorted(MODEL_NAMES)
    assert tuple(FORMATS) == FORMAT_DATA


@pytest.mark.parametrize("name", models.available())
def test_builder_trains_round_trips_and_exports(name, synthetic, tmp_path):
    schema, features, labels = synthetic
    keras.utils.set_random_seed(0)
    model = models.build(name, schema, **SMALL)

    assert [x.name for x in model.inputs] == sorted(schema.names)
    assert model.output.shape[-1] == 1
    embeddings = [layer for layer in model.layers if isinstance(layer, keras.layers.Embedding)
                  and layer.output_dim == 4]
    assert sorted(e.name for e in embeddings) == sorted(f"{f.name}_embedding" for f in schema.sparse)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)

    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    losses = model.fit(features, labels, batch_size=128, epochs=4, verbose=0).history["loss"]
    assert losses[-1] < losses[0]

    predictions = model.predict(features, verbose=0)
    assert np.all((predictions > 0) & (predictions < 1))
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(features, verbose=0), predictions, atol=1e-6)

    export_dir = str(tmp_path / "saved")
    model.export(export_dir, verbose=False)
    assert os.path.exists(os.path.join(export_dir, "saved_model.pb"))


def test_out_of_vocabulary_ids_read_row_zero(synthetic):
    schema, features, _ = synthetic
    model = models.build("deepfm", schema, **SMALL)
    sparse = schema.sparse[0]
    zero = {k: v[:3].copy() for k, v in features.items()}
    zero[sparse.name][:] = 0
    bad = {k: v.copy() for k, v in zero.items()}
    bad[sparse.name][:, 0] = [-5, sparse.vocabulary_size, sparse.vocabulary_size + 100]
    np.testing.assert_allclose(model.predict(bad, verbose=0), model.predict(zero, verbose=0))


def test_unknown_model_and_hyperparameter_are_clear_errors(synthetic):
    schema = synthetic[0]
    with pytest.raises(ValueError, match="Unknown model 'nope'.*deepfm"):
        models.build("nope", schema)
    with pytest.raises(ValueError, match="no hyper-parameter depth"):
        models.build("deepfm", schema, depth=3)
    with pytest.raises(ValueError, match="structure"):
        models.build("dcnv2", schema, structure="sideways")


def test_interaction_models_need_one_embedding_dim():
    schema = Schema([DenseFeature("d"), SparseFeature("a", 10, 4), SparseFeature("b", 10, 8)])
    with pytest.raises(ValueError, match="one embedding_dim.*a=4, b=8"):
        models.build("deepfm", schema)
    widedeep = models.build("widedeep", schema, **SMALL)  # the MLP takes 4 + 8 + 1 inputs
    assert widedeep.get_layer("deep_dense_0").kernel.shape == (13, 16)


# ---------------------------------------------------------------- every builder's output, worked out in numpy

REFERENCE_SCHEMA = Schema([DenseFeature("d0"), DenseFeature("d1"), SparseFeature("a", 7, 4),
                           SparseFeature("b", 5, 4), SparseFeature("c", 9, 4)])


def _randomized(model, seed=0):
    """Every weight set to small random values (no zero-initialised bias or table hides a wire)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype("float32"))
    return model


def _batch():
    rng = np.random.default_rng(1)
    batch = {"d0": rng.normal(size=(6, 1)).astype("float32"), "d1": rng.normal(size=(6, 1)).astype("float32")}
    for feature in REFERENCE_SCHEMA.sparse:
        ids = rng.integers(0, feature.vocabulary_size, (6, 1)).astype("int32")
        ids[0, 0], ids[1, 0] = -3, feature.vocabulary_size + 2  # out of range: read row 0
        batch[feature.name] = ids
    return batch


def _w(model, layer, index=0):
    return np.asarray(model.get_layer(layer).weights[index].numpy(), dtype=np.float64)


def _relu(x):
    return np.maximum(x, 0.0)


def _dense(model, name, x, activation=None):
    y = x @ _w(model, name, 0) + (_w(model, name, 1) if len(model.get_layer(name).weights) > 1 else 0.0)
    return _relu(y) if activation == "relu" else y


def _pieces(model, batch):
    """Guarded ids, per-field embeddings, the dense vector and the first-order term, in numpy."""
    ids = {f.name: np.where((batch[f.name][:, 0] >= 0) & (batch[f.name][:, 0] < f.vocabulary_size),
                            batch[f.name][:, 0], 0) for f in REFERENCE_SCHEMA.sparse}
    vectors = [_w(model, f"{f.name}_embedding")[ids[f.name]] for f in REFERENCE_SCHEMA.sparse]
    dense = np.concatenate([batch["d0"], batch["d1"]], axis=1).astype(np.float64)
    linear = None
    if "linear_terms" in [layer.name for layer in model.layers]:
        table, offset, linear = _w(model, "linear_terms"), 0, 0.0
        for f in REFERENCE_SCHEMA.sparse:
            linear = linear + table[offset + ids[f.name]]
            offset += f.vocabulary_size
        linear = linear + _dense(model, "linear_dense", dense)
    return vectors, dense, linear


def _mlp(model, x, prefix, count=2):
    for i in range(count):
        x = _dense(model, f"{prefix}_dense_{i}", x, "relu")
    return x


def _fm(vectors):
    fields = np.stack(vectors, axis=1)
    return 0.5 * np.sum(np.sum(fields, 1) ** 2 - np.sum(fields ** 2, 1), axis=-1, keepdims=True)


def _reference(name, model, batch):
    """``model``'s prediction computed from its weights in numpy (interaction layers that have hand-checked
    tests of their own, in tests/test_interactions.py, are called on the numpy inputs)."""
    vectors, dense, linear = _pieces(model, batch)
    deep_in = np.concatenate(vectors + [dense], axis=1)
    fields = np.stack(vectors, axis=1)

    def deep_logit(x=deep_in, prefix="deep"):
        return _dense(model, f"{prefix}_logit", _mlp(model, x, prefix))

    def layer(layer_name, *args):
        return np.asarray(model.get_layer(layer_name)(*[a.astype("float32") for a in args]), dtype=np.float64)

    if name == "widedeep":
        logit = linear + deep_logit()
    elif name == "deepfm":
        logit = linear + _fm(vectors) + deep_logit()
    elif name == "nfm":
        pooled = 0.5 * (np.sum(fields, 1) ** 2 - np.sum(fields ** 2, 1))
        logit = linear + deep_logit(pooled)
    elif name == "xdeepfm":
        logit = linear + _dense(model, "cin_logit", layer("cin", fields)) + deep_logit()
    elif name in ("dcn", "dcnv2"):
        cross = deep_in
        for i in range(3):
            if name == "dcn":
                w, b = _w(model, f"cross_{i}", 0), _w(model, f"cross_{i}", 1)
                cross = deep_in * (cross @ w) + b + cross
            else:
                cross = deep_in * _dense(model, f"cross_{i}", cross) + cross  # FeatureCross: x0 (x W + b) + x
        if name == "dcn":  # parallel
            top = np.concatenate([cross, _mlp(model, deep_in, "deep")], axis=1)
        else:  # stacked
            top = _mlp(model, cross, "deep")
        logit = _dense(model, "logit", top)
    elif name == "autoint":
        x = fields
        for i in range(2):
            projected = x @ _w(model, f"attention_{i}_projection")
            q, k, v, residual = np.split(projected, 4, axis=-1)
            x = _relu(layer(f"attention_{i}", q, k, v) + residual)
        logit = _dense(model, "attention_logit", x.reshape(len(x), -1)) + deep_logit()
    elif name == "fibinet":
        excite = _dense(model, "senet_expand", _dense(model, "senet_reduce", fields.mean(-1), "relu"), "relu")
        reweighted = fields * excite[:, :, None]
        pairs = []
        for source, prefix in ((fields, "bilinear"), (reweighted, "senet_bilinear")):
            projected = source @ _w(model, f"{prefix}_weight")
            count = source.shape[1]
            products = [projected[:, i] * source[:, j] for i in range(count) for j in range(i + 1, count)]
            pairs.append(np.stack(products, 1).reshape(len(source), -1))
        logit = linear + deep_logit(np.concatenate(pairs + [dense], axis=1))
    elif name == "dlrm":
        bottom = _dense(model, "bottom_out", _mlp(model, dense, "bottom"), "relu")
        stacked = np.stack(vectors + [bottom], axis=1)
        dots = np.stack([np.einsum("bd,bd->b", stacked[:, i], stacked[:, j]) for i in range(4) for j in range(i)], 1)
        logit = _dense(model, "logit", _mlp(model, np.concatenate([dots, bottom], axis=1), "top"))
    return 1.0 / (1.0 + np.exp(-logit))


@pytest.mark.parametrize("name", models.available())
def test_builder_computes_its_architecture(name):
    """Each builder's output on fixed weights equals its architecture worked out in numpy, with
    out-of-range ids reading row 0."""
    model = _randomized(models.build(name, REFERENCE_SCHEMA, hidden_units=(8, 6)))
    batch = _batch()
    expected = _reference(name, model, batch)
    np.testing.assert_allclose(np.asarray(model(batch), dtype=np.float64), expected, rtol=1e-4, atol=1e-6)


def test_dcnv2_parallel_and_dlrm_without_dense_features():
    schema = Schema([SparseFeature("a", 10, 4), SparseFeature("b", 20, 4)])
    parallel = models.build("dcnv2", schema, structure="parallel", **SMALL)
    # the cross network and the MLP both read the 8-wide embeddings; the logit reads both
    assert parallel.get_layer("deep_dense_0").kernel.shape == (8, 16)
    assert parallel.get_layer("logit").kernel.shape == (8 + 8, 1)
    dlrm = models.build("dlrm", schema, **SMALL)  # no bottom MLP: one dot of two fields, plus the last field
    assert dlrm.get_layer("top_dense_0").kernel.shape == (1 + 4, 16)
    assert "bottom_out" not in [layer.name for layer in dlrm.layers]
