"""fuse() on models that break a handler's assumptions: subclasses with a call of their own, shared and
nested layers, names the fusion would reuse, a global dtype policy. Each either folds exactly or is left
as it is; the fused model predicts what the model predicts (found by a review of fusion.py: four cases
were silently wrong, by up to 126 on outputs of that size, and five crashed)."""

import keras
import keras_rs
import numpy as np
import pytest
from keras import ops

import tfafm
from tfafm.layers import BlockwiseLowRankDense
from tfafm.layers.lookup import InRangeEmbedding
from tfafm.layers.low_rank import LowRankDense, LowRankEmbedding
from tfafm.models.layers import ClipToVocabulary, FactorizationMachine, StackFields

IDS = np.array([[1], [5], [9], [0]], dtype="int32")


def _randomized(model: keras.Model) -> keras.Model:
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if "int" not in str(weight.dtype):
            weight.assign(rng.normal(size=weight.shape).astype(weight.dtype))
    return model


def _fuses_exactly(model: keras.Model, inputs, quantization=None):
    """``fuse(model)``'s report, after checking that the fused model predicts what ``model`` does."""
    _randomized(model)
    fused, report = tfafm.fuse(model, quantization)
    want, got = model.predict(inputs, verbose=0), fused.predict(inputs, verbose=0)
    for w, g in zip(want if isinstance(want, list) else [want], got if isinstance(got, list) else [got]):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(w))))
    return report


def _id_inputs(count: int, shape=(1,)):
    return [keras.Input(shape, dtype="int32", name=f"ids_{i}") for i in range(count)]


def _flat_code(ids, layer=LowRankEmbedding, **kwargs):
    return keras.layers.Flatten()(layer(50, 16, rank=4, **kwargs)(ids))


class _ScaledEmbedding(LowRankEmbedding):
    def call(self, ids):
        return super().call(ids) * 2.0 + 1.0


class _ScaledConcatenate(keras.layers.Concatenate):
    def call(self, inputs):
        return super().call(inputs) * 3.0


class _ScaledFlatten(keras.layers.Flatten):
    def call(self, inputs):
        return super().call(inputs) * 3.0


class _ScaledAdd(keras.layers.Add):
    def call(self, inputs):
        return super().call(inputs) * 3.0


class _ScaledStack(StackFields):
    def call(self, vectors):
        return super().call(vectors) * 3.0


class _ScaledMachine(FactorizationMachine):
    def call(self, fields):
        return super().call(fields) * 3.0


class _ModuloGuard(ClipToVocabulary):
    """Out-of-range ids read row ``id mod size`` instead of row 0."""

    def call(self, ids):
        stacked = ops.concatenate([ops.cast(ops.reshape(x, (-1, 1)), "int32") for x in ids], axis=-1)
        guarded = ops.mod(stacked, ops.convert_to_tensor(self.vocabulary_sizes, dtype="int32"))
        return ops.unstack(guarded, num=len(self.vocabulary_sizes), axis=1)


def _subclass_model(kind: str):
    ids = _id_inputs(3)
    if kind == "embedding":
        return keras.Model(ids[0], keras.layers.Dense(3)(_flat_code(ids[0], _ScaledEmbedding))), IDS
    if kind == "concatenate":
        joined = _ScaledConcatenate()([_flat_code(ids[0]), _flat_code(ids[1])])
        return keras.Model(ids[:2], keras.layers.Dense(3)(joined)), [IDS, IDS[::-1]]
    if kind == "flatten":
        code = _ScaledFlatten()(LowRankEmbedding(50, 16, rank=4)(ids[0]))
        return keras.Model(ids[0], keras.layers.Dense(3)(code)), IDS
    if kind == "add":
        left, right = keras.Input((3,)), keras.Input((2,))
        total = _ScaledAdd()([keras.layers.Dense(1)(left), keras.layers.Dense(1)(right)])
        rng = np.random.default_rng(1)
        return keras.Model([left, right], total), [rng.normal(size=(4, 3)), rng.normal(size=(4, 2))]
    ids = _id_inputs(3, shape=())
    vectors = [LowRankEmbedding(50, 8, rank=3)(i) for i in ids]
    stack, machine = (_ScaledStack, FactorizationMachine) if kind == "stack" else (StackFields, _ScaledMachine)
    return keras.Model(ids, machine()(stack()(vectors))), [IDS[:, 0], IDS[::-1, 0], (IDS[:, 0] + 3) % 50]


@pytest.mark.parametrize("kind", ["embedding", "concatenate", "flatten", "add", "stack", "machine"])
def test_a_subclass_with_its_own_call_runs_as_it_is(kind):
    model, inputs = _subclass_model(kind)
    _fuses_exactly(model, inputs)


def test_a_guard_subclass_mapping_ids_otherwise_is_not_merged():
    ids = _id_inputs(2)
    guarded = _ModuloGuard([50, 60])(ids)
    joined = keras.layers.Concatenate()([InRangeEmbedding(50, 4)(guarded[0]),
                                         LowRankEmbedding(60, 8, rank=3, ids_in_range=True)(guarded[1])])
    outside = [np.array([[1], [49], [65], [-3]], "int32"), np.array([[2], [59], [75], [-1]], "int32")]
    report = _fuses_exactly(keras.Model(ids, keras.layers.Dense(1)(joined)), outside)
    assert report.tables == []


def test_a_guard_called_twice_or_stacked_is_not_merged():
    ids = _id_inputs(4)
    guard = ClipToVocabulary([50, 60], name="guard")
    first, second = guard(ids[:2]), guard(ids[2:])
    lookups = [LowRankEmbedding(50, 8, rank=3, ids_in_range=True)(first[0]),
               LowRankEmbedding(60, 8, rank=3, ids_in_range=True)(second[1])]
    model = keras.Model(ids, keras.layers.Dense(2)(keras.layers.Concatenate()(lookups)))
    rows = [IDS, IDS + 7, (IDS + 3) % 50, (IDS * 5) % 60]
    assert _fuses_exactly(model, rows).tables == []
    stacked = ClipToVocabulary([50, 60], stacked=True, name="stacked")(ids[:2])
    lookups = [LowRankEmbedding(60, 8, rank=3, ids_in_range=True)(stacked) for _ in range(2)]
    model = keras.Model(ids[:2], keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Concatenate()(lookups))))
    assert _fuses_exactly(model, rows[:2]).tables == []


def test_a_nested_guard_named_like_the_outer_one_is_left_to_its_model():
    inner_ids, ids = _id_inputs(2), [keras.Input((1,), dtype="int32", name=n) for n in "abcde"]
    inner_guard = ClipToVocabulary([30, 40], name="guard")(inner_ids)
    inner = keras.Model(inner_ids, keras.layers.Concatenate()(
        [InRangeEmbedding(30, 4)(inner_guard[0]), InRangeEmbedding(40, 4)(inner_guard[1])]), name="inner")
    outer_guard = ClipToVocabulary([50, 60, 70], name="guard")(ids[:3])
    outer = keras.layers.Concatenate()([InRangeEmbedding(60, 4)(outer_guard[1]),
                                        LowRankEmbedding(70, 8, rank=3, ids_in_range=True)(outer_guard[2])])
    model = keras.Model(ids, keras.layers.Dense(1)(keras.layers.Concatenate()([outer, inner(ids[3:])])))
    _fuses_exactly(model, [IDS, IDS + 3, IDS + 9, IDS % 30, IDS + 2])


def test_weightless_layers_called_twice_get_names_of_their_own():
    ids = _id_inputs(4, shape=())
    vectors = [LowRankEmbedding(50, 8, rank=3)(i) for i in ids]
    rows = [IDS[:, 0], IDS[::-1, 0], (IDS[:, 0] + 3) % 50, (IDS[:, 0] + 7) % 50]
    join = keras.layers.Concatenate(name="join")
    _fuses_exactly(keras.Model(ids, [join(vectors[:2]), join(vectors[2:])]), rows)
    stack, machine = StackFields(), FactorizationMachine()
    total = keras.layers.Add()([machine(stack(vectors[:2])), machine(stack(vectors[2:]))])
    _fuses_exactly(keras.Model(ids, total), rows)
    interaction = keras_rs.layers.DotInteraction()
    pairs = keras.layers.Concatenate()([interaction(vectors[:3]), interaction(vectors[1:])])
    _fuses_exactly(keras.Model(ids, pairs), rows)


def test_a_name_the_fusion_would_give_that_the_model_uses_is_not_reused():
    ids, numbers = keras.Input((1,), dtype="int32"), keras.Input((4,))
    code = _flat_code(ids, name="item")
    hidden = keras.layers.Dense(16, activation="relu", name="item_projection")(numbers)
    model = keras.Model([ids, numbers], keras.layers.Dense(1)(keras.layers.Multiply()([code, hidden])))
    _fuses_exactly(model, [IDS, np.ones((4, 4), "float32")])


def test_the_global_dtype_policy_does_not_leak_into_the_layers_fuse_makes():
    ids = _id_inputs(3, shape=())
    vectors = [LowRankEmbedding(50, 8, rank=3)(i) for i in ids]
    deep = keras.layers.Dense(4, activation="relu")(keras.layers.Concatenate()(vectors))
    cross = keras.layers.Dense(1)(keras.layers.Concatenate()([deep, *vectors]))
    model = _randomized(keras.Model(ids, keras.layers.Add()([FactorizationMachine()(StackFields()(vectors)), cross])))
    rows = [IDS[:, 0], IDS[::-1, 0], (IDS[:, 0] + 3) % 50]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        fused, _ = tfafm.fuse(model)
    finally:
        keras.config.set_dtype_policy(previous)
    assert {layer.dtype_policy.name for layer in fused.layers if layer.weights} == {"float32"}
    want = model.predict(rows, verbose=0)
    np.testing.assert_allclose(fused.predict(rows, verbose=0), want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))


@pytest.mark.parametrize("rank", [3, 6])  # folded, and its factors merged (input 4 wide, below rank 6)
def test_a_low_rank_dense_without_biases_folds(rank):
    ids = keras.Input((1,), dtype="int32")
    code = keras.layers.Flatten()(LowRankEmbedding(50, 16, rank=4)(ids))
    report = _fuses_exactly(keras.Model(ids, LowRankDense(8, rank=rank, use_bias=False, name="head")(code)), IDS)
    assert report.folded == ["head"]


def test_a_blockwise_layer_is_left_unfolded():
    ids, numbers = keras.Input((1,), dtype="int32"), keras.Input((3,))
    joined = keras.layers.Concatenate()([_flat_code(ids), numbers])
    model = keras.Model([ids, numbers], BlockwiseLowRankDense(10, rank=2, blocks=[16, 3], name="head")(joined))
    report = _fuses_exactly(model, [IDS, np.random.default_rng(0).normal(size=(4, 3)).astype("float32")])
    assert "head" not in report.folded


def test_layers_of_nested_models_keep_their_names():
    """Names are unique per model: two towers' layers named alike stay so (were table_1, hidden_1)."""
    def tower(name: str) -> keras.Model:
        ids = keras.Input((1,), dtype="int32")
        code = keras.layers.Flatten(name="flat")(LowRankEmbedding(50, 16, rank=4, name="table")(ids))
        return keras.Model(ids, keras.layers.Dense(4, name="hidden")(code), name=name)

    users, items = keras.Input((1,), dtype="int32", name="user"), keras.Input((1,), dtype="int32", name="item")
    model = keras.Model([users, items], keras.layers.Dot(axes=1)([tower("users")(users), tower("items")(items)]))
    report = _fuses_exactly(model, [IDS, IDS[::-1]])
    assert report.folded == ["hidden", "hidden"]
    fused, _ = tfafm.fuse(model)
    for name in ("users", "items"):
        assert {"table", "hidden"} <= {layer.name for layer in fused.get_layer(name).layers}


def test_a_shared_layer_rewritten_for_one_call_only_gets_a_name_of_its_own():
    """One FactorizationMachine reads codes (rewritten) and plain vectors (runs as it is): "fm" twice."""
    ids, numbers = _id_inputs(2, shape=()), [keras.Input((8,), name=f"numbers_{i}") for i in range(2)]
    machine = FactorizationMachine(name="fm")
    vectors = [LowRankEmbedding(50, 8, rank=3)(i) for i in ids]
    total = keras.layers.Add()([machine(StackFields()(vectors)), machine(StackFields()(numbers))])
    rng = np.random.default_rng(2)
    _fuses_exactly(keras.Model([*ids, *numbers], total),
                   [IDS[:, 0], IDS[::-1, 0], *rng.normal(size=(2, 4, 8)).astype("float32")])
