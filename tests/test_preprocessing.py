"""Preprocessor: vocabulary fitting, dense transform, encoding and JSON persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tfafm.data import Preprocessor
from tfafm.data.formats import AVAZU, CRITEO, RawRow

NAN = math.nan


def criteo_row(label: float, dense: list[float], first_category: str) -> RawRow:
    return RawRow(label, tuple(dense + [0.0] * (13 - len(dense))), (first_category,) + ("",) * 25)


ROWS = [
    criteo_row(1.0, [3.0, -2.0, NAN], "b"),
    criteo_row(0.0, [0.0, 7.0, 1.0], "a"),
    criteo_row(0.0, [NAN, 100.0, 2.0], "b"),
    criteo_row(1.0, [1.0, -1.0, 0.0], "c"),
    criteo_row(0.0, [2.0, 5.0, 9.0], "a"),
    criteo_row(0.0, [2.0, 5.0, 9.0], ""),
    criteo_row(0.0, [2.0, 5.0, 9.0], "d"),
]


def test_vocabulary_by_descending_count_then_value():
    pre = Preprocessor.fit(CRITEO, ROWS)
    assert pre.vocabularies["C1"] == ["a", "b", "c", "d"]
    assert pre.vocabularies["C2"] == []  # only missing values
    features, _ = pre.encode(ROWS)
    assert features["C1"][:, 0].tolist() == [2, 1, 2, 3, 1, 0, 4]


def test_min_count_drops_rare_values_to_oov():
    pre = Preprocessor.fit(CRITEO, ROWS, min_count=2)
    assert pre.vocabularies["C1"] == ["a", "b"]
    assert pre.encode(ROWS)[0]["C1"][:, 0].tolist() == [2, 1, 2, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="min_count"):
        Preprocessor.fit(CRITEO, ROWS, min_count=0)


def test_dense_transform_matches_numpy_reference():
    features, labels = Preprocessor.fit(CRITEO, ROWS).encode(ROWS)
    raw = np.array([r.dense for r in ROWS])
    expected = np.log1p(np.where(np.isnan(raw), 0.0, np.maximum(raw, 0.0))).astype(np.float32)
    got = np.concatenate([features[f"I{i}"] for i in range(1, 14)], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.dtype == np.float32 and features["C1"].dtype == np.int32
    assert labels.dtype == np.float32 and labels[:, 0].tolist() == [r.label for r in ROWS]
    assert all(v.shape == (len(ROWS), 1) for v in features.values())


def test_unseen_values_map_to_zero():
    pre = Preprocessor.fit(CRITEO, ROWS)
    features, _ = pre.encode([criteo_row(0.0, [], "never-seen"), criteo_row(1.0, [], "a")])
    assert features["C1"][:, 0].tolist() == [0, 1]


def test_schema_dense_then_sparse_with_oov_slot():
    schema = Preprocessor.fit(CRITEO, ROWS).schema(embedding_dim=4)
    assert schema.names[:14] == tuple(f"I{i}" for i in range(1, 14)) + ("C1",)
    assert schema["C1"].vocabulary_size == 5 and schema["C2"].vocabulary_size == 1
    assert schema["C1"].embedding_dim == 4


def test_json_round_trip_gives_identical_encodings(tmp_path):
    pre = Preprocessor.fit(CRITEO, ROWS)
    path = str(tmp_path / "sub" / "preprocessor.json")
    pre.save(path)
    loaded = Preprocessor.load(path)
    probe = ROWS + [criteo_row(1.0, [-5.0, NAN], "zzz")]
    (f1, l1), (f2, l2) = pre.encode(probe), loaded.encode(probe)
    assert f1.keys() == f2.keys()
    for name in f1:
        np.testing.assert_array_equal(f1[name], f2[name])
    np.testing.assert_array_equal(l1, l2)
    assert loaded.schema() == pre.schema() and loaded.min_count == pre.min_count


def test_avazu_has_no_dense_features():
    row = RawRow(1.0, (), ("0", "1") + ("v",) * 21)
    pre = Preprocessor.fit(AVAZU, [row])
    features, labels = pre.encode([row])
    assert len(features) == 23 and all(v.dtype == np.int32 for v in features.values())
    assert pre.schema().dense == ()


def test_invalid_configs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="Unknown data format 'frappe'"):
        Preprocessor("frappe", {})
    with pytest.raises(ValueError, match="must cover the avazu fields"):
        Preprocessor("avazu", {"C1": []})
    with pytest.raises(ValueError, match="Unsupported preprocessor version"):
        Preprocessor.from_dict({"version": 99})
    with pytest.raises(FileNotFoundError, match="Preprocessor file not found"):
        Preprocessor.load(str(tmp_path / "missing.json"))
