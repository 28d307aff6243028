"""The frontier benchmark's bookkeeping: means over seeds, the smallest file within the tolerance,
and the int4-table competitor's byte estimate."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def frontier():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("bench_frontier", BENCHMARKS / "bench_frontier.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def _row(variant, ratio, size, auc, logloss=0.5):
    return {"variant": variant, "ratio": ratio, "bytes": size, "auc": auc, "logloss": logloss}


def test_table_averages_seeds_and_finds_the_smallest_file_within_tolerance(frontier):
    seeds = [
        [_row("float32", None, 4000, 0.700), _row("AFM", 4, 250, 0.6996), _row("AFM", 8, 125, 0.690),
         {"variant": "AFM", "ratio": 16, "bytes": None, "reach": 9.5}],
        [_row("float32", None, 4000, 0.710), _row("AFM", 4, 250, 0.7100), _row("AFM", 8, 125, 0.702),
         {"variant": "AFM", "ratio": 16, "bytes": None, "reach": 9.5}],
    ]
    lines, summary = frontier.table(seeds)
    afm4 = next(row for row in summary if row["label"] == "AFM x4")
    assert afm4["smaller"] == pytest.approx(16.0) and afm4["delta"] == pytest.approx(-0.0002)
    assert next(row for row in summary if row["label"] == "AFM x8")["delta"] == pytest.approx(-0.009)
    assert any("out of reach (largest: x9.5)" in line for line in lines)
    within = frontier.smallest_within(summary, 0.001)
    assert within == ["- float32: float32, 1.0x smaller than float32 (AUC +0.0000)",
                      "- AFM: AFM x4, 16.0x smaller than float32 (AUC -0.0002)"]


def test_int4_tables_estimate_counts_packed_rows_and_scales(frontier):
    ids = keras.Input((1,), dtype="int32")
    big, small = keras.layers.Embedding(100, 16), keras.layers.Embedding(10, 4)
    model = keras.Model(ids, keras.layers.Concatenate()([keras.layers.Flatten()(big(ids)),
                                                         keras.layers.Flatten()(small(ids))]))
    quantized, estimate = frontier.int4_tables(model, 10_000)
    # The 100 x 16 table: 1,600 int8 bytes become 100 x 8 packed bytes + 100 float32 scales.
    assert estimate == 10_000 - (1600 - (800 + 400))
    x = np.array([[3], [7]], dtype="int32")
    np.testing.assert_allclose(quantized.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.01)
    assert model.layers[1].quantization_mode is None  # the original is untouched


def test_plot_lays_panels_out_two_per_row(frontier, tmp_path):
    pytest.importorskip("matplotlib")
    summary = [{"label": "AFM x4", "variant": "AFM", "bytes": 1024.0, "smaller": 4.0, "delta": -0.001},
               {"label": "AFM x8", "variant": "AFM", "bytes": 512.0, "smaller": 8.0, "delta": -0.003}]
    path = tmp_path / "frontier.png"
    frontier.plot({"a": summary, "b": summary, "c": summary}, str(path))
    from PIL import Image

    width, height = Image.open(path).size
    assert width == 2 * 6 * 90 and height == 2 * 4 * 90  # 2 columns, 2 rows at 90 dpi


def test_criteo_attribution_sample_loads_with_its_own_held_out_rows(frontier):
    loaded = frontier.load("criteo_attribution", 0)
    if loaded is None:
        pytest.skip("../shared/data/criteo_attribution is absent")
    bundle, test = loaded
    assert [f.name for f in bundle.schema.sparse] == ["cat1", "cat4", "cat6", "cat8", "cat9"]
    assert not bundle.schema.dense
    held_out = sum(int(labels.shape[0]) for _, labels in test)
    assert held_out == 49_770


def test_synthetic_held_out_rows_come_from_the_training_generator(frontier):
    """Same seed and vocabularies as the training rows: the same hidden teacher (a different generator
    would make every model look like a coin flip on the held-out rows)."""
    bundle, test = frontier.load("synthetic", 2000)
    train_ids = next(iter(bundle.train))[0]
    test_ids = next(iter(test))[0]
    for feature in bundle.schema.sparse:
        assert int(np.max(test_ids[feature.name])) < feature.vocabulary_size
    assert set(train_ids) == set(test_ids)
