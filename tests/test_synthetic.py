"""The built-in synthetic Criteo-like data set and its ``load_data`` spec."""

from __future__ import annotations

import numpy as np
import pytest

from tfafm.data import SyntheticCriteo, load_data


def collect(generator: SyntheticCriteo, rows: int, split: str = "train"):
    batches = list(generator.batches(rows, batch_size=500, split=split))
    features = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    return features, np.concatenate([b[1] for b in batches])


def test_deterministic_by_seed_and_split():
    a, la = collect(SyntheticCriteo(seed=3, max_vocabulary=1000), 1200)
    b, lb = collect(SyntheticCriteo(seed=3, max_vocabulary=1000), 1200)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(la, lb)
    v, _ = collect(SyntheticCriteo(seed=3, max_vocabulary=1000), 1200, split="validation")
    other, _ = collect(SyntheticCriteo(seed=4, max_vocabulary=1000), 1200)
    assert not np.array_equal(a["C26"], v["C26"])
    assert not np.array_equal(a["C26"], other["C26"])


def test_positive_rate_shapes_and_id_ranges():
    generator = SyntheticCriteo(seed=0, max_vocabulary=5000)
    features, labels = collect(generator, 20_000)
    assert 0.2 <= labels.mean() <= 0.3 and set(np.unique(labels)) == {0.0, 1.0}
    schema = generator.schema(8)
    sizes = [f.vocabulary_size for f in schema.sparse]
    assert sizes[0] == 10 and sizes[-1] == 5000 and sizes == sorted(sizes)
    assert len(schema.dense) == 13 and len(schema.sparse) == 26
    for f in schema.sparse:
        ids = features[f.name]
        assert ids.dtype == np.int32 and ids.shape == (20_000, 1)
        assert ids.min() >= 0 and ids.max() < f.vocabulary_size
    assert all(features[f.name].dtype == np.float32 for f in schema.dense)


def test_load_synthetic_spec():
    bundle = load_data("synthetic:300", batch_size=128, validation_fraction=0.2,
                       synthetic_max_vocabulary=1000, embedding_dim=4)
    assert (bundle.train_rows, bundle.validation_rows, bundle.preprocessor) == (300, 60, None)
    assert [len(labels) for _, labels in bundle.train] == [128, 128, 44]
    features, labels = next(iter(bundle.validation))
    assert labels.shape == (60, 1) and features["C1"].dtype.name == "int32"
    assert bundle.schema["C26"].vocabulary_size == 1000 and bundle.schema["C1"].embedding_dim == 4
    assert load_data("synthetic", synthetic_rows=1000).train_rows == 1000


@pytest.mark.parametrize("spec", ["synthetic:abc", "synthetic:0", "synthetic:-5"])
def test_bad_synthetic_row_counts(spec):
    with pytest.raises(ValueError, match="positive integer"):
        load_data(spec)
