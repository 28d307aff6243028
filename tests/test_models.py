"""Every model-zoo builder: builds, trains, round-trips through .keras and exports."""

import os

import keras
import numpy as np
import pytest

from tfafm import models
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.schema import DenseFeature, Schema, SparseFeature

SMALL = {"hidden_units": (16, 8)}


@pytest.fixture(scope="module")
def synthetic():
    generator = SyntheticCriteo(seed=3, num_dense=3, num_sparse=5, max_vocabulary=300)
    features, labels = next(generator.batches(1024, 1024))
    return generator.schema(embedding_dim=4), features, labels


def test_available_lists_every_builder_and_no_afm():
    names = models.available()
    assert names == sorted(["widedeep", "deepfm", "dcn", "dcnv2", "xdeepfm", "autoint", "fibinet", "nfm", "dlrm"])
    assert "afm" not in names


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
    assert models.build("widedeep", schema, **SMALL).count_params() > 0


def test_dcnv2_parallel_and_dlrm_without_dense_features():
    schema = Schema([SparseFeature("a", 10, 4), SparseFeature("b", 20, 4)])
    assert models.build("dcnv2", schema, structure="parallel", **SMALL).count_params() > 0
    assert models.build("dlrm", schema, **SMALL).count_params() > 0
