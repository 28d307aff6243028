"""Small shared fixtures: a tiny synthetic data set, its schema and a briefly trained DeepFM."""

from __future__ import annotations

import numpy as np
import pytest

import tfafm
from tfafm.data import SyntheticCriteo

HIDDEN = (32, 16)


def _collect(generator, rows: int, split: str):
    batches = list(generator.batches(rows, batch_size=rows, split=split))
    features = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    return features, np.concatenate([b[1] for b in batches])


@pytest.fixture(scope="session")
def generator() -> SyntheticCriteo:
    return SyntheticCriteo(seed=0, max_vocabulary=2000, num_sparse=6, num_dense=3)


@pytest.fixture(scope="session")
def schema(generator):
    return generator.schema(embedding_dim=8)


@pytest.fixture(scope="session")
def train_data(generator):
    """``(features, labels)``: 4096 training rows as numpy arrays."""
    return _collect(generator, 4096, "train")


@pytest.fixture(scope="session")
def calib_features(generator):
    """600 calibration rows (features only)."""
    return _collect(generator, 600, "calibration")[0]


@pytest.fixture(scope="session")
def trained_deepfm(schema, train_data):
    """A DeepFM (hidden 32, 16) trained for 2 epochs. Tests must not modify it."""
    import keras

    keras.utils.set_random_seed(0)
    model = tfafm.models.build("deepfm", schema, hidden_units=HIDDEN)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    features, labels = train_data
    model.fit(features, labels, batch_size=256, epochs=2, verbose=0)
    return model


@pytest.fixture
def subclassed_model():
    """A built subclassed model (no functional graph) with one Dense named ``dense``."""
    import keras

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4, name="dense")

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((2, 8), "float32"))
    return model
