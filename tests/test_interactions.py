"""The zoo's interaction layers on tiny inputs, against outputs worked out by hand
(the keras-rs ``feature_cross_test.py`` style: fixed weights, small numbers)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from tfafm.layers.lookup import MergedEmbedding
from tfafm.models.layers import (
    ClipToVocabulary,
    CodeFactorizationMachine,
    CompressedInteraction,
    CrossLayerV1,
    FactorizationMachine,
    FieldMean,
    FieldReweight,
    LinearTerms,
    MultiHeadSelfAttention,
    PairwiseProduct,
    StackFields,
)

FIELDS = np.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], dtype="float32")  # (batch 1, 3 fields, dim 2)


def _np(x):
    return np.asarray(x, dtype=np.float64)


def test_factorization_machine():
    # sum of fields = [9, 12] -> squares [81, 144]; sum of squares = [1+9+25, 4+16+36] = [35, 56]
    # pairwise = 0.5 * ([81, 144] - [35, 56]) = [23, 44]
    np.testing.assert_allclose(_np(FactorizationMachine(reduce_sum=False)(FIELDS)), [[23.0, 44.0]])
    np.testing.assert_allclose(_np(FactorizationMachine()(FIELDS)), [[67.0]])


def test_code_factorization_machine():
    # v_1 = c_1 [1, 1], v_2 = c_2 [1, 0] (no biases): FM = v_1 . v_2 = c_1 c_2. P_1 P_1^T = 2 -> R_1 = sqrt(2), R_2 = 1.
    layer = CodeFactorizationMachine(dim=2)
    layer.build((None, 2))
    layer.kernel.assign(np.array([[1.0, 1.0, math.sqrt(2), 0.0], [1.0, 0.0, 0.0, 1.0]], "float32"))
    codes = np.array([[2.0, 3.0]], "float32")
    # x = [5, 2, 2 sqrt(2), 3] -> 0.5 * (25 + 4 - 8 - 9) = 6 = 2 * 3
    np.testing.assert_allclose(_np(layer(codes)), [[6.0]], rtol=1e-6)
    fields = np.array([[[2.0, 2.0], [3.0, 0.0]]], "float32")
    np.testing.assert_allclose(_np(layer(codes)), _np(FactorizationMachine()(fields)), rtol=1e-6)
    layer.constant.assign([2.0])  # the part of the biases outside the codes' span: half of it is taken off
    np.testing.assert_allclose(_np(layer(codes)), [[5.0]], rtol=1e-6)
    assert CodeFactorizationMachine.from_config(layer.get_config()).dim == 2


def test_code_factorization_machine_with_a_field_as_it_is():
    # v_1 = c_1 [1, 1] (a code, R_1 = sqrt(2)); v_2 = (c_2, c_3), a field left whole: raw columns 1 and 2,
    # no root for them. C = [2, 3, 4]: v_1 = [2, 2], v_2 = [3, 4], FM = v_1 . v_2 = 14.
    layer = CodeFactorizationMachine(dim=2, raw_columns=[1, 2])
    layer.build((None, 3))
    assert layer.kernel.shape == (3, 3)
    layer.kernel.assign(np.array([[1.0, 1.0, math.sqrt(2)], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "float32"))
    codes = np.array([[2.0, 3.0, 4.0]], "float32")
    # x = [5, 6, 2 sqrt(2)], raw [3, 4] -> 0.5 * (25 + 36) - 0.5 * (8 + 9 + 16) = 14
    np.testing.assert_allclose(_np(layer(codes)), [[14.0]], rtol=1e-6)
    fields = np.array([[[2.0, 2.0], [3.0, 4.0]]], "float32")
    np.testing.assert_allclose(_np(layer(codes)), _np(FactorizationMachine()(fields)), rtol=1e-6)
    assert CodeFactorizationMachine.from_config(layer.get_config()).raw_columns == [1, 2]


def test_cross_layer_v1():
    layer = CrossLayerV1()
    x0 = np.array([[1.0, 2.0]], "float32")
    x = np.array([[3.0, 4.0]], "float32")
    layer.build(x0.shape)
    layer.kernel.assign(np.ones((2, 1), "float32"))
    layer.bias.assign(np.array([0.5, -0.5], "float32"))
    # x . w = 7 -> x0 * 7 + b + x = [7 + 0.5 + 3, 14 - 0.5 + 4]
    np.testing.assert_allclose(_np(layer(x0, x)), [[10.5, 17.5]])


def test_compressed_interaction_network():
    fields = FIELDS[:, :2]  # [[1, 2], [3, 4]]: per embedding dim, field values [1, 3] and [2, 4]
    layer = CompressedInteraction(layer_sizes=(1,), activation="linear")
    layer.build(fields.shape)
    layer.kernels[0].assign(np.ones((4, 1), "float32"))
    # dim 0: outer([1, 3], [1, 3]) sums to 16; dim 1: outer([2, 4], [2, 4]) sums to 36; pooled 16 + 36
    np.testing.assert_allclose(_np(layer(fields)), [[52.0]])

    low = CompressedInteraction(layer_sizes=(1,), activation="linear", ranks=[1])
    low.build(fields.shape)
    down, down_bias, up, up_bias = low.kernels[0]
    down.assign(np.ones((4, 1), "float32"))
    down_bias.assign([0.0])
    up.assign([[2.0]])
    up_bias.assign([1.0])
    # per dim: 2 * sum + 1 -> 33 and 73
    np.testing.assert_allclose(_np(low(fields)), [[106.0]])
    assert CompressedInteraction.from_config(low.get_config()).ranks == [1]


def test_factored_compressed_interaction_matches_the_outer_product_formula():
    """A factored CIN layer never forms the (hk * fields)-wide outer product (one matmul of x_k by D as
    (hk, fields * rank), a product by x_0 and a sum over the fields): same output as the formula in numpy,
    with fields (4) and feature maps (3, then 2) of different counts and factors without symmetry."""
    rng = np.random.default_rng(0)
    fields = rng.normal(size=(2, 4, 3)).astype("float32")  # (batch, fields, dim)
    layer = CompressedInteraction(layer_sizes=(3, 2), activation="relu", ranks=[2, 1])
    layer.build(fields.shape)
    factors = []
    for kernel in layer.kernels:
        values = [rng.normal(size=tuple(w.shape)).astype("float32") for w in kernel]
        for weight, value in zip(kernel, values):
            weight.assign(value)
        factors.append(values)
    x0 = fields.transpose(0, 2, 1)  # (batch, dim, fields)
    xk, pooled = x0, []
    for down, down_bias, up, up_bias in factors:
        outer = (xk[..., :, None] * x0[..., None, :]).reshape(-1, xk.shape[-1] * 4)
        xk = np.maximum((outer @ down + down_bias) @ up + up_bias, 0).reshape(2, 3, -1)
        pooled.append(xk.sum(axis=1))
    np.testing.assert_allclose(_np(layer(fields)), np.concatenate(pooled, axis=-1), rtol=1e-5, atol=1e-5)


def test_pairwise_product():
    # pairs (0,1), (0,2), (1,2) of left * right, elementwise
    expected = [[[3.0, 8.0], [5.0, 12.0], [15.0, 24.0]]]
    np.testing.assert_allclose(_np(PairwiseProduct()(FIELDS, FIELDS)), expected)


def test_field_reweight_and_mean():
    weights = np.array([[2.0, 0.0, 0.5]], "float32")
    np.testing.assert_allclose(_np(FieldReweight()(FIELDS, weights)), [[[2.0, 4.0], [0.0, 0.0], [2.5, 3.0]]])
    np.testing.assert_allclose(_np(FieldMean()(FIELDS)), [[1.5, 3.5, 5.5]])


def test_multi_head_self_attention():
    # one head over two fields, q = k = v = identity rows: score of a field with itself 1/sqrt(2), else 0
    x = np.array([[[1.0, 0.0], [0.0, 1.0]]], "float32")
    same = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)
    expected = [[[same, 1 - same], [1 - same, same]]]
    np.testing.assert_allclose(_np(MultiHeadSelfAttention(num_heads=1)(x, x, x)), expected, rtol=1e-6)
    # two heads of width 1: head 0 sees values [1, 0]; field 0 scores [1, 0], field 1 scores [0, 0]
    two = MultiHeadSelfAttention(num_heads=2)(x, x, x)
    np.testing.assert_allclose(_np(two)[0, :, 0], [math.e / (math.e + 1), 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(num_heads=3)(x, x, x)


def test_stack_clip_and_linear_terms():
    ids = [np.array([[1], [5]], "int32"), np.array([[-1], [2]], "int32")]
    guarded = ClipToVocabulary([4, 3])(ids)
    np.testing.assert_array_equal(np.asarray(guarded[0]), [1, 0])  # 5 >= 4 -> 0
    np.testing.assert_array_equal(np.asarray(guarded[1]), [0, 2])  # -1 -> 0
    linear = LinearTerms([4, 3])
    linear.build()
    linear.weights_table.assign(np.arange(7, dtype="float32")[:, None])  # field 1 rows start at 4
    np.testing.assert_allclose(_np(linear(guarded)), [[1.0 + 4.0], [0.0 + 6.0]])
    stacked = StackFields()([keras.ops.ones((2, 3)), keras.ops.zeros((2, 3))])
    assert tuple(stacked.shape) == (2, 2, 3) and float(np.asarray(stacked)[:, 0].sum()) == 6.0


def test_merged_embedding_reads_every_field_with_one_gather(tmp_path):
    # field 0: 3 rows of width 2, values 0..5; field 1: 2 rows of width 1, values 6..7 (one flat table)
    tables = [np.arange(6, dtype="float32").reshape(3, 2), np.array([[6.0], [7.0]], "float32")]
    layer = MergedEmbedding.from_tables(tables)
    assert (layer.vocabulary_sizes, layer.widths) == ([3, 2], [2, 1])
    ids = [np.array([2, 0], "int32"), np.array([1, 0], "int32")]
    expected = [[4.0, 5.0, 7.0], [0.0, 1.0, 6.0]]  # row 2 of field 0 + row 1 of field 1; rows 0 and 0
    np.testing.assert_allclose(_np(layer(ids)), expected)
    np.testing.assert_allclose(np.concatenate([t[i] for t, i in zip(tables, ids)], axis=1), expected)

    # Behind the guard an out-of-range id reads row 0 of its own field, never a neighbour's rows.
    inputs = [keras.Input((1,), dtype="int32") for _ in tables]
    model = keras.Model(inputs, layer(ClipToVocabulary([3, 2])(inputs)))
    bad = [np.array([[3], [-1]], "int32"), np.array([[2], [-3]], "int32")]
    np.testing.assert_allclose(_np(model(bad)), [[0.0, 1.0, 6.0], [0.0, 1.0, 6.0]])

    ones = MergedEmbedding([4, 2], [1, 3], embeddings_initializer="ones")
    np.testing.assert_allclose(_np(ones([np.array([3]), np.array([1])])), [[1.0] * 4])
    path = str(tmp_path / "merged.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(_np(reloaded(bad)), _np(model(bad)))
    assert MergedEmbedding.from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="positive"):
        MergedEmbedding([3], [2, 1])


def test_merged_embedding_of_one_width_reads_whole_rows(tmp_path):
    # Two fields of width 2 (values 0..5 and 10..13), the second table read by inputs 1 and 0: one gather
    # of rows of the (5, 2) stacked table, the same output as the per-element layout gives.
    tables = [np.arange(6, dtype="float32").reshape(3, 2), np.arange(10, 14, dtype="float32").reshape(2, 2)]
    layer = MergedEmbedding.from_tables(tables + tables[1:], sources=[0, 1, 0])
    ids = [np.array([1, 0], "int32"), np.array([1, 0], "int32")]
    expected = [[2.0, 3.0, 12.0, 13.0, 12.0, 13.0], [0.0, 1.0, 10.0, 11.0, 10.0, 11.0]]
    np.testing.assert_allclose(_np(layer(ids)), expected)
    inputs = [keras.Input((1,), dtype="int32") for _ in range(2)]
    model = keras.Model(inputs, layer(ClipToVocabulary([2, 2])(inputs)))
    path = str(tmp_path / "rows.keras")
    model.save(path)
    batch = [np.array([[1], [5]], "int32"), np.array([[1], [-2]], "int32")]
    np.testing.assert_allclose(_np(keras.models.load_model(path)(batch)), [expected[0], expected[1]])


def test_merged_embedding_rows_layout_reads_one_gather_per_width(tmp_path):
    # Widths 1, 2, 2, 3 (tables sorted by width): three runs, stored as (2, 1), (3 + 2, 2) and (2, 3) weights;
    # table 2 reads input 0 again. Same output as the element layout, and it round-trips through .keras.
    tables = [np.array([[6.0], [7.0]], "float32"), np.arange(6, dtype="float32").reshape(3, 2),
              np.arange(10, 14, dtype="float32").reshape(2, 2), np.arange(20, 26, dtype="float32").reshape(2, 3)]
    layer = MergedEmbedding.from_tables(tables, sources=[1, 0, 0, 1], layout="rows")
    assert [tuple(t.shape) for t in layer.tables] == [(2, 1), (5, 2), (2, 3)] and layer.embeddings is None
    ids = [np.array([1, 0], "int32"), np.array([1, 0], "int32")]
    expected = [[7.0, 2.0, 3.0, 12.0, 13.0, 23.0, 24.0, 25.0], [6.0, 0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 22.0]]
    np.testing.assert_allclose(_np(layer(ids)), expected)
    elements = MergedEmbedding.from_tables(tables, sources=[1, 0, 0, 1])
    np.testing.assert_allclose(_np(elements(ids)), expected)
    ones = MergedEmbedding([3, 2], [1, 2], embeddings_initializer="ones", layout="rows")
    np.testing.assert_allclose(_np(ones([np.array([2]), np.array([1])])), [[1.0, 1.0, 1.0]])
    inputs = [keras.Input((1,), dtype="int32") for _ in range(2)]
    model = keras.Model(inputs, layer(ClipToVocabulary([2, 2])(inputs)))
    path = str(tmp_path / "runs.keras")
    model.save(path)
    batch = [np.array([[1], [9]], "int32"), np.array([[1], [-4]], "int32")]  # out of range -> row 0
    np.testing.assert_allclose(_np(keras.models.load_model(path)(batch)), expected)
    assert MergedEmbedding.from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="layout"):
        MergedEmbedding([3], [2], layout="columns")


def test_merged_embedding_tables_can_read_one_field_twice():
    # table 0 (field 0): 3 rows of width 2; table 1 (field 1): 2 rows of width 1; table 2 reads field 0
    # again: 3 rows of width 1 (e.g. its first-order weights).
    tables = [np.arange(6, dtype="float32").reshape(3, 2), np.array([[6.0], [7.0]], "float32"),
              np.array([[10.0], [20.0], [30.0]], "float32")]
    layer = MergedEmbedding.from_tables(tables, sources=[0, 1, 0])
    ids = [np.array([2, 0], "int32"), np.array([1, 0], "int32")]
    np.testing.assert_allclose(_np(layer(ids)), [[4.0, 5.0, 7.0, 30.0], [0.0, 1.0, 6.0, 10.0]])
    assert MergedEmbedding.from_config(layer.get_config()).sources == [0, 1, 0]
    with pytest.raises(ValueError, match="sources"):
        MergedEmbedding([3, 2], [2, 1], sources=[0])
    with pytest.raises(ValueError, match="inputs up to 2"):
        MergedEmbedding.from_tables(tables, sources=[0, 1, 2])(ids)


def test_merged_embedding_reads_the_guards_stacked_ids(tmp_path):
    # The guard with stacked=True hands over (batch, 3) ids; the tables read columns 1 and 2 (a slice of
    # whole rows) or columns 2, 0, 2 (element by element), as the list input would give them.
    guard = ClipToVocabulary([3, 2, 2], stacked=True)
    inputs = [keras.Input((1,), dtype="int32") for _ in range(3)]
    stacked = guard(inputs)
    assert tuple(stacked.shape) == (None, 3)
    rows = MergedEmbedding.from_tables([np.arange(4, dtype="float32").reshape(2, 2),
                                        np.arange(10, 14, dtype="float32").reshape(2, 2)], sources=[1, 2])
    elements = MergedEmbedding.from_tables([np.array([[1.0], [2.0]], "float32"),
                                            np.arange(6, dtype="float32").reshape(3, 2),
                                            np.array([[5.0], [6.0]], "float32")], sources=[2, 0, 2])
    model = keras.Model(inputs, [rows(stacked), elements(stacked)])
    batch = [np.array([[2], [7]], "int32"), np.array([[1], [-1]], "int32"), np.array([[0], [1]], "int32")]
    # First row: ids (2, 1, 0). Second row: ids (7 out of range -> 0, -1 -> 0, 1).
    expected_rows = [[2.0, 3.0, 10.0, 11.0], [0.0, 1.0, 12.0, 13.0]]
    expected_elements = [[1.0, 4.0, 5.0, 5.0], [2.0, 0.0, 1.0, 6.0]]
    outputs = model(batch)
    np.testing.assert_allclose(_np(outputs[0]), expected_rows)
    np.testing.assert_allclose(_np(outputs[1]), expected_elements)
    swapped = MergedEmbedding.from_tables([np.arange(4, dtype="float32").reshape(2, 2),
                                           np.arange(10, 16, dtype="float32").reshape(3, 2)], sources=[2, 0])
    np.testing.assert_allclose(_np(swapped(guard(batch))), [[0.0, 1.0, 14.0, 15.0], [2.0, 3.0, 10.0, 11.0]])
    per_field = ClipToVocabulary([3, 2, 2])(batch)
    np.testing.assert_allclose(_np(rows(per_field)), expected_rows)
    np.testing.assert_allclose(_np(elements(per_field)), expected_elements)
    assert ClipToVocabulary.from_config(guard.get_config()).stacked
    assert "stacked" not in ClipToVocabulary([3]).get_config()
    path = str(tmp_path / "stacked.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)(batch)
    np.testing.assert_allclose(_np(reloaded[0]), expected_rows)
    with pytest.raises(ValueError, match="inputs up to 2"):
        rows(keras.ops.zeros((2, 2), "int32"))
