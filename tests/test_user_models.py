"""A corpus of models written the way Keras users write them (none built by tfafm.models).

For each: AFM at full rank reproduces the model within 1e-5; ``target_ratio=1.5``
(of the whole file, where these tiny models' per-layer records weigh) compresses
it and the report accounts for every layer with weights (factored, or left alone
with a reason); the compressed model round-trips through
``.keras`` without ``custom_objects``, trains a step, and exports to LiteRT
(called through its ``serving_default`` signature), SavedModel and ONNX with
outputs within 1e-5 of Keras.
"""

from __future__ import annotations

import numpy as np
import pytest

import keras
import keras_rs
from keras import ops

import tfafm
from tfafm.graph import output_structure, walk
from tfafm.compression.targets import find_targets
from tfafm.errors import UnsupportedLayerError, UserError

pytestmark = pytest.mark.slow

ROWS = 512
FIELDS, VOCAB, DIM = 6, 40, 8
rng_init = keras.initializers.RandomNormal(stddev=0.3, seed=1)


def _ids(rng, shape, vocab=VOCAB, low=0):
    return rng.integers(low, vocab, size=shape).astype("int32")


def _field_inputs():
    return {f"f{i}": keras.Input((1,), dtype="int32", name=f"f{i}") for i in range(FIELDS)}


def _field_data(rng):
    return {f"f{i}": _ids(rng, (ROWS, 1)) for i in range(FIELDS)}


def _embed_fields(inputs, dim=DIM):
    return [keras.layers.Flatten()(keras.layers.Embedding(VOCAB, dim, embeddings_initializer=rng_init,
                                                           name=f"emb_{name}")(x))
            for name, x in inputs.items()]


def _mlp(x, units=(32, 16), **dense_kwargs):
    for i, u in enumerate(units):
        x = keras.layers.Dense(u, activation="relu", **dense_kwargs)(x)
    return x


# ---------------------------------------------------------------- the corpus


def sequential_mlp(rng):
    model = keras.Sequential([
        keras.Input((FIELDS,), dtype="int32", name="ids"),
        keras.layers.Embedding(VOCAB, DIM, embeddings_initializer=rng_init),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ], name="sequential_mlp")
    return model, _ids(rng, (ROWS, FIELDS))


def deepfm_with_ops(rng):
    inputs = _field_inputs()
    vectors = _embed_fields(inputs)
    stacked = ops.stack(vectors, axis=1)  # (batch, fields, dim)
    square_of_sum = ops.square(ops.sum(stacked, axis=1))
    sum_of_square = ops.sum(stacked * stacked, axis=1)
    fm = 0.5 * ops.sum(square_of_sum - sum_of_square, axis=-1, keepdims=True)
    deep = keras.layers.Dense(1)(_mlp(keras.layers.Concatenate()(vectors)))
    return keras.Model(inputs, ops.sigmoid(fm + deep), name="deepfm_ops"), _field_data(rng)


def shared_embedding_two_towers(rng):
    user, item = keras.Input((1,), dtype="int32", name="user"), keras.Input((1,), dtype="int32", name="item")
    table = keras.layers.Embedding(VOCAB, DIM, embeddings_initializer=rng_init, name="ids")
    user_tower = _mlp(keras.layers.Flatten()(table(user)), (24, 16))
    item_tower = _mlp(keras.layers.Flatten()(table(item)), (24, 16))
    score = ops.sum(user_tower * item_tower, axis=-1, keepdims=True)
    model = keras.Model({"user": user, "item": item}, keras.layers.Activation("sigmoid")(score), name="towers")
    return model, {"user": _ids(rng, (ROWS, 1)), "item": _ids(rng, (ROWS, 1))}


def masked_sequence(rng):
    history = keras.Input((10,), dtype="int32", name="history")
    target = keras.Input((1,), dtype="int32", name="target")
    pooled = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(VOCAB, DIM, mask_zero=True, embeddings_initializer=rng_init, name="hist_emb")(history))
    item = keras.layers.Flatten()(keras.layers.Embedding(VOCAB, DIM, embeddings_initializer=rng_init)(target))
    out = keras.layers.Dense(1, activation="sigmoid")(_mlp(keras.layers.Concatenate()([pooled, item])))
    ids = _ids(rng, (ROWS, 10), low=1)
    ids[:, 6:] = 0  # padding
    return keras.Model({"history": history, "target": target}, out, name="masked"), {
        "history": ids, "target": _ids(rng, (ROWS, 1))}


def multitask_mmoe(rng):
    inputs = _field_inputs()
    bottom = keras.layers.Concatenate()(_embed_fields(inputs))
    experts = ops.stack([_mlp(bottom, (24,)) for _ in range(3)], axis=1)  # (batch, 3, 24)
    heads = {}
    for task in ("ctr", "cvr"):
        gate = keras.layers.Dense(3, activation="softmax", name=f"{task}_gate")(bottom)
        mixed = ops.sum(experts * ops.expand_dims(gate, -1), axis=1)
        heads[task] = keras.layers.Dense(1, activation="sigmoid", name=task)(_mlp(mixed, (16,)))
    return keras.Model(inputs, heads, name="mmoe"), _field_data(rng)


def attention_over_fields(rng):
    inputs = _field_inputs()
    fields = keras.layers.Reshape((FIELDS, DIM))(keras.layers.Concatenate()(_embed_fields(inputs)))
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16, name="mha")(fields, fields)
    out = keras.layers.Dense(1, activation="sigmoid")(_mlp(keras.layers.Flatten()(attended)))
    return keras.Model(inputs, out, name="autoint_mha"), _field_data(rng)


def feature_cross_projection(rng):
    inputs = _field_inputs()
    x0 = keras.layers.Concatenate()(_embed_fields(inputs))
    x = x0
    for _ in range(2):
        x = keras_rs.layers.FeatureCross(projection_dim=8)(x0, x)
    x = keras_rs.layers.FeatureCross()(x0, x)
    out = keras.layers.Dense(1, activation="sigmoid")(_mlp(x))
    return keras.Model(inputs, out, name="dcn_projection"), _field_data(rng)


def dlrm_dot_interaction(rng):
    inputs = _field_inputs()
    dense = keras.Input((5,), name="dense")
    vectors = _embed_fields(inputs) + [keras.layers.Dense(DIM, activation="relu")(_mlp(dense, (16,)))]
    interactions = keras_rs.layers.DotInteraction()(vectors)
    top = keras.layers.Concatenate()([interactions, vectors[-1]])
    out = keras.layers.Dense(1, activation="sigmoid")(_mlp(top))
    data = dict(_field_data(rng), dense=rng.normal(size=(ROWS, 5)).astype("float32"))
    return keras.Model({**inputs, "dense": dense}, out, name="dlrm"), data


def nested_model_used_twice(rng):
    tower_in = keras.Input((DIM,))
    tower = keras.Model(tower_in, _mlp(tower_in, (24, 12)), name="tower")
    a, b = keras.Input((1,), dtype="int32", name="a"), keras.Input((1,), dtype="int32", name="b")
    emb = keras.layers.Embedding(VOCAB, DIM, embeddings_initializer=rng_init)
    left, right = tower(keras.layers.Flatten()(emb(a))), tower(keras.layers.Flatten()(emb(b)))
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Concatenate()([left, right]))
    return keras.Model({"a": a, "b": b}, out, name="nested"), {"a": _ids(rng, (ROWS, 1)), "b": _ids(rng, (ROWS, 1))}


def normalized_dense_inputs(rng):
    dense = keras.Input((13,), name="counts")
    ids = keras.Input((1,), dtype="int32", name="ids")
    values = rng.lognormal(1.0, 1.5, size=(ROWS, 13)).astype("float32")
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(values)
    x = keras.layers.Concatenate()([norm(dense), keras.layers.Flatten()(
        keras.layers.Embedding(VOCAB, DIM, embeddings_initializer=rng_init)(ids))])
    out = keras.layers.Dense(1, activation="sigmoid")(_mlp(x))
    return keras.Model({"counts": dense, "ids": ids}, out, name="normalized"), {
        "counts": values, "ids": _ids(rng, (ROWS, 1))}


def batchnorm_dropout_mlp(rng):
    inputs = _field_inputs()
    x = keras.layers.Concatenate()(_embed_fields(inputs))
    for units in (32, 16):
        x = keras.layers.Dense(units)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.Dropout(0.2)(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, out, name="bn_dropout")
    data = _field_data(rng)
    bn_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bn_layers:  # non-trivial moving statistics
        layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape).astype("float32"))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape).astype("float32"))
    return model, data


def activity_regularized(rng):
    inputs = _field_inputs()
    x = keras.layers.Concatenate()(_embed_fields(inputs))
    x = keras.layers.Dense(32, activation="relu", activity_regularizer=keras.regularizers.L2(1e-4),
                           name="regularized")(x)
    out = keras.layers.Dense(1, activation="sigmoid")(_mlp(x, (16,)))
    return keras.Model(inputs, out, name="activity"), _field_data(rng)


def einsum_projection(rng):
    inputs = _field_inputs()
    fields = keras.layers.Reshape((FIELDS, DIM))(keras.layers.Concatenate()(_embed_fields(inputs)))
    projected = keras.layers.EinsumDense("abc,cde->abde", output_shape=(FIELDS, 4, 6), bias_axes="de",
                                         activation="relu", name="per_field")(fields)
    out = keras.layers.Dense(1, activation="sigmoid")(_mlp(keras.layers.Flatten()(projected)))
    return keras.Model(inputs, out, name="einsum"), _field_data(rng)


@keras.saving.register_keras_serializable(package="tfafm_tests")
class GatedProjection(keras.layers.Layer):
    """A user's custom layer: ``sigmoid(gate) * relu(x W + b)``, optionally with W factored.

    It opts into compression through the three ``tfafm_*`` methods.
    """

    def __init__(self, units, rank=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.rank = int(units), rank

    def build(self, input_shape):
        d = input_shape[-1]
        if self.rank is None:
            self.kernel = self.add_weight(name="kernel", shape=(d, self.units))
        else:
            self.down = self.add_weight(name="down", shape=(d, self.rank))
            self.down_bias = self.add_weight(name="down_bias", shape=(self.rank,), initializer="zeros")
            self.up = self.add_weight(name="up", shape=(self.rank, self.units))
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        self.gate = self.add_weight(name="gate", shape=(self.units,), initializer="ones")

    def _pre(self, x):
        if self.rank is None:
            return ops.matmul(x, self.kernel) + self.bias
        return ops.matmul(ops.matmul(x, self.down) + self.down_bias, self.up) + self.bias

    def call(self, x):
        return ops.sigmoid(self.gate) * ops.relu(self._pre(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "rank": self.rank}

    def tfafm_matrices(self):
        return {} if self.rank else {"kernel": tfafm.Matrix(self.kernel.numpy(), self.bias.numpy())}

    def tfafm_call(self, x):
        pre = self._pre(x)
        return ops.sigmoid(self.gate) * ops.relu(pre), {"kernel": pre}

    def tfafm_factored(self, factors):
        f = factors["kernel"]
        new = GatedProjection(self.units, rank=f.rank, name=self.name)
        new.build((None, f.down.shape[0]))
        new.set_weights([f.down, f.down_bias, f.up, f.up_bias, self.gate.numpy()])
        return new


def custom_protocol_layer(rng):
    inputs = _field_inputs()
    x = GatedProjection(32, name="gated")(keras.layers.Concatenate()(_embed_fields(inputs)))
    out = keras.layers.Dense(1, activation="sigmoid")(_mlp(x, (16,)))
    return keras.Model(inputs, out, name="custom"), _field_data(rng)


CORPUS = [
    sequential_mlp, deepfm_with_ops, shared_embedding_two_towers, masked_sequence, multitask_mmoe,
    attention_over_fields, feature_cross_projection, dlrm_dot_interaction, nested_model_used_twice,
    normalized_dense_inputs, batchnorm_dropout_mlp, activity_regularized, einsum_projection,
    custom_protocol_layer,
]


def _build(builder):
    keras.utils.set_random_seed(0)
    model, data = builder(np.random.default_rng(0))
    return model, data


def _outputs(model, data) -> list[np.ndarray]:
    result = model.predict(data, verbose=0, batch_size=ROWS)
    if isinstance(result, dict):
        return [np.asarray(result[k]) for k in sorted(result)]
    return [np.asarray(r) for r in keras.tree.flatten(result)]


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) for x, y in zip(a, b))


def _feed(model, data) -> dict:
    """The data as the exports' named inputs."""
    if isinstance(data, dict):
        return data
    return {model.inputs[0].name: data}


@pytest.fixture(scope="module", params=CORPUS, ids=lambda builder: builder.__name__)
def case(request):
    model, data = _build(request.param)
    compressed, report = tfafm.compress(model, data, target_ratio=1.5, progress=False)
    return model, data, compressed, report


def test_full_rank_afm_reproduces_the_model(case):
    model, data, _, _ = case
    targets, _ = find_targets(model)
    assert targets
    ranks = {t.name: min(t.input_dim, t.output_dim) for t in targets}
    exact, report = tfafm.compress(model, data, ranks=ranks, progress=False)
    assert {row.name for row in report.layers if row.rank} == set(ranks)
    assert _max_diff(_outputs(exact, data), _outputs(model, data)) <= 1e-5


def test_target_ratio_compresses_and_the_report_accounts_for_every_layer(case):
    model, data, compressed, report = case
    assert report.params_before == model.count_params() and report.params_after == compressed.count_params()
    assert report.compressible_ratio >= 1.5 and compressed.count_params() < model.count_params()
    named = {row.name.split("/")[0] for row in report.layers} | {s.name.split("/")[0] for s in report.skipped}
    with_weights = {name.split("/")[0] for name, layer in walk(model) if layer.weights}
    assert with_weights <= named, with_weights - named
    assert all(s.reason for s in report.skipped)
    assert np.isfinite(np.concatenate([o.reshape(-1) for o in _outputs(compressed, data)])).all()


def test_compressed_model_round_trips_and_trains(case, tmp_path):
    _, data, compressed, _ = case
    path = str(tmp_path / "compressed.keras")
    compressed.save(path)
    loaded = keras.models.load_model(path)
    assert _max_diff(_outputs(loaded, data), _outputs(compressed, data)) <= 1e-6
    outputs = output_structure(loaded)
    labels = {k: np.ones((ROWS, 1), "float32") for k in outputs} if isinstance(outputs, dict) else \
        np.ones((ROWS, 1), "float32")
    loaded.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    before = [w.copy() for w in loaded.get_weights()]
    loaded.fit(data, labels, batch_size=64, steps_per_epoch=1, epochs=1, verbose=0)
    assert any(not np.allclose(a, b) for a, b in zip(before, loaded.get_weights()))


def test_exports_match_keras(case, tmp_path):
    _, data, compressed, _ = case
    expected = _outputs(compressed, data)
    feed = _feed(compressed, data)

    path = tfafm.export.litert(compressed, str(tmp_path / "m.tflite"))
    runner = tfafm.export.LiteRTRunner(path)
    from ai_edge_litert.interpreter import Interpreter

    signature = Interpreter(model_path=path).get_signature_runner("serving_default")
    one = {k: np.asarray(v[:1]) for k, v in feed.items()}
    single = signature(**{k: v.astype(runner.inputs[k]["dtype"]) for k, v in one.items()})
    by_name = runner.outputs(feed)
    assert set(single) == set(by_name)
    assert _max_diff([by_name[k] for k in sorted(by_name)], expected) <= 1e-5
    assert _max_diff([single[k] for k in sorted(single)], [e[:1] for e in expected]) <= 1e-5

    saved = tfafm.export.saved_model(compressed, str(tmp_path / "sm"))
    import tensorflow as tf

    serving = tf.saved_model.load(saved).signatures["serving_default"]
    specs = serving.structured_input_signature[1]
    outs = serving(**{k: tf.constant(np.asarray(v), dtype=specs[k].dtype) for k, v in feed.items()})
    assert _max_diff([outs[k].numpy() for k in sorted(outs)], expected) <= 1e-5

    onnx_path = tfafm.export.onnx(compressed, str(tmp_path / "m.onnx"))
    session = tfafm.export.OnnxRunner(onnx_path).session
    onnx_feed = {i.name: np.asarray(feed[i.name]).astype(np.int32 if "int" in i.type else np.float32)
                 for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    results = dict(zip(names, session.run(names, onnx_feed)))
    assert _max_diff([results[k] for k in sorted(results)], expected) <= 1e-5


# ---------------------------------------------------------------- layers left alone or refused


def test_quantized_dense_is_left_alone_and_refused_when_named():
    model, data = _build(activity_regularized)
    model.get_layer("regularized").quantize("int8")
    targets, skipped = find_targets(model)
    assert "quantized" in {s.name: s.reason for s in skipped}["regularized"]
    full = {t.name: min(t.input_dim, t.output_dim) for t in targets}
    compressed, report = tfafm.compress(model, data, ranks=full, progress=False)
    assert "regularized" not in {row.name for row in report.layers}
    assert compressed.get_layer("regularized").quantization_mode == "int8"
    assert _max_diff(_outputs(compressed, data), _outputs(model, data)) <= 1e-5
    with pytest.raises(UserError, match="regularized"):
        tfafm.compress(model, data, ranks={"regularized": 4}, progress=False)


def test_constrained_layer_is_left_alone_with_the_reason():
    inputs = keras.Input((20,), name="x")
    hidden = keras.layers.Dense(16, kernel_constraint=keras.constraints.NonNeg(), name="nonneg")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(16, name="free")(hidden)))
    data = np.random.default_rng(0).normal(size=(256, 20)).astype("float32")
    _, report = tfafm.compress(model, data, target_ratio=1.1, progress=False)  # its whole file reaches 1.2x
    assert "constraint" in {s.name: s.reason for s in report.skipped}["nonneg"]
    assert [row.name for row in report.layers] == ["free"]


class ScaledDense(keras.layers.Dense):
    """A user's Dense subclass computing something else than Dense: a factored Dense would drop the scale."""

    def call(self, inputs):
        return super().call(inputs) * 3.0 + 1.0


class HashedEmbedding(keras.layers.Embedding):
    """A user's Embedding subclass hashing its ids into the table."""

    def call(self, inputs):
        return super().call(ops.mod(inputs, self.input_dim))


def test_subclasses_with_their_own_call_are_left_alone_with_the_reason():
    """Compressed as plain Dense / Embedding, they lost what their call adds, even at full rank (the
    predictions moved by 0.28, compress reported success)."""
    ids = keras.Input((1,), dtype="int32", name="ids")
    x = keras.layers.Flatten()(HashedEmbedding(VOCAB, DIM, name="hashed")(ids))
    x = ScaledDense(32, activation="relu", name="scaled")(x)
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(16, name="free")(x)))
    data = _ids(np.random.default_rng(0), (ROWS, 1), vocab=3 * VOCAB)
    _, skipped = find_targets(model)
    reasons = {s.name: s.reason for s in skipped}
    assert "ScaledDense has its own call()" in reasons["scaled"]
    assert "HashedEmbedding has its own call()" in reasons["hashed"]
    compressed, report = tfafm.compress(model, data, ranks={"free": 16}, progress=False)
    assert [row.name for row in report.layers] == ["free"]
    assert type(compressed.get_layer("scaled")) is ScaledDense
    assert _max_diff(_outputs(compressed, data), _outputs(model, data)) <= 1e-5
    with pytest.raises(UserError, match="'scaled', which is not compressible \\(its class ScaledDense has its own"):
        tfafm.compress(model, data, ranks={"scaled": 32}, progress=False)


class SharperAttention(keras.layers.MultiHeadAttention):
    """Overrides a hook of MultiHeadAttention other than call: its factored form would drop it."""

    def _masked_softmax(self, attention_scores, attention_mask=None):
        return super()._masked_softmax(attention_scores * 8.0, attention_mask)


def test_a_multi_head_attention_subclass_is_left_alone_with_the_reason():
    inputs = keras.Input((4, 8), name="x")
    attended = SharperAttention(num_heads=2, key_dim=4, name="sharper")(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(attended)))
    reasons = {s.name: s.reason for s in find_targets(model)[1]}
    assert "SharperAttention subclasses MultiHeadAttention" in reasons["sharper"]


def test_frozen_layers_stay_frozen_once_factored():
    inputs = _field_inputs()
    x = keras.layers.Concatenate()(_embed_fields(inputs))
    x = keras.layers.Dense(32, activation="relu", name="frozen_dense")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="top")(x))
    model.get_layer("emb_f0").trainable = False
    model.get_layer("frozen_dense").trainable = False
    data = _field_data(np.random.default_rng(0))
    full = {t.name: min(t.input_dim, t.output_dim) for t in find_targets(model)[0]}
    compressed, _ = tfafm.compress(model, data, ranks=full, progress=False)
    frozen = {"emb_f0", "frozen_dense"}
    assert {layer.name: layer.trainable for layer in compressed.layers if layer.name in frozen} == dict.fromkeys(
        frozen, False)
    assert not any(w.path.split("/")[0] in frozen for w in compressed.trainable_weights)
    assert any(w.path.split("/")[0] == "emb_f1" for w in compressed.trainable_weights)


def test_einsum_dense_whose_bias_spans_an_input_axis_is_left_alone_with_the_reason():
    """A bias over ``b`` in ``abc,cd->abd`` differs per position: compress raised numpy's broadcasting error."""
    inputs = keras.Input((6, 16), name="x")
    x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(6, 32), bias_axes="bd", name="per_position")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(16)(keras.layers.Flatten()(x))))
    data = np.random.default_rng(0).normal(size=(ROWS, 6, 16)).astype("float32")
    reason = {s.name: s.reason for s in find_targets(model)[1]}["per_position"]
    assert reason == ("its bias spans axes 'bd', not only the kernel's output axes 'd': a factor's bias could not "
                      "hold it")
    with pytest.raises(UserError, match="per_position.*its bias spans axes"):
        tfafm.compress(model, data, ranks={"per_position": 8}, progress=False)


def test_subclassed_model_gets_a_clear_error_pointing_to_the_layer_constructors(subclassed_model):
    with pytest.raises(UnsupportedLayerError, match="subclassed.*from_dense"):
        tfafm.compress(subclassed_model, method="svd", ranks={"dense": 2}, progress=False)


def test_embedding_keeps_keras_id_semantics():
    ids = keras.Input((1,), dtype="int32", name="ids")
    model = keras.Model(ids, keras.layers.Flatten()(keras.layers.Embedding(30, 8, embeddings_initializer=rng_init)(ids)))
    data = np.arange(30, dtype="int32")[:, None].repeat(4, axis=0)
    compressed, _ = tfafm.compress(model, data, ranks={model.layers[1].name: 8}, progress=False)
    negative = np.array([[-1], [-30]], dtype="int32")  # Keras reads rows V-1 and 0
    np.testing.assert_allclose(np.asarray(compressed(negative)), np.asarray(model(negative)), atol=1e-5)


def test_fusion_merges_factors_when_the_folded_input_is_narrower_than_the_rank():
    inputs = {f"f{i}": keras.Input((1,), dtype="int32", name=f"f{i}") for i in range(3)}
    x = keras.layers.Concatenate()(_embed_fields(inputs, dim=16))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(40, name="wide")(x)))
    rng = np.random.default_rng(0)
    data = {k: _ids(rng, (ROWS, 1)) for k in inputs}
    ranks = {f"emb_f{i}": 1 for i in range(3)} | {"wide": 10}
    compressed, _ = tfafm.compress(model, data, method="svd", ranks=ranks, progress=False)
    fused, report = tfafm.fuse(compressed)
    assert report.merged == ["wide"] and "merged" in report.notes[0]
    assert isinstance(fused.get_layer("wide"), keras.layers.Dense) and fused.get_layer("wide").kernel.shape == (3, 40)
    assert _max_diff(_outputs(fused, data), _outputs(compressed, data)) <= 1e-5


def test_layer_names_keras_made_in_another_session_never_clash_with_the_rewrites_own(tmp_path):
    """A model loaded from a file holds names Keras made in the session that built it ("reshape" for an
    output squeezed to (batch,)); the fused export made a Reshape of its own, also named "reshape" in a
    fresh session, and the export failed with Keras' "name used 2 times" traceback."""
    inputs = {f"f{i}": keras.Input((1,), dtype="int32", name=f"f{i}") for i in range(3)}
    x = keras.layers.Concatenate(name="concatenate")(_embed_fields(inputs, dim=8))
    hidden = keras.layers.Dense(12, activation="relu", name="dense")(x)
    click = keras.layers.Reshape((), name="reshape")(keras.layers.Dense(1, activation="sigmoid", name="dense_1")(hidden))
    path = str(tmp_path / "squeezed.keras")
    keras.Model(inputs, click).save(path)
    keras.backend.clear_session()  # a new session: its naming counters start again
    model = keras.models.load_model(path)
    data = {k: _ids(np.random.default_rng(0), (ROWS, 1)) for k in inputs}
    compressed, _ = tfafm.compress(model, data, ranks={f"emb_f{i}": 3 for i in range(3)}, progress=False)
    fused, _ = tfafm.fuse(compressed)
    assert "reshape" in [layer.name for layer in fused.layers]  # the user's, under its own name
    # A name whose suffix no session reaches (a date) reserves nothing: Keras' counter would take 20M steps.
    tower = keras.Model(model.inputs, keras.layers.Identity(name="tower_20240615")(model.output))
    tfafm.graph.reserve_names(tower)
    assert keras.backend.get_uid("tower") < 100
    assert _max_diff(_outputs(fused, data), _outputs(compressed, data)) <= 1e-5
    exported = tfafm.export.litert(compressed, str(tmp_path / "squeezed.tflite"), verification_data=data)
    assert _max_diff([tfafm.export.LiteRTRunner(exported)(data).reshape(-1)],
                     [np.asarray(compressed.predict(data, verbose=0)).reshape(-1)]) <= 1e-5


def test_a_mixed_precision_model_exports_to_float32_files(tmp_path):
    """Layers computing in float16 (a mixed_float16 policy): the Keras reference itself carries float16's
    rounding, so no float32 LiteRT or ONNX file could pass the float32 check ("disagrees ... 0.0003"). They are
    held to float16's tolerance, and the message says why where even that fails."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((32,), name="x")
    hidden = keras.layers.Dense(64, activation="relu", dtype="mixed_float16", name="half")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="click")(hidden))
    data = {"x": np.random.default_rng(0).normal(size=(512, 32)).astype("float32") * 3}
    path = tfafm.export.litert(model, str(tmp_path / "half.tflite"), verification_data=data)
    got = tfafm.export.LiteRTRunner(path)(data).reshape(-1)
    expected = np.asarray(model.predict(data, verbose=0)).reshape(-1)
    assert 1e-4 < float(np.max(np.abs(got - expected))) <= 2e-2  # past float32's tolerance, inside float16's
    onnx = tfafm.export.onnx(model, str(tmp_path / "half.onnx"), verification_data=data)
    assert onnx.endswith("half.onnx")
