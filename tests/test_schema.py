"""Feature schema: validation and JSON round trips."""

import json

import pytest

from tfafm.schema import DenseFeature, Schema, SparseFeature


def _schema():
    return Schema([DenseFeature("I1"), SparseFeature("C1", 100, 8), SparseFeature("C2", 7, 4)])


def test_json_round_trip_keeps_order_and_fields(tmp_path):
    schema = _schema()
    assert Schema.from_json(schema.to_json()) == schema
    path = str(tmp_path / "schema.json")
    schema.save(path)
    assert Schema.load(path) == schema
    assert json.loads(open(path).read())["features"][1] == {
        "type": "sparse", "name": "C1", "vocabulary_size": 100, "embedding_dim": 8}


def test_accessors():
    schema = _schema()
    assert schema.names == ("I1", "C1", "C2")
    assert [f.name for f in schema.dense] == ["I1"] and [f.name for f in schema.sparse] == ["C1", "C2"]
    assert schema["C2"].vocabulary_size == 7
    assert {f.embedding_dim for f in schema.with_embedding_dim(16).sparse} == {16}
    with pytest.raises(KeyError, match="C9"):
        schema["C9"]


@pytest.mark.parametrize("build, message", [
    (lambda: Schema([DenseFeature("a"), DenseFeature("a")]), "duplicate feature names: \\['a'\\]"),
    (lambda: Schema([]), "at least one feature"),
    (lambda: SparseFeature("c", 0), "vocabulary_size must be >= 1"),
    (lambda: SparseFeature("c", 5, 0), "embedding_dim must be >= 1"),
    (lambda: DenseFeature("has space"), "letters, digits and underscores"),
    (lambda: Schema.from_dict({"features": [{"type": "wide", "name": "x"}]}), "type must be 'sparse' or 'dense'"),
])
def test_bad_schemas_name_the_problem(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_missing_schema_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Schema.load(str(tmp_path / "nope.json"))
