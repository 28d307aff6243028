"""The raw-feature encoder maps values to ids exactly as the Keras 2 lookup layers did."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as k2

from tfafm.errors import UserError
from tfafm.interop import RawFeatureEncoder, from_keras2, schema_of
from tfafm.schema import SparseFeature

STRINGS = np.array(["a", "b", "", "zz", "c", "unseen", "b", "x y", "é"], dtype=object)
INTEGERS = np.array([0, 5, 7, -3, 9, 123456, 5, 7, 2**40])

LOOKUPS = {
    "string one oov": (STRINGS, lambda: k2.layers.StringLookup(vocabulary=["a", "b", "c", "é"])),
    "string mask and three oov": (STRINGS, lambda: k2.layers.StringLookup(
        vocabulary=["b", "c", "x y"], mask_token="", num_oov_indices=3)),
    "integer mask": (INTEGERS, lambda: k2.layers.IntegerLookup(vocabulary=[5, 7, 9], mask_token=0)),
    "integer two oov": (INTEGERS, lambda: k2.layers.IntegerLookup(vocabulary=[9, 5], num_oov_indices=2)),
    "hashing strings": (STRINGS, lambda: k2.layers.Hashing(num_bins=5)),
    "hashing salted with mask": (STRINGS, lambda: k2.layers.Hashing(num_bins=6, mask_value="", salt=[3, 8])),
    "hashing integers": (INTEGERS, lambda: k2.layers.Hashing(num_bins=7, mask_value=0)),
}


def _one_lookup_model(values: np.ndarray, make_lookup):
    dtype = tf.string if values.dtype == object else tf.int64
    inputs = k2.Input(shape=(1,), dtype=dtype, name="value")
    lookup = make_lookup()
    ids = lookup(inputs)
    size = lookup.num_bins if hasattr(lookup, "num_bins") else lookup.vocabulary_size()
    embedding = k2.layers.Embedding(size, 3, embeddings_initializer="random_normal", name="table")
    return lookup, k2.Model(inputs, k2.layers.Flatten()(embedding(ids)))


@pytest.mark.parametrize("case", sorted(LOOKUPS))
def test_ids_equal_the_keras2_layer_and_survive_json(case, tmp_path):
    values, make_lookup = LOOKUPS[case]
    lookup, original = _one_lookup_model(values, make_lookup)
    converted = from_keras2(original)
    encoder = converted.raw_feature_encoder
    expected_ids = lookup(tf.constant(values.reshape(-1, 1) if values.dtype != object
                                      else values.astype(str).reshape(-1, 1))).numpy()
    ids = encoder.encode({"value": values})["value"]
    assert ids.dtype == np.int32 and ids.shape == (len(values), 1)
    np.testing.assert_array_equal(ids, expected_ids)
    encoder.save(str(tmp_path / "raw.json"))
    json.loads((tmp_path / "raw.json").read_text())
    np.testing.assert_array_equal(RawFeatureEncoder.load(str(tmp_path / "raw.json")).encode({"value": values})["value"],
                                  expected_ids)
    np.testing.assert_allclose(converted.predict(encoder.encode({"value": values}), verbose=0),
                               original.predict(values.reshape(-1, 1), verbose=0), atol=1e-6)
    feature = schema_of(encoder)["value"]
    assert isinstance(feature, SparseFeature) and feature.vocabulary_size == original.get_layer("table").input_dim
    assert feature.embedding_dim == 3


def test_a_value_outside_a_vocabulary_without_oov_index_is_a_clear_error():
    _, original = _one_lookup_model(STRINGS, lambda: k2.layers.StringLookup(vocabulary=["a"], num_oov_indices=0))
    encoder = from_keras2(original).raw_feature_encoder
    assert encoder.encode({"value": np.array(["a", "a"], dtype=object)})["value"].ravel().tolist() == [0, 0]
    with pytest.raises(UserError, match="'b' is not in the vocabulary"):
        encoder.encode({"value": np.array(["a", "b"], dtype=object)})


def test_missing_or_misshapen_raw_features_are_named():
    _, original = _one_lookup_model(STRINGS, lambda: k2.layers.StringLookup(vocabulary=["a"]))
    encoder = from_keras2(original).raw_feature_encoder
    with pytest.raises(UserError, match="no 'value'"):
        encoder.encode({"other": STRINGS})
    with pytest.raises(UserError, match=r"shape \(9, 2\)"):
        encoder.encode({"value": np.stack([STRINGS, STRINGS], axis=1)})
