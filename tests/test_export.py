"""LiteRT, SavedModel and ONNX exports agree with Keras; quantized LiteRT keeps the AUC."""

from __future__ import annotations

import functools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

import tfafm
import tfafm.export as export
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.layers.low_rank import LowRankEmbedding

pytestmark = pytest.mark.slow

GEN = SyntheticCriteo(max_vocabulary=2000, num_sparse=6, num_dense=3)
SCHEMA = GEN.schema(8)
ROWS = 1000


@functools.lru_cache(maxsize=None)
def tiny_models(builder: str):
    """One briefly trained tiny model per builder, and its AFM compression (target_ratio=3, variance
    criterion: the fusion tests below need factored tables, and under the loss criterion the tiny
    xDeepFM keeps all its tables whole, spending the budget on the CIN and the MLP)."""
    keras.utils.set_random_seed(0)
    model = tfafm.models.build(builder, SCHEMA, hidden_units=(32, 16))
    model.compile("adam", "binary_crossentropy")
    model.fit(GEN.dataset(2048, 256), epochs=1, verbose=0)
    compressed, _ = tfafm.compress(
        model, GEN.dataset(1024, 256, split="calibration"), method="afm", target_ratio=3, criterion="variance",
        progress=False,
    )
    return {"original": model, "compressed": compressed}


@functools.lru_cache(maxsize=None)
def rows(split: str = "validation", n: int = ROWS):
    features, labels = next(GEN.batches(n, n, split=split))
    return features, labels


def out_of_range(features, value):
    """``features`` with every sparse id replaced: ``value(vocabulary_size)`` on odd rows."""
    changed = dict(features)
    for feature in SCHEMA.sparse:
        ids = np.array(features[feature.name])
        ids[1::2] = value(feature.vocabulary_size)
        changed[feature.name] = ids
    return changed


def run_export(fmt: str, model, tmp_path):
    if fmt == "litert":
        return export.LiteRTRunner(export.litert(model, str(tmp_path / "m.tflite"), fuse=False))
    if fmt == "litert_fused":
        return export.LiteRTRunner(export.litert(model, str(tmp_path / "m.tflite"), fuse=True))
    if fmt == "saved_model":
        return export.SavedModelRunner(export.saved_model(model, str(tmp_path / "sm")))
    return export.OnnxRunner(export.onnx(model, str(tmp_path / "m.onnx")))


# The originals' layers reappear in the compressed models, so the originals go through LiteRT only (the
# format whose lookups differ from Keras'), the compressed models through every format.
@pytest.mark.parametrize("variant,fmt", [("original", "litert"), ("compressed", "litert"),
                                         ("compressed", "saved_model"), ("compressed", "onnx")])
@pytest.mark.parametrize("builder", tfafm.models.available())
def test_export_matches_keras_and_clips_ids(builder, variant, fmt, tmp_path):
    model = tiny_models(builder)[variant]
    features, _ = rows()
    runner = run_export(fmt, model, tmp_path)
    expected = np.asarray(model.predict_on_batch(features))
    got = runner(features)
    assert got.shape == (ROWS, 1)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)

    # Negative and too-large ids read row 0, exactly like id 0, in Keras and the export.
    zeros = runner(out_of_range(features, lambda v: 0))
    for bad in (lambda v: -5, lambda v: v + 100):
        np.testing.assert_allclose(runner(out_of_range(features, bad)), zeros, atol=1e-7, rtol=0)
        np.testing.assert_allclose(
            np.asarray(model.predict_on_batch(out_of_range(features, bad))),
            np.asarray(model.predict_on_batch(out_of_range(features, lambda v: 0))), atol=1e-7, rtol=0,
        )
    if fmt == "litert":
        ops = set(export.litert_ops(runner.path))
        assert ops <= export.builtin_op_names(), ops - export.builtin_op_names()


def _one_unit_fully_connected(path: str) -> list[int]:
    """The FULLY_CONNECTED ops of the LiteRT file at ``path`` whose weights have one output row."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    shapes = {t["index"]: tuple(t["shape"]) for t in interpreter.get_tensor_details()}
    return [op["index"] for op in interpreter._get_ops_details()
            if op["op_name"] == "FULLY_CONNECTED" and shapes[op["inputs"][1]][0] == 1]


@pytest.mark.parametrize("builder", tfafm.models.available())
def test_fused_litert_matches_keras(builder, tmp_path):
    model = tiny_models(builder)["compressed"]
    features, _ = rows()
    runner = run_export("litert_fused", model, tmp_path)
    np.testing.assert_allclose(runner(features), np.asarray(model.predict_on_batch(features)), atol=1e-5, rtol=0)
    ops = export.litert_ops(runner.path)
    assert set(ops) <= export.builtin_op_names()
    # The per-field lookups become one gather of whole rows per width, and no other op gathers (an FM on
    # codes squares fields left whole without selecting their columns).
    unfused = export.litert_ops(export.litert(model, str(tmp_path / "unfused.tflite"), fuse=False))
    widths = len(next(layer for layer in tfafm.fuse(model)[0].layers
                      if isinstance(layer, tfafm.layers.lookup.MergedEmbedding)).tables)
    assert ops.count("GATHER") <= unfused.count("GATHER") - len(SCHEMA.sparse) + widths, (ops, unfused)
    # At most two ops more per one-unit Dense: no FULLY_CONNECTED of one output unit (XNNPACK computes a tile
    # of them), a product, a sum and the bias instead.
    fused = tfafm.fuse(model)[0]
    one_unit = sum(isinstance(layer, tfafm.layers.DotProductDense) for layer in fused.layers)
    assert len(ops) <= len(unfused) + 2 * one_unit
    assert not _one_unit_fully_connected(runner.path)
    # Out-of-range ids read row 0 of their own field, as in Keras.
    zeros = out_of_range(features, lambda v: 0)
    for bad in (lambda v: -5, lambda v: v + 100):
        np.testing.assert_allclose(runner(out_of_range(features, bad)), runner(zeros), atol=1e-7, rtol=0)
        np.testing.assert_allclose(runner(out_of_range(features, bad)),
                                   np.asarray(model.predict_on_batch(out_of_range(features, bad))), atol=1e-5, rtol=0)


def test_litert_inputs_named_per_feature_with_dynamic_batch(tmp_path):
    model = tiny_models("deepfm")["original"]
    path = export.litert(model, str(tmp_path / "m.tflite"), fuse=False)
    runner = export.LiteRTRunner(path)
    assert sorted(runner.feature_names) == sorted(SCHEMA.names)
    for detail in runner.interpreter.get_input_details():
        assert list(detail["shape_signature"]) == [-1, 1]
        expected = np.int32 if detail["name"] in {f.name for f in SCHEMA.sparse} else np.float32
        assert detail["dtype"] == expected
    features, _ = rows()
    one = {k: v[:1] for k, v in features.items()}
    assert runner(one).shape == (1, 1)
    assert runner(features).shape == (ROWS, 1)


def test_saved_model_signature_and_reload(tmp_path):
    model = tiny_models("dcnv2")["compressed"]
    directory = export.saved_model(model, str(tmp_path / "sm"))
    signature = tf.saved_model.load(directory).signatures["serving_default"]
    _, specs = signature.structured_input_signature
    assert set(specs) == set(SCHEMA.names)
    for feature in SCHEMA.features:
        spec = specs[feature.name]
        assert spec.shape.as_list() == [None, 1]
        assert spec.dtype == (tf.int32 if feature in SCHEMA.sparse else tf.float32)
    assert list(signature.structured_outputs) == ["prediction"]
    features, _ = rows()
    out = signature(**{k: tf.constant(v) for k, v in features.items()})["prediction"].numpy()
    np.testing.assert_allclose(out, np.asarray(model.predict_on_batch(features)), atol=1e-5, rtol=0)
    # TF Serving's loader (a TF1 session restoring variables by their checkpoint names) runs it too: it could
    # not find the variables of a SavedModel that tracked them through the Keras model only.
    from tfafm.export.verify import _saved_model_session_outputs

    served = _saved_model_session_outputs(directory, features, model)["prediction"]
    np.testing.assert_allclose(served, out, atol=1e-6, rtol=0)


def test_a_saved_model_tf_serving_cannot_restore_is_refused(tmp_path, monkeypatch):
    from tfafm.errors import UserError
    from tfafm.export import saved_model_export, signature

    def through_keras_only(model):  # the module as it was: variables reached through the Keras model only
        module = tf.Module()
        module.model, module.serve = model, signature.serving_function(model)
        return module

    monkeypatch.setattr(saved_model_export, "serving_module", through_keras_only)
    with pytest.raises(UserError, match="TensorFlow Serving's loader .* cannot run the exported SavedModel"):
        export.saved_model(tiny_models("widedeep")["original"], str(tmp_path / "sm"))
    assert not (tmp_path / "sm").exists()


def test_onnx_inputs_and_output_names(tmp_path):
    runner = export.OnnxRunner(export.onnx(tiny_models("widedeep")["original"], str(tmp_path / "m.onnx")))
    inputs = {i.name: i.type for i in runner.session.get_inputs()}
    assert set(inputs) == set(SCHEMA.names)
    assert all(inputs[f.name] == "tensor(int32)" for f in SCHEMA.sparse)
    assert all(inputs[f.name] == "tensor(float)" for f in SCHEMA.dense)
    assert runner.output == "prediction"


# ----------------------------------------------------------------------------- quantization


@functools.lru_cache(maxsize=None)
def auc_models():
    """A tiny deepfm trained long enough for a meaningful AUC, and its compression."""
    keras.utils.set_random_seed(1)
    model = tfafm.models.build("deepfm", SCHEMA, hidden_units=(32, 16))
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(GEN.dataset(20_000, 512), epochs=2, verbose=0)
    calibration = GEN.dataset(4096, 512, split="calibration")
    compressed, _ = tfafm.compress(model, calibration, method="afm", target_ratio=3, progress=False)
    return {"original": model, "compressed": compressed, "calibration": calibration}


@pytest.mark.parametrize("one_hot", ["category_encoding", "ops"])
def test_one_hot_of_a_negative_id_is_a_row_of_zeros_in_every_format(one_hot, tmp_path):
    """TensorFlow gives an all-zero row for a negative id; ONNX's OneHot read -1 as the last class (a file
    written and said checked, as the generated check rows hold no negative id)."""
    ids = keras.Input((1,), dtype="int32", name="ids")
    flat = keras.layers.Flatten()(ids)
    encoded = (keras.layers.CategoryEncoding(5, output_mode="one_hot")(flat) if one_hot == "category_encoding"
               else keras.ops.one_hot(keras.ops.squeeze(flat, -1), 5))
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones",
                                                bias_initializer="zeros")(encoded))
    rows = {"ids": np.array([[-1], [-5], [0], [4], [5]], "int32")}
    expected = np.asarray(model(rows)).ravel()
    np.testing.assert_allclose(expected, 1 / (1 + np.exp(-np.array([0, 0, 1, 1, 0]))), atol=1e-6)
    path = export.onnx(model, str(tmp_path / "m.onnx"))
    np.testing.assert_allclose(export.OnnxRunner(path)(rows).ravel(), expected, atol=1e-6)


@pytest.mark.parametrize("names, fmt, message", [
    (["age", "Age"], "saved_model", "inputs 'Age' and 'age' differ only by case, which a SavedModel signature"),
    (["age", "Age"], "onnx", "inputs 'Age' and 'age' differ only by case, which an ONNX graph"),
    (["user id"], "onnx", "input 'user id' cannot keep its name in an ONNX graph"),
    (["item-id"], "saved_model", "input 'item-id' cannot keep its name in a SavedModel signature"),
    (["_ids"], "saved_model", "input '_ids' cannot keep its name in a SavedModel signature"),
    (["class"], "saved_model", "input 'class' cannot keep its name in a SavedModel signature"),
])
def test_input_names_a_format_would_rename_are_refused_naming_them(names, fmt, message, tmp_path):
    """TensorFlow renames such inputs in the graph or signature: the export died with a KeyError or a
    TensorFlow ValueError, or the file could not be fed by the names the model has."""
    inputs = {name: keras.Input((1,), name=name) for name in names}
    joined = keras.layers.Concatenate()(list(inputs.values())) if len(names) > 1 else inputs[names[0]]
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(joined))
    with pytest.raises(tfafm.errors.UserError, match=message.replace("(", r"\(")):
        getattr(export, fmt)(model, str(tmp_path / "model"))
    assert os.listdir(tmp_path) == []
    assert export.litert(model, str(tmp_path / "m.tflite"))  # LiteRT signatures keep any name


@pytest.mark.parametrize("variant", ["original", "compressed"])
@pytest.mark.parametrize("quantization,tolerance", [("dynamic", 0.002), ("float16", 0.002), ("int8", 0.005)])
def test_quantized_litert_keeps_auc(variant, quantization, tolerance, tmp_path):
    models = auc_models()
    model = models[variant]
    features, labels = rows("test", 5000)
    keras_auc = roc_auc_score(labels.ravel(), np.asarray(model.predict_on_batch(features)).ravel())
    path = export.litert(model, str(tmp_path / "q.tflite"), quantization=quantization,
                         representative_data=models["calibration"], fuse=False)
    assert set(export.litert_ops(path)) <= export.builtin_op_names()
    lite_auc = roc_auc_score(labels.ravel(), export.LiteRTRunner(path)(features).ravel())
    assert keras_auc > 0.6
    assert abs(lite_auc - keras_auc) <= tolerance, (keras_auc, lite_auc)
    assert os.path.getsize(path) < os.path.getsize(export.litert(model, str(tmp_path / "f.tflite"), fuse=False))


def _factor_tensors(path, model):
    """``{(layer, weight): dtype}`` for the low-rank embedding factors found in the .tflite."""
    tensors = export.litert_tensor_types(path)
    found = {}
    for layer in model.layers:
        if not isinstance(layer, LowRankEmbedding):
            continue
        for weight in (layer.embeddings, layer.projection):
            shapes = {tuple(weight.shape), tuple(weight.shape)[::-1]}
            for t in tensors:
                if f"/{layer.name}_" in t.name and t.shape in shapes and t.dtype != "int32":
                    found[(layer.name, weight.name, int(np.prod(weight.shape)))] = t.dtype
    return found


def test_dynamic_quantization_makes_low_rank_factors_int8(tmp_path):
    model = auc_models()["compressed"]
    path = export.litert(model, str(tmp_path / "d.tflite"), quantization="dynamic", fuse=False)
    factors = _factor_tensors(path, model)
    large = {k: v for k, v in factors.items() if k[2] >= 1024}
    assert large, factors  # the 2000-row table of C6 is over the converter's 1024-element threshold
    assert set(large.values()) == {"int8"}, large
    # Below 1024 elements the converter keeps float32 (documented in litert()).
    assert {v for k, v in factors.items() if k[2] < 1024} <= {"float32"}


def test_int8_needs_representative_data_and_keeps_float_interface(tmp_path):
    model = auc_models()["compressed"]
    with pytest.raises(ValueError, match="representative_data"):
        export.litert(model, str(tmp_path / "x.tflite"), quantization="int8")
    with pytest.raises(ValueError, match="quantization"):
        export.litert(model, str(tmp_path / "x.tflite"), quantization="int4")
    with pytest.warns(FutureWarning, match="now quantization="), pytest.raises(ValueError, match="representative"):
        export.litert(model, str(tmp_path / "x.tflite"), quantize="int8")  # the former name still works
    assert not os.path.exists(tmp_path / "x.tflite")
    features, _ = rows()
    # Batches of unequal sizes (100, 100, 50): the calibrator sees blocks of one size.
    batches = tf.data.Dataset.from_tensor_slices(rows("calibration", 250)[0]).batch(100)
    path = export.litert(model, str(tmp_path / "q.tflite"), quantization="int8", representative_data=batches, fuse=False)
    runner = export.LiteRTRunner(path)
    dtypes = {d["name"]: d["dtype"] for d in runner.interpreter.get_input_details()}
    assert all(dtypes[f.name] == np.int32 for f in SCHEMA.sparse)
    assert all(dtypes[f.name] == np.float32 for f in SCHEMA.dense)
    assert runner.interpreter.get_output_details()[0]["dtype"] == np.float32
    assert "int8" in {t.dtype for t in export.litert_tensor_types(path)}
    assert runner(features).shape == (ROWS, 1)


# ----------------------------------------------------------------------------- failures


@keras.saving.register_keras_serializable(package="tfafm_tests")
class HashStrings(keras.layers.Layer):
    def call(self, strings):
        return tf.cast(tf.strings.to_hash_bucket_fast(strings, 100), "float32")


def string_model():
    text = keras.Input(shape=(1,), dtype="string", name="text")
    return keras.Model({"text": text}, keras.layers.Dense(1, activation="sigmoid")(HashStrings(name="hasher")(text)))


def test_non_builtin_op_fails_naming_op_and_layer_and_writes_nothing(tmp_path):
    target = tmp_path / "out" / "bad.tflite"
    with pytest.raises(ValueError, match=r"tf\.StringToHashBucketFast.*'hasher'"):
        export.litert(string_model(), str(target))
    assert not target.exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no temporary left behind


def test_failed_export_keeps_existing_file(tmp_path):
    target = tmp_path / "bad.tflite"
    target.write_bytes(b"previous")
    with pytest.raises(ValueError):
        export.litert(string_model(), str(target))
    assert target.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["bad.tflite"]


@pytest.mark.parametrize("quantization, tolerance, merged", [(None, 1e-5, False), ("float16", 2e-3, False),
                                                     ("dynamic", 2e-2, False), ("dynamic", 2e-2, True),
                                                     ("dynamic", 2e-2, "rows")])
def test_big_tables_are_written_outside_the_converter(quantization, tolerance, merged, tmp_path):
    """Tables above the patch threshold are converted as placeholders and written in afterwards."""
    from tfafm.export.litert_export import _TablePatch
    from tfafm.layers.lookup import MergedEmbedding
    from tfafm.schema import Schema, SparseFeature

    width = 16 if merged == "rows" else 8
    big = _TablePatch.MIN_ELEMENTS // width + 7  # rows of a table just above the threshold
    # "rows": the big table and three more of its width are read as whole rows from one (rows, 17) table.
    others = [SparseFeature(f"whole{i}", 30, width) for i in range(3)] if merged == "rows" else []
    schema = Schema([SparseFeature("big", big, width), SparseFeature("small", 50, width), *others])
    keras.utils.set_random_seed(3)
    model = tfafm.models.build("deepfm", schema, hidden_units=(16,))
    table = model.get_layer("big_embedding")
    table.embeddings.assign(np.random.default_rng(0).normal(0, 0.5, table.embeddings.shape).astype("float32"))
    rng = np.random.default_rng(1)
    features = {"big": rng.integers(0, big, (500, 1)).astype("int32"),
                "small": rng.integers(0, 50, (500, 1)).astype("int32"),
                **{f.name: rng.integers(0, 30, (500, 1)).astype("int32") for f in others}}
    features["big"][:3, 0] = [0, big - 1, big // 2]  # first, last and middle rows
    if merged:  # the small table factored: the fused model reads both from one MergedEmbedding, one table per
        # width (each row with its first-order weight), of which only the big one is patched
        model, _ = tfafm.compress(model, features, ranks={"small_embedding": 2}, target_ratio=None, progress=False)
        patch = _TablePatch(tfafm.fuse(model)[0])
        assert [type(layer) for layer in patch.layers] == [MergedEmbedding] and len(patch.tables) == 1
        assert [tuple(t.shape) for t in patch.layers[0].tables] == [(50, 3), (big + len(others) * 30, width + 1)]
    else:
        assert _TablePatch(model).layers == [table]
    path = export.litert(model, str(tmp_path / "big.tflite"), quantization=quantization)
    expected = model.predict(features, verbose=0)
    np.testing.assert_allclose(export.LiteRTRunner(path)(features), expected, atol=tolerance)
    sizes = {t.shape for t in export.litert_tensor_types(path)}
    # merged: the big table with its first-order weights; rows: the four 16-wide tables stacked, with theirs
    assert {False: (big, 8), True: (big, 9), "rows": (big + 90, 17)}[merged] in sizes


@pytest.mark.parametrize("quantization, tolerance", [(None, 1e-5), ("dynamic", 2e-2)])
def test_a_users_big_keras_embedding_is_written_outside_the_converter_with_keras_ids(quantization, tolerance, tmp_path):
    """A plain keras.layers.Embedding above the threshold is patched too; negative ids still wrap by its length."""
    from tfafm.export.litert_export import _TablePatch

    rows = _TablePatch.MIN_ELEMENTS // 8 + 11
    ids = keras.Input((2,), dtype="int32", name="ids")
    table = keras.layers.Embedding(rows, 8, name="user_table",
                                   embeddings_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=0))
    hidden = keras.layers.Dense(4, activation="relu")(keras.layers.Flatten()(table(ids)))
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(hidden))
    assert _TablePatch(model).layers == [table]
    features = {"ids": np.array([[0, rows - 1], [rows // 2, 5], [-1, -rows], [-7, 3]], dtype="int32")}
    path = export.litert(model, str(tmp_path / "user.tflite"), quantization=quantization)
    got = export.LiteRTRunner(path)(features)
    np.testing.assert_allclose(got, model.predict(features, verbose=0), atol=tolerance)
    # -1 reads the last row and -rows the first, as in Keras: rows 2 and 0 of the input agree with explicit ids.
    explicit = {"ids": np.array([[0, rows - 1], [rows // 2, 5], [rows - 1, 0], [rows - 7, 3]], dtype="int32")}
    np.testing.assert_allclose(got, export.LiteRTRunner(path)(explicit), atol=1e-7)
    assert (rows, 8) in {t.shape for t in export.litert_tensor_types(path)}


@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_dense_over_fields_and_flatten_export_without_runtime_shape_ops(fmt, tmp_path):
    """A Dense over (batch, fields, d) and a Flatten export as static reshapes around one matmul,
    with the Keras model's outputs."""
    inputs = keras.Input((5, 8), name="x")
    projected = keras.layers.Dense(6, activation="relu", name="projection")(inputs)
    logit = keras.layers.Dense(1, activation="sigmoid", name="head")(keras.layers.Flatten(name="flat")(projected))
    model = keras.Model(inputs, logit)
    x = np.random.default_rng(0).normal(size=(7, 5, 8)).astype("float32")
    expected = model.predict(x, verbose=0)
    if fmt == "litert":
        path = export.litert(model, str(tmp_path / "m.tflite"))
        ops = export.litert_ops(path)
        assert not {"SHAPE", "REDUCE_PROD", "PACK", "STRIDED_SLICE", "GATHER"} & set(ops), ops
        assert ops.count("FULLY_CONNECTED") == 2
        got = export.LiteRTRunner(path)({"x": x})
    else:
        path = export.onnx(model, str(tmp_path / "m.onnx"))
        got = export.OnnxRunner(path)({"x": x})
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)


def test_xnnpack_partition_splits_the_op_list(tmp_path):
    """Every op is either run by XNNPACK or left to LiteRT's kernels; a float MLP runs in XNNPACK,
    an id lookup does not."""
    ids = keras.Input((1,), dtype="int32", name="ids")
    vectors = keras.layers.Flatten()(keras.layers.Embedding(50, 4, name="table")(ids))
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid", name="head")(
        keras.layers.Dense(8, activation="relu", name="hidden")(vectors)))
    path = export.litert(model, str(tmp_path / "m.tflite"))
    delegated, fallback = export.xnnpack_partition(path)
    assert sorted(delegated + fallback) == sorted(export.litert_ops(path))
    assert delegated.count("FULLY_CONNECTED") == 2 and "LOGISTIC" in delegated
    assert "GATHER" in fallback and "GATHER" not in delegated


def test_an_onnx_file_with_ops_tf2onnx_cannot_convert_is_one_error_naming_them(tmp_path, capfd):
    """A StringLookup and a Discretization in the model: tf2onnx logged 19 lines (a traceback among them) on
    stderr before tfafm's error, which named only the op onnxruntime stumbled on."""
    text = keras.Input(shape=(1,), dtype="string", name="text")
    price = keras.Input(shape=(1,), name="price")
    ids = keras.layers.StringLookup(vocabulary=["a", "b"], name="lookup")(text)
    bins = keras.layers.Discretization(bin_boundaries=[0.0, 1.0], name="bins")(price)
    joined = keras.layers.Concatenate()([keras.ops.cast(ids, "float32"), keras.ops.cast(bins, "float32")])
    model = keras.Model({"text": text, "price": price}, keras.layers.Dense(1, activation="sigmoid")(joined))
    rows = {"text": np.array([["a"], ["b"], ["c"]], dtype=object), "price": np.array([[-1.0], [0.5], [2.0]], "float32")}
    target = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"tf2onnx could not convert op\(s\): .*Bucketize"):
        export.onnx(model, str(target), verification_data=rows)
    assert "Traceback" not in capfd.readouterr().err and not target.exists()


def test_a_fused_form_that_computes_something_else_is_refused_before_conversion(tmp_path, monkeypatch):
    """A fusion bug (DeepFM's first-order weights left times their storage factor: mean |diff| 0.011) passed
    the dynamic-int8 file's tolerance (0.012 there), exit 0: the fused Keras model is now checked against the
    model at float32's tolerance before converting."""
    import tfafm.compression.fusion as fusion

    model = tiny_models("deepfm")["compressed"]
    features, _ = rows()
    exact = fusion.fuse

    def off_by_a_little(m, *args):
        fused, report = exact(m, *args)
        dense = next(layer for layer in fused.layers if isinstance(layer, keras.layers.Dense))
        kernel, *rest = dense.get_weights()
        dense.set_weights([kernel * 1.05, *rest])
        return fused, report

    monkeypatch.setattr(fusion, "fuse", off_by_a_little)
    target = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"The fused form of model .* disagrees with it on output .*--no-fuse"):
        export.litert(model, str(target), quantization="dynamic", verification_data=features)
    assert not target.exists()
    monkeypatch.setattr(fusion, "fuse", exact)
    assert export.litert(model, str(target), quantization="dynamic", verification_data=features) == str(target)


def test_named_outputs_are_checked_by_name(tmp_path, monkeypatch):
    """A dict output whose keys are not sorted ({"ctr", "a_cvr"}): the check paired the interface's sorted names
    with Keras' values in key order, so a correct file was refused and one with its outputs swapped written."""
    from tfafm.export import litert_export

    numbers = keras.Input((4,), name="numbers")
    heads = {"ctr": keras.layers.Dense(1, activation="sigmoid", name="ctr_head")(numbers),
             "a_cvr": keras.layers.Dense(1, activation="sigmoid", name="cvr_head",
                                         bias_initializer=keras.initializers.Constant(-3.0))(numbers)}
    model = keras.Model(numbers, heads)
    rows = {"numbers": np.random.default_rng(0).normal(size=(64, 4)).astype("float32")}
    path = export.litert(model, str(tmp_path / "good.tflite"), verification_data=rows)
    got = export.LiteRTRunner(path).outputs(rows)
    np.testing.assert_allclose(got["a_cvr"], model.predict(rows, verbose=0)["a_cvr"], atol=1e-6)

    write = litert_export._write
    swapped = keras.Model(numbers, {"ctr": heads["a_cvr"], "a_cvr": heads["ctr"]})
    monkeypatch.setattr(litert_export, "_write", lambda m, *args: write(swapped, *args))
    with pytest.raises(export.verify.Disagreement, match="on output 'a_cvr'|on output 'ctr'"):
        export.litert(model, str(tmp_path / "bad.tflite"), verification_data=rows)
    assert not (tmp_path / "bad.tflite").exists()
