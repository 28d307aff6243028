"""compress(id_coverage=): the rows of rare ids merged into row 0 of their tables."""

import os

import keras
import numpy as np
import pytest

import tfafm
from tfafm import models
from tfafm.compression import rare_ids
from tfafm.compression.check import run_checked
from tfafm.compression.report import estimated_file_bytes
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.layers.lookup import InRangeEmbedding
from tfafm.models.layers import ClipToVocabulary, LinearTerms


def test_kept_rows_is_the_shortest_prefix_covering_the_share():
    counts = np.array([1.0, 5, 2, 1, 0, 1])  # total 10
    assert rare_ids.kept_rows(counts, 0.6) == 2  # 1 + 5 = 6
    assert rare_ids.kept_rows(counts, 0.61) == 3
    assert rare_ids.kept_rows(counts, 0.9) == 4
    assert rare_ids.kept_rows(counts, 0.95) == 6  # id 4 is never looked up, id 5 is
    assert rare_ids.kept_rows(counts, 1.0) == 6
    assert rare_ids.kept_rows(np.array([9.0, 1, 1]), 0.5) == 1  # row 0 alone
    assert rare_ids.kept_rows(np.zeros(4), 0.5) == 4  # nothing counted: nothing pruned


def test_the_shared_row_is_the_count_weighted_mean_of_row_zero_and_the_tail():
    table = np.arange(12, dtype=np.float32).reshape(6, 2)  # row i = (2i, 2i + 1)
    counts = np.array([1.0, 5, 2, 1, 0, 3])
    # Rows 0, 3, 4, 5 merge, weighted 1, 1, 0, 3: (0 + 6 + 0 + 3 * 10) / 5 = 7.2 and 8.2.
    np.testing.assert_allclose(rare_ids.shared_row(table, counts, 3), [7.2, 8.2], rtol=1e-6)
    np.testing.assert_array_equal(rare_ids.shared_row(table, np.array([0.0, 5, 2, 0, 0, 0]), 3), table[0])


def _toy(mask_zero=False, extra_reader=False):
    """Two fields of 6 ids behind one guard, each read by an embedding of 2 columns ("ones"-like
    hand-set rows), and a first-order term; ``extra_reader``: field 1's ids also feed an op."""
    ids = [keras.Input((1,), dtype="int32", name=f"f{i}") for i in range(2)]
    guarded = ClipToVocabulary([6, 6], name="guard")(ids)
    embeddings = [InRangeEmbedding(6, 2, mask_zero=mask_zero and i == 0, name=f"e{i}") for i in range(2)]
    vectors = [layer(guarded[i]) for i, layer in enumerate(embeddings)]
    linear = LinearTerms([6, 6], name="linear")(guarded)
    joined = keras.layers.Concatenate()(vectors)
    logit = keras.layers.Dense(1, kernel_initializer="ones", name="head")(joined)
    logit = keras.layers.Add()([logit, linear])
    if extra_reader:
        logit = logit + keras.ops.cast(keras.ops.expand_dims(guarded[1], -1), "float32")
    model = keras.Model(ids, logit)
    for i, layer in enumerate(embeddings):
        layer.embeddings.assign(np.arange(12, dtype=np.float32).reshape(6, 2) * (i + 1))
    model.get_layer("linear").weights_table.assign(np.arange(12, dtype=np.float32)[:, None] / 10)
    return model


def _rows(field0, field1):
    return {"f0": np.array(field0, dtype=np.int32)[:, None], "f1": np.array(field1, dtype=np.int32)[:, None]}


def test_find_fields_takes_only_fields_read_by_plain_lookups_and_linear_terms():
    (found,) = rare_ids.find_fields(_toy())
    assert found.guard.name == "guard" and found.indices == (0, 1)
    assert [[layer.name for layer in lookups] for lookups in found.embeddings] == [["e0"], ["e1"]]
    assert [(layer.name, indices) for layer, indices in found.linear] == [("linear", (0, 1))]
    assert rare_ids.find_fields(_toy(mask_zero=True))[0].indices == (1,)  # id 0 is masked there
    assert rare_ids.find_fields(_toy(extra_reader=True))[0].indices == (0,)  # an op reads field 1's ids
    assert rare_ids.find_fields(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])) == []


def test_prune_merges_the_tail_into_row_zero_and_the_guard_sends_it_there():
    model = _toy()
    # Field 0: ids 1, 2 carry 8 of 10 lookups; id 4 once and id 5 once. Field 1: all on id 1.
    calibration = _rows([1, 1, 1, 1, 1, 2, 2, 2, 4, 5], [1] * 10)
    counted = rare_ids.count(model, calibration)
    assert [list(c) for c in counted.counts[0].counts] == [[0, 5, 3, 0, 1, 1], [0, 10, 0, 0, 0, 0]]
    pruned, pruning = rare_ids.prune(model, counted, 0.8)
    assert (pruning.fields, pruning.rows_before, pruning.rows_after) == (2, 12, 5)  # 3 rows + 2 rows
    guard = pruned.get_layer("guard")
    # The guard lets 3 and 2 ids through and remembers the vocabularies they come from (what a schema matches).
    assert (guard.vocabulary_sizes, guard.pruned_from, guard.source_sizes) == ([3, 2], [6, 6], [6, 6])
    assert ClipToVocabulary.from_config(guard.get_config()).pruned_from == [6, 6]
    assert "pruned_from" not in model.get_layer("guard").get_config()
    with pytest.raises(tfafm.errors.UserError, match="pruned_from must be as many sizes as vocabulary_sizes"):
        ClipToVocabulary([3, 2], pruned_from=[6, 1])
    table = pruned.get_layer("e0").embeddings.numpy()
    # Row 0 (never counted) merges with ids 4 and 5 (once each): (8, 9) and (10, 11) -> (9, 10).
    np.testing.assert_allclose(table, [[9, 10], [2, 3], [4, 5]])
    np.testing.assert_allclose(pruned.get_layer("e1").embeddings.numpy(), [[0, 2], [4, 6]])  # nothing counted
    weights = pruned.get_layer("linear").weights_table.numpy()[:, 0]
    np.testing.assert_allclose(weights, [(0.4 + 0.5) / 2, 0.1, 0.2, 0.6, 0.7], rtol=1e-6)
    # Kept ids read what they read before; pruned and out-of-range ids read the shared row.
    kept = _rows([1, 2], [1, 1])
    np.testing.assert_allclose(pruned.predict(kept, verbose=0), model.predict(kept, verbose=0), rtol=1e-6)
    tail = pruned.predict(_rows([3, 4, 5, 0, 99, -1], [1] * 6), verbose=0)
    np.testing.assert_allclose(tail, np.full_like(tail, tail[0, 0]))
    np.testing.assert_allclose(tail[0, 0], 9 + 10 + 4 + 6 + 0.45 + 0.7, rtol=1e-6)
    # Everything counted in the first rows: nothing to prune, the model itself comes back.
    assert rare_ids.prune(model, counted, 1.0) == (model, None)
    with pytest.raises(tfafm.errors.UserError, match=r"id_coverage must be 'auto' or a share in \(0, 1\]"):
        rare_ids.prune(model, counted, 1.5)
    assert rare_ids.levels("auto") == rare_ids.AUTO_LEVELS and rare_ids.levels(0.9) == (0.9,)


@pytest.fixture(scope="module")
def trained():
    generator = SyntheticCriteo(seed=3, num_dense=2, num_sparse=4, max_vocabulary=20_000)
    features, labels = next(generator.batches(4096, 4096))
    validation = next(generator.batches(4096, 4096, split="validation"))
    keras.utils.set_random_seed(0)
    model = models.build("deepfm", generator.schema(embedding_dim=16), hidden_units=(16,))
    model.compile("adam", "binary_crossentropy")
    model.fit(features, labels, epochs=2, batch_size=256, verbose=0)
    return model, features, validation, sum(f.vocabulary_size for f in generator.schema().sparse)


def _guard_rows(model) -> int:
    return sum(next(layer for layer in model.layers if isinstance(layer, ClipToVocabulary)).vocabulary_sizes)


@pytest.mark.slow
def test_compress_at_a_coverage_counts_the_ratio_against_the_original_and_exports(trained, tmp_path):
    model, features, _, rows = trained
    small, report = tfafm.compress(model, features, target_ratio=12, quantization="dynamic", id_coverage=0.95,
                                   progress=False)
    (note,) = [note for note in report.notes if note.startswith("rare ids")]
    assert f"of {rows:,} table rows" in note and "95.0%" in note
    assert _guard_rows(small) < rows / 2  # synthetic ids are Zipf-like: most rows are rare
    assert report.params_before == model.count_params()
    ratio = estimated_file_bytes(model, "dynamic") / estimated_file_bytes(small, "dynamic")
    assert 12 <= ratio <= 12 * 1.15
    # The pruned model round-trips, and its LiteRT file agrees with it on ids past the kept rows.
    path = os.path.join(tmp_path, "small.keras")
    small.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(features, verbose=0),
                               small.predict(features, verbose=0), atol=1e-6)
    tfafm.export.litert(small, os.path.join(tmp_path, "small.tflite"), quantization="dynamic",
                        verification_data=features)
    with pytest.raises(tfafm.errors.UserError, match="id_coverage"):
        tfafm.compress(model, features, target_ratio=4, id_coverage=0, progress=False)


@pytest.mark.slow
def test_auto_coverage_is_chosen_on_validation_labels_and_keeps_every_row_without(trained):
    model, features, validation, rows = trained
    # No validation data: every row kept, and the report says why.
    whole, report = tfafm.compress(model, features, target_ratio=12, quantization="dynamic", progress=False)
    assert _guard_rows(whole) == rows
    assert any(note.startswith("rows of rare ids all kept: id_coverage='auto'") for note in report.notes)
    # With labels: every coverage tried at the ratio (and, under the default method="auto", weight SVD),
    # the best validation AUC kept, all of them reported.
    small, report = tfafm.compress(model, features, target_ratio=12, quantization="dynamic",
                                   validation_data=validation, progress=False)
    (note,) = [note for note in report.notes if "chosen on the validation AUC" in note]
    drops = dict(item.split(" ", 1) for item in note[note.index("(AUC drop: ") + 11:-1].split(", "))
    assert list(drops) == ["1", "0.99", "0.95", "0.9", "svd"]  # SVD, on every row, may not reach x12
    assert "out of reach" not in [drops[coverage] for coverage in ("1", "0.99", "0.95", "0.9")]
    chosen = report.accuracy["validation"]["outputs"]["prediction"]["auc_drop"]
    best = min(("1", "0.99", "0.95", "0.9"), key=lambda k: float(drops[k]))  # AFM's best coverage
    # SVD only where better beyond noise (tests/test_method_choice.py), so never with a larger drop.
    assert f"{chosen:+.4f}" == drops["svd" if report.method == "svd" else best]
    assert report.method == "afm" or float(drops["svd"]) < float(drops[best])
    assert note.startswith(f"method: {report.method.upper()}")
    assert (_guard_rows(small) == rows) == (report.method == "svd" or best == "1")
    ratio = estimated_file_bytes(model, "dynamic") / estimated_file_bytes(small, "dynamic")
    assert 12 <= ratio <= 12 * 1.15
    # The budget search weighs the coverages at every ratio it tries.
    searched, report = tfafm.compress(model, features, max_auc_drop=0.02, validation_data=validation,
                                      quantization="dynamic", progress=False)
    budget = report.accuracy["budget"]
    (note,) = [note for note in report.notes if "chosen on the validation AUC" in note]
    entries = [item.split(" ", 1) for item in note[note.index("(AUC drop: ") + 11:-1].split(", ")]
    assert [label for label, _ in entries] == ["1", "0.99", "0.95", "0.9", "svd"] and budget["evaluations"] >= 2
    assert all(value == "out of reach" or abs(float(value)) < 1 for _, value in entries)  # an AUC drop or none
    assert report.accuracy["validation"]["outputs"]["prediction"]["auc_drop"] <= 0.02


def test_check_compares_rows_whose_ids_kept_their_rows_and_refuses_a_moved_row(monkeypatch):
    model = _toy()
    calibration = _rows([1, 1, 1, 1, 1, 2, 2, 2, 4, 5], [1] * 10)
    counted = rare_ids.count(model, calibration)
    pruned, pruning = rare_ids.prune(model, counted, 0.8)
    rows = _rows([1, 2, 4, 0, 2], [1, 1, 1, 1, 3])  # rows 0 and 1 keep their rows; 4, row 0 and 3 do not
    reference = run_checked(model, rows, "the original")
    assert rare_ids.check(model, pruned, counted, pruning, rows, reference) == 2
    assert rare_ids.check(model, pruned, counted, pruning, _rows([4], [1]), {k: v[2:3] for k, v in
                                                                             reference.items()}) == 0
    # Sabotage: the kept rows shift by one (row i gets row i + 1). The check refuses the pruned model.
    honest = rare_ids._pruned_table
    monkeypatch.setattr(rare_ids, "_pruned_table", lambda table, counts, kept: honest(table[1:], counts[1:], kept))
    broken, pruning = rare_ids.prune(model, counted, 0.8)
    with pytest.raises(tfafm.errors.UserError, match=r"Pruning the rows of rare ids changed output .* on 2 sample"):
        rare_ids.check(model, broken, counted, pruning, rows, reference)


@pytest.mark.slow
def test_svd_weighed_under_auto_prunes_the_rows_a_numeric_coverage_asks_for(trained, monkeypatch):
    from tfafm.compression import budget

    model, features, validation, rows = trained
    monkeypatch.setattr(budget, "_beats", lambda *args: True)  # as where SVD validates better beyond noise
    small, report = tfafm.compress(model, features, target_ratio=6, quantization="dynamic", id_coverage=0.95,
                                   validation_data=validation, progress=False)
    assert report.method == "svd" and _guard_rows(small) < rows / 2  # the coverage asked for, SVD or not
    assert any(note.startswith("rare ids: ") and "95.0%" in note for note in report.notes)
    (note,) = [note for note in report.notes if note.startswith("method: SVD (id_coverage 0.95), chosen")]
    assert "(AUC drop: afm " in note and ", svd " in note
