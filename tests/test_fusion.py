"""fuse(): folding low-rank embedding projections into the Dense layers they feed."""

import os
import tempfile

import keras
import numpy as np
import pytest

import tfafm
from tfafm import models
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.layers.low_rank import LowRankDense, LowRankEmbedding
from tfafm.models.layers import LinearTerms

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    generator = SyntheticCriteo(seed=5, num_dense=3, num_sparse=5, max_vocabulary=400)
    features, labels = next(generator.batches(1024, 1024))
    return generator.schema(embedding_dim=6), features, labels


def _compressed(name, data, **options):
    schema, features, labels = data
    keras.utils.set_random_seed(1)
    model = models.build(name, schema, hidden_units=(24, 12))
    model.compile("adam", "binary_crossentropy")
    model.fit(features, labels, epochs=1, batch_size=256, verbose=0)
    compressed, _ = tfafm.compress(model, features, progress=False, **{"target_ratio": 2, **options})
    return compressed


@pytest.mark.parametrize("name", models.available())
def test_fused_model_predicts_like_the_compressed_one(name, data):
    features = data[1]
    compressed = _compressed(name, data)
    fused, _ = tfafm.fuse(compressed)
    np.testing.assert_allclose(fused.predict(features, verbose=0),
                               compressed.predict(features, verbose=0), atol=1e-5)
    assert not any(isinstance(layer, (LowRankEmbedding, keras.layers.Embedding, LinearTerms))
                   for layer in fused.layers)
    # One lookup reads every field's table as whole rows, one gather per width, and where the model has
    # first-order weights, each field's weight is one more column of its own rows.
    first_order = any(isinstance(layer, LinearTerms) for layer in compressed.layers)
    widths = [layer.rank if isinstance(layer, LowRankEmbedding) else layer.output_dim
              for layer in compressed.layers if isinstance(layer, (LowRankEmbedding, keras.layers.Embedding))]
    merged = [layer for layer in fused.layers if isinstance(layer, tfafm.layers.lookup.MergedEmbedding)]
    assert len(merged) == 1 and merged[0].layout == "rows"
    assert merged[0].widths == sorted(width + first_order for width in widths)
    assert len(merged[0].tables) == len(set(widths)) and sorted(merged[0].sources) == list(range(len(widths)))


def _every_field(schema) -> dict[str, int]:
    """Ranks factoring every field (the FM runs on codes only when all its fields are projected codes)."""
    return {f"{f.name}_embedding": 2 + i % 3 for i, f in enumerate(schema.sparse)}


def test_deepfm_first_dense_reads_the_k_wide_rows(data):
    schema, features = data[0], data[1]
    chosen = _every_field(schema)
    compressed = _compressed("deepfm", data, ranks=chosen, target_ratio=None)
    ranks = {layer.name: layer.rank for layer in compressed.layers if isinstance(layer, LowRankEmbedding)}
    assert ranks == chosen
    fused, _ = tfafm.fuse(compressed)
    fields = len(schema.sparse)

    # All tables are one lookup of whole rows (one gather per width): each field's row is its code, then its
    # first-order weight, stored at the peak of its width's codes (one int8 scale serves both).
    tables = fused.get_layer("sparse_ids_tables")
    assert isinstance(tables, tfafm.layers.lookup.MergedEmbedding)
    assert tables.widths == sorted(rank + 1 for rank in ranks.values())
    assert len(tables.tables) == len(set(ranks.values()))
    for table in tables.tables:
        values = table.numpy()
        assert np.max(np.abs(values[:, -1])) == pytest.approx(np.max(np.abs(values[:, :-1])), rel=1e-6)
    weight_columns = np.cumsum(tables.widths) - 1
    codes = sum(ranks.values())
    # The first Dense reads the lookup's output whole beside the dense features: the k-wide codes, no
    # projection, and zero rows for the first-order columns (no slice, no concatenation of pieces).
    first = fused.get_layer("deep_dense_0")
    assert first.kernel.shape[0] == codes + fields + len(schema.dense)
    assert not np.any(first.kernel.numpy()[weight_columns])
    # One Dense computes the whole first-order term (linear_terms + linear_dense, which an Add summed) from
    # the same input: the weight columns (divided by their factors) and the dense features.
    linear = fused.get_layer("linear_logit").kernel.numpy()[:, 0]
    assert np.flatnonzero(linear[:codes + fields]).tolist() == weight_columns.tolist()
    np.testing.assert_allclose(linear[codes + fields:], compressed.get_layer("linear_dense").kernel.numpy()[:, 0],
                               rtol=1e-6)
    first_order = [keras.Model(m.inputs, m.get_layer("linear_logit").output).predict(features, verbose=0)
                   for m in (fused, compressed)]
    np.testing.assert_allclose(first_order[0], first_order[1], rtol=1e-5, atol=1e-6)
    assert not [layer for layer in fused.layers if isinstance(layer, keras.layers.Embedding)]
    # The FM runs on the codes themselves: no d-wide field vector is ever formed.
    fm = fused.get_layer("fm")
    assert isinstance(fm, tfafm.models.layers.CodeFactorizationMachine)
    # The one-unit logits are a product and a sum each (tfafm.layers.DotProductDense), not a matmul.
    assert all(type(fused.get_layer(name)) is tfafm.layers.DotProductDense for name in ("linear_logit", "deep_logit"))
    assert fm.kernel.shape == (codes + fields, 6 + codes) and not np.any(fm.kernel.numpy()[weight_columns])
    assert not [layer for layer in fused.layers if "projection" in layer.name]
    # No weight more than the compressed model's but those zero rows (one per field in each of the two).
    assert fused.count_params() <= compressed.count_params() + fields * (first.kernel.shape[1] + fm.kernel.shape[1])


def test_fusion_folds_into_low_rank_dense_and_round_trips(data, tmp_path):
    features, labels = data[1], data[2]
    compressed = _compressed("widedeep", data)
    assert isinstance(compressed.get_layer("deep_dense_0"), LowRankDense)
    fused, _ = tfafm.fuse(compressed)
    assert isinstance(fused.get_layer("deep_dense_0"), LowRankDense)
    # widedeep's embeddings feed only the MLP: no projection is left at all.
    assert not [layer for layer in fused.layers if layer.name.endswith("_projection")]

    path = str(tmp_path / "fused.keras")
    fused.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(features, verbose=0),
                               fused.predict(features, verbose=0), atol=1e-6)
    reloaded.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    losses = reloaded.fit(features, labels, epochs=3, batch_size=256, verbose=0).history["loss"]
    assert losses[-1] < losses[0]


def test_interaction_inputs_come_from_one_block_diagonal_matmul(data):
    features = data[1]
    compressed = _compressed("xdeepfm", data, include=("embeddings",), target_ratio=None, energy=0.5)
    fused, report = tfafm.fuse(compressed)
    joint = fused.get_layer("fields_projections")  # the CIN's field matrix
    ranks = [layer.rank for layer in compressed.layers if isinstance(layer, LowRankEmbedding)]
    fields = len(data[0].sparse)  # fields left whole join with an identity block
    # It reads the lookup's output whole: each field's code (or row), then its first-order weight (zero rows).
    assert ranks and joint.kernel.shape == (sum(ranks) + 6 * (fields - len(ranks)) + fields, 6 * fields)
    weight_columns = np.cumsum(fused.get_layer("sparse_ids_tables").widths) - 1
    assert not np.any(joint.kernel.numpy()[weight_columns])
    assert any("computed at once" in note for note in report.notes)
    np.testing.assert_allclose(fused.predict(features, verbose=0), compressed.predict(features, verbose=0), atol=1e-5)


def test_fields_left_whole_skip_the_projection_when_its_zeros_are_many(data, monkeypatch, tmp_path):
    """Past SPARSE_LIMIT, a field left whole reaches the interaction as its row as read (no identity block,
    no per-column gather); the factored fields are projected at once, and the stacks put back in field order."""
    from tfafm.compression.fusion import _Fuser

    schema, features, _ = data
    chosen = _every_field(schema)
    del chosen[list(chosen)[2]]  # the middle field left whole
    compressed = _compressed("xdeepfm", data, ranks=chosen, target_ratio=None)
    ranks = list(chosen.values())
    factored_zeros = 4 * sum(ranks) * 6 * (len(ranks) - 1)
    all_zeros = 4 * (sum(ranks) + 6) * 6 * len(ranks)
    monkeypatch.setattr(_Fuser, "SPARSE_LIMIT", (factored_zeros + all_zeros) // 2)
    fused, report = tfafm.fuse(compressed)
    joint = fused.get_layer("fields_projections")  # the CIN's field matrix, for the factored fields only
    kernel = joint.kernel.numpy()  # it reads their codes in one slice, first-order columns between them
    assert kernel.shape[1] == 6 * len(ranks) and np.count_nonzero(np.any(kernel != 0, axis=1)) == sum(ranks)
    assert kernel.shape[0] < sum(ranks) + len(ranks)
    assert not [layer for layer in fused.layers if isinstance(layer, tfafm.models.layers.CodeProjections)]
    assert any("computed at once" in note for note in report.notes)
    np.testing.assert_allclose(fused.predict(features, verbose=0), compressed.predict(features, verbose=0), atol=1e-5)
    path = tfafm.export.litert(compressed, str(tmp_path / "cin.tflite"), verification_data=features)
    np.testing.assert_allclose(tfafm.export.LiteRTRunner(path)(features), compressed.predict(features, verbose=0),
                               atol=1e-5)


def test_fields_left_whole_join_the_codes(data):
    schema, features, _ = data
    chosen = _every_field(schema)
    whole = chosen.popitem()[0]
    compressed = _compressed("deepfm", data, ranks=chosen, target_ratio=None)
    assert type(compressed.get_layer(whole)) is not LowRankEmbedding
    fused, _ = tfafm.fuse(compressed)
    fm = fused.get_layer("fm")
    assert isinstance(fm, tfafm.models.layers.CodeFactorizationMachine)
    codes = sum(chosen.values()) + 6  # the whole field's 6-wide vector as its code
    raw = fm.raw_columns  # the whole field: its 6 values squared as they are, no root
    assert raw == list(range(raw[0], raw[0] + 6))
    assert fm.kernel.shape == (codes + len(schema.sparse), 6 + codes - 6)  # first-order columns: zero rows
    np.testing.assert_allclose(fused.predict(features, verbose=0), compressed.predict(features, verbose=0), atol=1e-5)


def test_fm_on_codes_stays_exact_after_fine_tuning_breaks_orthonormality(data):
    schema, features, labels = data
    compressed = _compressed("deepfm", data, ranks=_every_field(schema), target_ratio=None)
    compressed.compile(keras.optimizers.Adam(0.05), "binary_crossentropy")
    compressed.fit(features, labels, epochs=2, batch_size=256, verbose=0)
    fused, _ = tfafm.fuse(compressed)
    np.testing.assert_allclose(fused.predict(features, verbose=0), compressed.predict(features, verbose=0), atol=1e-5)


def test_fuse_without_low_rank_layers_is_a_faithful_copy(data):
    schema, features, _ = data
    model = models.build("dcn", schema, hidden_units=(8,))
    copy, _ = tfafm.fuse(model)
    assert copy is not model
    np.testing.assert_allclose(copy.predict(features, verbose=0), model.predict(features, verbose=0), atol=1e-6)


def test_fm_runs_on_codes_only_when_its_root_stores_few_zeros():
    """The FM on codes stores a (K, K_f) root, block-diagonal over the factored fields' codes: with 26
    factored fields, 18 of them 12 wide, its zeros would outweigh the file bytes the tables saved."""
    from tfafm.compression.fusion import _Fuser, _fm_on_codes_pays, _Segment

    def fields(ranks):
        return [_Segment(None, np.zeros((k, 16)), np.zeros(16)) for k in ranks]

    assert _fm_on_codes_pays(fields([4, 3, 2, 2]), _Fuser.SPARSE_LIMIT)
    assert not _fm_on_codes_pays(fields([12] * 18 + [5, 5, 4, 4, 3, 3, 4, 9]), _Fuser.SPARSE_LIMIT)
    # Fields left whole (identity codes) need no root: 18 of them beside 8 small codes pay.
    whole = [_Segment(None, np.eye(16), np.zeros(16)) for _ in range(18)]
    assert _fm_on_codes_pays(whole + fields([5, 5, 4, 4, 3, 3, 4, 9]), _Fuser.SPARSE_LIMIT)


@pytest.mark.parametrize("share, on_codes", [(0.25, True), (0.0, False)])
def test_fm_on_codes_may_store_zeros_up_to_a_share_of_the_model(data, monkeypatch, share, on_codes):
    """Past the fixed limit, the FM's root may still store zeros up to FM_ZERO_SHARE of the model's
    weights (3 ops instead of the per-field projections and the FM over d-wide fields)."""
    from tfafm.compression.fusion import _Fuser
    from tfafm.models.layers import CodeFactorizationMachine

    compressed = _compressed("deepfm", data, ranks=_every_field(data[0]), target_ratio=None)
    ranks = list(_every_field(data[0]).values())
    zero_bytes = 4 * (sum(ranks) ** 2 - sum(k * k for k in ranks))
    assert 0 < zero_bytes <= 4 * compressed.count_params() * 0.25
    monkeypatch.setattr(_Fuser, "SPARSE_LIMIT", 0)
    monkeypatch.setattr(_Fuser, "FM_ZERO_SHARE", share)
    fused, _ = tfafm.fuse(compressed)
    assert any(isinstance(layer, CodeFactorizationMachine) for layer in fused.layers) == on_codes
    np.testing.assert_allclose(fused.predict(data[1], verbose=0), compressed.predict(data[1], verbose=0),
                               atol=1e-5)


def test_codes_split_by_fields_left_whole_are_projected_run_by_run(data, monkeypatch):
    """A consumer fusion cannot fold (DCN-V2's cross network) gets its vectors from one projection per
    run of adjacent codes, never from a block-diagonal matrix storing zeros: the fused model holds no
    more weights than the compressed one but the zero rows padding each run's codes to its widest."""
    from tfafm.compression.fusion import _Fuser

    schema, features, _ = data
    chosen = _every_field(schema)
    del chosen[list(chosen)[2]]  # a field left whole between factored ones
    compressed = _compressed("dcnv2", data, ranks=chosen, target_ratio=None)
    monkeypatch.setattr(_Fuser, "SPARSE_LIMIT", 0)
    fused, _ = tfafm.fuse(compressed)
    ranks = list(chosen.values())
    runs = [ranks[:2], ranks[2:]]  # the codes before and after the whole field
    padding = 6 * sum(max(run) - rank for run in runs for rank in run)  # CodeProjections pads to the widest code
    assert fused.count_params() <= compressed.count_params() + padding
    np.testing.assert_allclose(fused.predict(features, verbose=0), compressed.predict(features, verbose=0), atol=1e-5)


def test_fields_are_read_as_whole_rows_one_gather_per_width(tmp_path):
    # One field factored (3 wide), five left whole (16 wide), each with its first-order weight: two gathers of
    # whole rows, from a (V_0, 4) and a (sum V, 17) table, the guard stacking the ids in that order.
    generator = SyntheticCriteo(seed=6, num_dense=2, num_sparse=6, max_vocabulary=300)
    schema = generator.schema(embedding_dim=16)
    features, labels = next(generator.batches(1024, 1024))
    keras.utils.set_random_seed(0)
    model = models.build("deepfm", schema, hidden_units=(16,))
    model.compile("adam", "binary_crossentropy")
    model.fit(features, labels, epochs=1, batch_size=256, verbose=0)
    compressed, _ = tfafm.compress(model, features, ranks={f"{schema.sparse[0].name}_embedding": 3}, progress=False)
    fused, report = tfafm.fuse(compressed)
    merged = fused.get_layer("sparse_ids_tables")
    sizes = [f.vocabulary_size for f in schema.sparse]
    assert merged.widths == [4] + [17] * 5 and merged.vocabulary_sizes == sizes and merged.sources == list(range(6))
    assert [tuple(t.shape) for t in merged.tables] == [(sizes[0], 4), (sum(sizes[1:]), 17)]
    assert "sparse_ids_tables: the tables of 6 fields and their first-order weights read by 2 gathers of whole " \
           "rows, one per width" in report.notes
    np.testing.assert_allclose(fused.predict(features, verbose=0), compressed.predict(features, verbose=0),
                               atol=1e-5)
    # Out-of-range ids still read row 0 of their own field, in Keras and in the LiteRT file (verified there).
    bad = dict(features)
    for field in schema.sparse:
        ids = np.array(features[field.name])
        ids[1::2] = field.vocabulary_size + 7
        bad[field.name] = ids
    path = tfafm.export.litert(compressed, str(tmp_path / "rows.tflite"), verification_data=bad)
    np.testing.assert_allclose(tfafm.export.LiteRTRunner(path)(bad), compressed.predict(bad, verbose=0), atol=1e-5)


def test_a_sum_of_linear_dense_layers_is_one_dense():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    ones = {"kernel_initializer": "ones", "bias_initializer": "ones"}
    left = keras.layers.Dense(1, name="left", **ones)(a)
    right = keras.layers.Dense(1, name="right", **ones)(keras.layers.Concatenate(name="ab")([a, b]))
    total = keras.layers.Add(name="total")([left, right])
    x = [np.array([[1.0, 2.0, 3.0]], "float32"), np.array([[10.0, 20.0]], "float32")]
    # left: 1 + 2 + 3 + 1 = 7; right: 6 + 30 + 1 = 37; their sum 44, from one Dense over [a | a b].
    fused, report = tfafm.fuse(keras.Model([a, b], total))
    assert [layer.name for layer in fused.layers if isinstance(layer, keras.layers.Dense)] == ["total"]
    assert "total: the sum of 2 linear Dense layers computed by one" in report.notes
    np.testing.assert_allclose(np.asarray(fused(x)), [[44.0]])
    # Not when a term is read elsewhere too (it would be computed twice), nor with an activation.
    fused, report = tfafm.fuse(keras.Model([a, b], [total, left]))
    assert not any("linear Dense" in note for note in report.notes)
    np.testing.assert_allclose(np.asarray(fused(x)[0]), [[44.0]])
    relu = keras.layers.Dense(1, activation="relu", name="relu", **ones)(b)
    fused, report = tfafm.fuse(keras.Model([a, b], keras.layers.Add(name="mixed")([left, relu])))
    assert not any("linear Dense" in note for note in report.notes)
    np.testing.assert_allclose(np.asarray(fused(x)), [[7.0 + 31.0]])


def test_past_max_runs_widths_the_narrowest_are_padded_to_the_next(monkeypatch):
    """Ten fields of ten code widths: the merged lookup would read them by ten gathers (3 ops each); past
    MAX_RUNS the width whose zero padding to the next costs the fewest values is padded to it."""
    from tfafm.compression.fusion import _Fuser

    generator = SyntheticCriteo(seed=7, num_dense=1, num_sparse=6, max_vocabulary=500)
    schema = generator.schema(embedding_dim=8)
    features, labels = next(generator.batches(512, 512))
    keras.utils.set_random_seed(0)
    model = models.build("deepfm", schema, hidden_units=(8,))
    ranks = {f"{f.name}_embedding": rank for f, rank in zip(schema.sparse, (1, 2, 3, 4, 5, 6))}
    compressed, _ = tfafm.compress(model, features, ranks=ranks, target_ratio=None, progress=False)
    monkeypatch.setattr(_Fuser, "MAX_RUNS", 4)
    fused, _ = tfafm.fuse(compressed)
    merged = fused.get_layer("sparse_ids_tables")
    sizes = {f"{f.name}_embedding": f.vocabulary_size for f in schema.sparse}
    widths = [rank + 1 for rank in ranks.values()]  # each code and its first-order weight: 2 to 7 wide
    assert len(merged.tables) == 4 and set(merged.widths) <= set(widths) and len(set(merged.widths)) == 4
    # Padded, never cut: every field keeps at least its width, and far fewer zeros are added than padding all
    # to the widest would.
    own = sum(sizes[name] * (rank + 1) for name, rank in ranks.items())
    padded = sum(v * w for v, w in zip(merged.vocabulary_sizes, merged.widths)) - own
    assert all(a >= b for a, b in zip(sorted(merged.widths), sorted(widths))) and 0 < padded < sum(sizes.values()) * max(widths) - own
    assert sorted(merged.vocabulary_sizes) == sorted(sizes.values())
    np.testing.assert_allclose(fused.predict(features, verbose=0), compressed.predict(features, verbose=0), atol=1e-5)


def test_two_tables_reading_one_guarded_field_are_merged():
    """Two lookups of one guarded field (a wide and a narrow table of the same ids): the merge plan sorted
    (field, layer) pairs and compared the layers on a tie, a TypeError from fuse() and the default export."""
    from tfafm.layers.lookup import InRangeEmbedding
    from tfafm.models.layers import ClipToVocabulary

    a, b = keras.Input((1,), dtype="int32", name="a"), keras.Input((1,), dtype="int32", name="b")
    guarded = ClipToVocabulary([50, 60], name="guard")([a, b])
    tables = [InRangeEmbedding(50, 8, name="e1")(guarded[0]), InRangeEmbedding(50, 4, name="e2")(guarded[0]),
              InRangeEmbedding(60, 8, name="e3")(guarded[1])]
    model = keras.Model([a, b], keras.layers.Dense(1, activation="sigmoid")(keras.layers.Concatenate()(tables)))
    x = [np.array([[1], [70], [-2]], "int32"), np.array([[2], [-3], [59]], "int32")]  # out of range -> row 0
    fused, _ = tfafm.fuse(model)
    assert sorted(fused.get_layer("guard_tables").sources) == [0, 0, 1]
    np.testing.assert_allclose(np.asarray(fused(x)), np.asarray(model(x)), atol=1e-6)


def test_fields_left_whole_around_a_padded_one_are_read_inside_the_output():
    """Two fields left whole with a padded factored field between them in one width's run, the last of them
    the last table: their strided read ran past the end of the merged output (fuse() failed, the LiteRT
    export too, with XNNPACK's 'failed to reshape')."""
    from tfafm.schema import DenseFeature, Schema, SparseFeature

    sizes = [200, 40, 200] + [300] * 7
    schema = Schema([DenseFeature("x0")] + [SparseFeature(f"c{i}", v, 32) for i, v in enumerate(sizes)])
    rng = np.random.default_rng(0)
    features = {"x0": rng.normal(size=(256, 1)).astype("float32"),
                **{f"c{i}": rng.integers(0, v, size=(256, 1)).astype("int32") for i, v in enumerate(sizes)}}
    keras.utils.set_random_seed(0)
    model = models.build("autoint", schema, hidden_units=(8,))
    ranks = {"c1_embedding": 31, **{f"c{i}_embedding": i - 2 for i in range(3, 10)}}  # c0 and c2 left whole
    compressed, _ = tfafm.compress(model, features, ranks=ranks, target_ratio=None, progress=False)
    fused, _ = tfafm.fuse(compressed)
    assert fused.get_layer("sparse_ids_tables").widths[-3:] == [32, 32, 32]  # c1 padded to the whole fields' width
    np.testing.assert_allclose(fused.predict(features, verbose=0), compressed.predict(features, verbose=0), atol=1e-5)


def test_one_unit_dense_becomes_a_product_and_a_sum_where_its_kernel_stays_float():
    """A Dense(1) is a DotProductDense in the fused model (same output), unless its kernel has the
    1024 values from which dynamic-int8 files store it in int8 (a product's vector would stay float32)."""
    narrow, wide = keras.Input((6,), name="narrow"), keras.Input((1024,), name="wide")
    outputs = [keras.layers.Dense(1, activation="sigmoid", name="head")(narrow),
               keras.layers.Dense(1, name="wide_head")(wide), keras.layers.Dense(2, name="pair")(narrow)]
    model = keras.Model([narrow, wide], outputs)
    fused, _ = tfafm.fuse(model)
    assert type(fused.get_layer("head")) is tfafm.layers.DotProductDense
    assert type(fused.get_layer("wide_head")) is keras.layers.Dense
    assert type(fused.get_layer("pair")) is keras.layers.Dense
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(4, 6)).astype("float32"), rng.normal(size=(4, 1024)).astype("float32")]
    for got, want in zip(fused.predict(x, verbose=0), model.predict(x, verbose=0)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_one_unit_dense_stays_fully_connected_for_a_full_integer_file():
    """Full-integer int8 would round a DotProductDense's product to int8 before its sum (a fully connected
    layer sums in int32): fuse(model, "int8") keeps the Dense, and the int8 LiteRT file has no SUM."""
    from tfafm.export import litert, litert_ops

    ids = keras.Input((1,), dtype="int32", name="item")
    codes = keras.layers.Flatten()(LowRankEmbedding(50, 16, rank=4, name="table")(ids))
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid", name="head")(
        keras.layers.Dense(8, activation="relu", name="hidden")(codes)))
    rng = np.random.default_rng(0)  # predictions spread enough for the int8 file's check (0.9 rank correlation)
    for weight in model.weights:
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype("float32"))
    assert type(tfafm.fuse(model)[0].get_layer("head")) is tfafm.layers.DotProductDense
    assert type(tfafm.fuse(model, "int8")[0].get_layer("head")) is keras.layers.Dense
    rows = {"item": np.arange(64, dtype="int32").reshape(-1, 1) % 50}
    with tempfile.TemporaryDirectory() as tmp:
        path = litert(model, os.path.join(tmp, "m.tflite"), quantization="int8", representative_data=rows,
                      verification_data=rows)
        ops = litert_ops(path)
    assert "SUM" not in ops and ops.count("FULLY_CONNECTED") == 2, ops


def _embedding_into(head: keras.layers.Layer) -> keras.Model:
    ids = keras.Input((1,), dtype="int32", name="item")
    codes = keras.layers.Flatten()(LowRankEmbedding(50, 16, rank=4, name="table")(ids))
    model = keras.Model(ids, head(codes))
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight.assign(rng.normal(size=weight.shape).astype(weight.dtype))
    return model


class _ScaledDense(keras.layers.Dense):
    def call(self, inputs, training=None):
        return super().call(inputs) * 3.0 + 1.0


@pytest.mark.parametrize("kind", ["int8", "lora", "own_call"])
def test_a_dense_whose_kernel_is_not_its_float_matrix_is_not_folded(kind):
    """An int8-quantized Dense (its kernel int8 with a scale beside it), a LoRA-enabled one and a subclass with
    its own call read the projected embeddings as they are (a fold read the int8 kernel as floats: predictions
    [1, 1, 1, 1] for [0.34, 0.0004, 0.9988, 0.9999]); the report says why."""
    head = (_ScaledDense if kind == "own_call" else keras.layers.Dense)(1, activation="sigmoid", name="head")
    model = _embedding_into(head)
    if kind == "int8":
        head.quantize("int8")
    elif kind == "lora":
        head.enable_lora(2)
        head.lora_kernel_b.assign(np.full(head.lora_kernel_b.shape, 0.5, dtype="float32"))
    fused, report = tfafm.fuse(model)
    ids = np.array([[3], [7], [11], [0]], dtype="int32")
    np.testing.assert_allclose(fused.predict(ids, verbose=0), model.predict(ids, verbose=0), rtol=1e-5, atol=1e-6)
    assert "head" not in report.folded
    assert any(note.startswith("head: not folded (") for note in report.notes), report.notes
