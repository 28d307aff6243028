"""Whole models users bring: convert, parity, .keras round trip, compress 4x, LiteRT (builtin ops), parity again."""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as k2
from interop_checks import PARITY, litert_predict, max_difference
from keras2_models import (deepfm_rows, deepfm_with_lookups, dlrm_data, movielens_dcn, ranking_dlrm,
                           sequential_mlp, split_rows)

import tfafm
from tfafm.errors import UserError
from tfafm.export import builtin_op_names, litert_ops
from tfafm.interop import from_keras2, from_tfrs_ranking

ROWS = 1000


@dataclasses.dataclass
class Case:
    """A Keras 2 model, its Keras 3 conversion, raw rows to compare them on and raw calibration rows."""

    original: object
    original_predict: Callable
    converted: keras.Model
    raw: dict
    calibration_raw: dict


def _features(rows: dict) -> dict:
    return {k: v for k, v in rows.items() if k != "user_rating"}


@pytest.fixture(scope="module")
def dcn_case(movielens):
    train, held_out = split_rows(movielens, 0, 90_000), split_rows(movielens, 90_000, 90_000 + ROWS)
    model = movielens_dcn(train, steps=8)
    return Case(model, lambda raw: model.predict(raw, verbose=0), from_tfrs_ranking(model),
                _features(held_out), _features(split_rows(train, 0, 4096)))


@pytest.fixture(scope="module")
def dlrm_case():
    model = ranking_dlrm()
    return Case(model, lambda raw: model.predict(raw, verbose=0), from_tfrs_ranking(model),
                dlrm_data(ROWS, seed=5)[0], dlrm_data(2048, seed=6)[0])


@pytest.fixture(scope="module")
def deepfm_case():
    train, labels = deepfm_rows(4000)
    model = deepfm_with_lookups(train, labels)
    return Case(model, lambda raw: model.predict(raw, verbose=0), from_keras2(model), deepfm_rows(ROWS, seed=3)[0], train)


@pytest.fixture(scope="module")
def mlp_case(tmp_path_factory):
    model, x = sequential_mlp(rows=ROWS)
    path = tmp_path_factory.mktemp("mlp") / "mlp.h5"
    model.save(path)
    return Case(model, lambda raw: model.predict(raw["x"], verbose=0), from_keras2(str(path)), {"x": x}, {"x": x})


CASES = ("dcn_case", "dlrm_case", "deepfm_case", "mlp_case")


@pytest.mark.parametrize("case_name", CASES)
def test_converted_model_matches_the_original_before_and_after_a_keras_round_trip(case_name, request, tmp_path):
    case: Case = request.getfixturevalue(case_name)
    inputs = case.converted.raw_feature_encoder.encode(case.raw)
    expected = case.original_predict(case.raw)
    assert np.asarray(expected).size == ROWS
    assert max_difference(case.converted.predict(inputs, verbose=0), expected) < PARITY
    path = tmp_path / "converted.keras"
    case.converted.save(path)
    reloaded = keras.models.load_model(path)
    assert max_difference(reloaded.predict(inputs, verbose=0), expected) < PARITY


@pytest.mark.parametrize("case_name", CASES)
def test_compressed_model_exports_to_litert_with_builtin_ops_and_parity(case_name, request, tmp_path):
    case: Case = request.getfixturevalue(case_name)
    encoder = case.converted.raw_feature_encoder
    inputs = encoder.encode(case.raw)
    expected = case.original_predict(case.raw)
    exported = tfafm.export.litert(case.converted, str(tmp_path / "converted.tflite"))
    assert set(litert_ops(exported)) <= builtin_op_names()
    assert max_difference(litert_predict(exported, inputs), expected) < PARITY

    calibration = tf.data.Dataset.from_tensor_slices(encoder.encode(case.calibration_raw)).batch(512)
    # These small models' whole files reach 1.5x-2.2x: 1.4x is within reach of each.
    small, report = tfafm.compress(case.converted, calibration, target_ratio=1.4, progress=False)
    assert small.count_params() < case.converted.count_params()
    assert any(row.rank for row in report.layers)
    small_file = tfafm.export.litert(small, str(tmp_path / "compressed.tflite"))
    assert set(litert_ops(small_file)) <= builtin_op_names()
    assert max_difference(litert_predict(small_file, inputs), small.predict(inputs, verbose=0)) < PARITY


def test_tfrs_dcn_converts_cross_to_feature_cross_and_lookups_to_the_sidecar(dcn_case):
    layers = {type(layer).__name__ for layer in dcn_case.converted.layers}
    assert "FeatureCross" in layers and not layers & {"StringLookup", "IntegerLookup"}
    features = dcn_case.converted.raw_feature_encoder.features
    assert [f.name for f in features] == sorted(["movie_id", "user_id", "movie_genre", "movie_year", "rating_year"])
    assert {f.kind for f in features} == {"string_lookup", "integer_lookup"}
    ids = dcn_case.converted.raw_feature_encoder.encode(dcn_case.raw)["movie_id"]
    assert (ids == 0).any(), "held-out rows should contain movies unseen in training (OOV id 0)"


def test_ranking_dcn_with_a_sequential_interaction_converts():
    # Ranking's docstring DCN: Sequential([Concatenate(), Cross()]). TFRS 0.7.7 cannot fit it with tf_keras 2.21
    # (unknown shapes after tf.squeeze in graph mode), so the model is only called eagerly, untrained.
    k2.backend.clear_session()  # the bottom stack's first Dense is named "dense", as in a fresh process
    interaction = k2.Sequential([k2.layers.Concatenate(), tfrs.layers.feature_interaction.Cross(projection_dim=4)])
    model = ranking_dlrm(feature_interaction=interaction, steps=0)
    raw = dlrm_data(200, seed=9)[0]
    expected = model(raw).numpy()
    converted = from_tfrs_ranking(model)
    # The documented names: they were dense_dense_0.. where a layer was named "dense".
    assert [t.name for t in converted.inputs if t.name.startswith("dense")] == [f"dense_{i}" for i in range(8)]
    assert any(type(layer).__name__ == "FeatureCross" for layer in converted.layers)
    assert max_difference(converted.predict(converted.raw_feature_encoder.encode(raw), verbose=0), expected) < PARITY


def test_tfrs_model_without_the_named_attribute_lists_its_keras_models(dcn_case):
    with pytest.raises(UserError, match=r"no attribute 'scorer'.*\['ranking_model'\]"):
        from_tfrs_ranking(dcn_case.original, attribute="scorer")


def test_a_subclassed_network_in_the_attribute_is_named_once_with_what_to_do():
    """The TFRS basic tutorial's style (``self.ranking_model = RankingModel()``, a subclass) was refused as
    "Attribute 'ranking_model' 'ranking_model' is a subclassed model ...; use from_tfrs_ranking", the function
    already called."""
    class RankingModel(k2.Model):
        def __init__(self):
            super().__init__(name="ranking_model")
            self.score = k2.layers.Dense(1)

        def call(self, features):
            return self.score(features["x"])

    class Tutorial(tfrs.models.Model):
        def __init__(self):
            super().__init__()
            self.ranking_model = RankingModel()
            self.task = tfrs.tasks.Ranking(loss=k2.losses.MeanSquaredError())

        def compute_loss(self, features, training=False):
            return self.task(labels=features["y"], predictions=self.ranking_model(features))

    model = Tutorial()
    model.ranking_model({"x": np.zeros((1, 3), "float32")})
    with pytest.raises(UserError) as error:
        from_tfrs_ranking(model)
    message = str(error.value)
    assert message.startswith("Attribute 'ranking_model' is a subclassed model (RankingModel)")
    assert "build that network as a functional or Sequential model" in message
    assert "from_tfrs_ranking" not in message


def test_a_tfrs_model_whose_call_adds_a_step_around_the_network_is_refused():
    """A TFRS model returning ``sigmoid(self.ranking_model(features))``: only the network was converted, and the
    converted model served its logits (0.60 / 1.14 / 0.89 against 0.65 / 0.76 / 0.71), without a word."""
    inputs = {"x": k2.Input((3,), name="x")}
    network = k2.Model(inputs, k2.layers.Dense(1, name="score")(inputs["x"]))

    class Wrapped(tfrs.models.Model):
        def __init__(self, squash: bool):
            super().__init__()
            self.ranking_model, self.squash = network, squash
            self.task = tfrs.tasks.Ranking(loss=k2.losses.BinaryCrossentropy())

        def call(self, features):
            scores = self.ranking_model(features)
            return tf.nn.sigmoid(scores) if self.squash else scores

        def compute_loss(self, features, training=False):
            return self.task(labels=features["y"], predictions=self(features))

    assert from_tfrs_ranking(Wrapped(squash=False)).count_params() == network.count_params()
    with pytest.raises(UserError, match=r"its call computes other values than 'ranking_model', the network "
                                        r"converted \(max abs difference"):
        from_tfrs_ranking(Wrapped(squash=True))
