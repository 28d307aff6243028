"""The export benchmark: realistic inputs, subprocess measurements, ratio table."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tfafm
import tfafm.export as export
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.export import bench

pytestmark = pytest.mark.slow

GEN = SyntheticCriteo(max_vocabulary=2000, num_sparse=6, num_dense=3)
SCHEMA = GEN.schema(8)


def test_sample_features_are_realistic_and_never_zero():
    features = bench.sample_features(SCHEMA, 500, seed=3)
    assert set(features) == set(SCHEMA.names)
    for feature in SCHEMA.sparse:
        ids = features[feature.name]
        assert ids.shape == (500, 1) and ids.dtype == np.int32
        assert ids.min() >= 1 and ids.max() < feature.vocabulary_size
    big = SCHEMA.sparse[-1].name
    assert np.mean(features[big] <= 10) > 0.3  # Zipf: the head ids dominate
    for feature in SCHEMA.dense:
        values = features[feature.name]
        assert values.dtype == np.float32 and values.min() > 0
    again = bench.sample_features(SCHEMA.to_dict(), 500, seed=3)
    assert all(np.array_equal(features[k], again[k]) for k in features)


def test_model_kind_rejects_unknown(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="Cannot benchmark"):
        bench.model_kind(str(tmp_path / "x.txt"))


@pytest.fixture(scope="module")
def two_tflite(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bench")
    model = tfafm.models.build("deepfm", SCHEMA, hidden_units=(32, 16))
    compressed, _ = tfafm.compress(
        model, GEN.dataset(1024, 256, split="calibration"), method="afm", target_ratio=3, progress=False
    )
    return [
        export.litert(model, str(directory / "original.tflite"), fuse=False),
        export.litert(compressed, str(directory / "compressed.tflite"), fuse=False),
    ]


def test_benchmark_two_tflite_files(two_tflite):
    rows = bench.benchmark(two_tflite, SCHEMA, batch_sizes=(1, 32), threads=(1,), warmup=2, iterations=20)
    assert [(r["name"], r["batch_size"]) for r in rows] == [
        ("original.tflite", 1), ("original.tflite", 32), ("compressed.tflite", 1), ("compressed.tflite", 32)
    ]
    for r in rows:
        assert r["kind"] == "tflite" and r["threads"] == 1
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["throughput_rps"] > 0
        assert r["size_bytes"] > 0 and r["peak_rss_mb"] > 0
    assert rows[2]["size_bytes"] < rows[0]["size_bytes"]
    with_ratios = bench.add_ratios(rows)
    for r in with_ratios[:2]:
        assert r["size_ratio"] == 1.0 and r["p50_ratio"] == 1.0 and r["throughput_ratio"] == 1.0
    assert math.isclose(with_ratios[2]["size_ratio"], rows[2]["size_bytes"] / rows[0]["size_bytes"])
    table = bench.results_table(rows)
    assert table.count("\n") == 1 + len(rows)
    assert f"| original.tflite | tflite | {rows[0]['ops']} | 1 | 1 |" in table and "| 1.00 | 1.00 | 1.00 |" in table
    assert rows[0]["ops"] == len(export.litert_ops(two_tflite[0])) > 0


def test_files_of_the_same_name_get_rows_and_ratios_of_their_own(two_tflite, tmp_path, capsys):
    """``tfafm bench run1/model.tflite run2/model.tflite``: both rows were named model.tflite and the ratios
    taken against the second file (the first row showed 7.36x its own size)."""
    import shutil

    from tfafm_cli import main

    for folder, source in (("a", two_tflite[0]), ("b", two_tflite[1])):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "model.tflite")
    paths = [str(tmp_path / "a" / "model.tflite"), str(tmp_path / "b" / "model.tflite")]
    assert bench.display_names(paths) == paths
    assert bench.display_names([paths[0], paths[0], two_tflite[1]]) == [paths[0], f"{paths[0]} #2",
                                                                        "compressed.tflite"]
    assert main(["bench", *paths, "--batch-sizes", "1", "--threads", "1", "--iterations", "5", "--format", "json",
                 "--quiet"]) == 0
    rows = __import__("json").loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == paths and rows[0]["size_ratio"] == 1.0
    assert math.isclose(rows[1]["size_ratio"], rows[1]["size_bytes"] / rows[0]["size_bytes"]) and \
        rows[1]["size_ratio"] < 1
    with pytest.raises(tfafm.errors.UserError, match="names must differ"):
        bench.benchmark(two_tflite, SCHEMA, names=["m", "m"], batch_sizes=(1,), threads=(1,), iterations=2)


def test_benchmark_reads_the_interface_stored_in_the_file(two_tflite):
    rows = bench.benchmark(two_tflite, batch_sizes=(1,), threads=(1,), warmup=1, iterations=5)
    assert len(rows) == 2 and all(r["p50_ms"] > 0 for r in rows)


def test_benchmark_keras_model_and_saved_model(two_tflite, tmp_path):
    model = tfafm.models.build("widedeep", SCHEMA, hidden_units=(16,))
    saved = export.saved_model(model, str(tmp_path / "sm"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model.save(str(run_dir / "model.keras"))
    rows = bench.benchmark([saved, str(run_dir), model], SCHEMA, batch_sizes=(4,), threads=(1,),
                           warmup=1, iterations=5, names=["sm", "run", "memory"])
    assert [r["kind"] for r in rows] == ["saved_model", "keras", "keras"]
    assert all(r["p50_ms"] > 0 and r["size_bytes"] > 0 for r in rows)
