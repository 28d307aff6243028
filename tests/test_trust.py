"""Nothing silently broken leaves tfafm: rewritten models are run before they are returned,
exported files are loaded and compared with Keras before they are swapped in, and the budget
search finds the smallest model within an AUC budget."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras
from keras import ops

import tfafm
from tfafm.compression.budget import MAX_EVALUATIONS
from tfafm.errors import UserError
from tfafm.export import verify
from tfafm.metrics import agreement, paired_auc_difference, ranks
from tfafm.training import FINE_TUNE_MIN_Z, fine_tune

ROWS = 512


@pytest.fixture(scope="module")
def mlp():
    """A small trained click model on 16 dense inputs, its data and a validation dataset."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * ROWS, 16)).astype("float32")
    y = (x @ rng.normal(size=16) + 0.5 * rng.normal(size=len(x)) > 0).astype("float32")[:, None]
    inputs = keras.Input((16,), name="x")
    hidden = keras.layers.Dense(48, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="click")(hidden), name="mlp")
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    model.fit(x[:3 * ROWS], y[:3 * ROWS], epochs=5, batch_size=64, verbose=0)
    validation = tf.data.Dataset.from_tensor_slices((x[3 * ROWS:], y[3 * ROWS:])).batch(128)
    return model, x[:3 * ROWS], validation


# ---------------------------------------------------------------- agreement and tolerances


def test_ranks_average_ties_and_agreement_is_spearman():
    np.testing.assert_array_equal(ranks(np.array([0.3, 0.1, 0.3, 0.2])), [2.5, 0.0, 2.5, 1.0])
    a = np.array([0.1, 0.4, 0.2, 0.9])
    result = agreement(a, np.array([0.2, 0.3, 0.25, 1.0]))
    assert result["rank_correlation"] == pytest.approx(1.0)
    assert result["mean_abs_diff"] == pytest.approx((0.1 + 0.1 + 0.05 + 0.1) / 4)
    assert result["max_abs_diff"] == pytest.approx(0.1)
    # ranks (0, 2, 1, 3) vs (2, 0, 3, 1): d = (-2, 2, -2, 2), rho = 1 - 6 * 16 / (4 * 15)
    assert agreement(a, np.array([0.4, 0.1, 0.9, 0.2]))["rank_correlation"] == pytest.approx(-0.6)


def _delong_by_hand(labels, reference, candidate):
    """DeLong's variance of AUC(candidate) - AUC(reference) from its definition, pair by pair."""
    positive = labels > 0.5
    components = []
    for scores in (reference, candidate):
        x, y = scores[positive], scores[~positive]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        components.append((psi.mean(axis=1), psi.mean(axis=0)))  # per positive, per negative
    s10 = np.cov(np.stack([components[0][0], components[1][0]]))
    s01 = np.cov(np.stack([components[0][1], components[1][1]]))
    m, n = positive.sum(), (~positive).sum()
    return (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n


def test_paired_auc_difference_is_delongs_test():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    labels = (rng.random(400) < 0.3).astype(float)
    reference = np.round(rng.normal(size=400) + labels, 1)  # rounded: ties count half
    candidate = np.round(reference + 0.7 * rng.normal(size=400), 1)
    result = paired_auc_difference(labels, reference, candidate)
    assert result["difference"] == pytest.approx(roc_auc_score(labels, candidate) - roc_auc_score(labels, reference))
    assert result["std_error"] ** 2 == pytest.approx(_delong_by_hand(labels, reference, candidate))
    assert result["z"] == pytest.approx(result["difference"] / result["std_error"])
    # The same predictions: no difference, no spread.
    assert paired_auc_difference(labels, reference, reference) == {"difference": 0.0, "std_error": 0.0, "z": 0.0}
    with pytest.raises(UserError, match="two positive"):
        paired_auc_difference([0, 0, 1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(UserError, match="3 predictions for 4 labels"):
        paired_auc_difference([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3])


def _tuning(x, y, validation):
    import types

    return types.SimpleNamespace(train=tf.data.Dataset.from_tensor_slices((x, y)).batch(64), validation=validation)


def test_fine_tuning_keeps_only_a_significant_gain(mlp):
    model, x, validation = mlp
    rng = np.random.default_rng(1)
    # Labels that are noise: whatever an epoch on them changes on the validation rows is not a gain.
    noise = (rng.random((len(x), 1)) < 0.5).astype("float32")
    tuned = keras.models.clone_model(model)
    tuned.set_weights(model.get_weights())
    result = fine_tune(tuned, _tuning(x, noise, validation), epochs=1, learning_rate=1e-4)
    assert result["kept"] is False and result["gain_z"] < FINE_TUNE_MIN_Z
    for kept, start in zip(tuned.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(kept, start)
    # A model whose last layer was reset learns its labels back: a gain far beyond noise is kept.
    y = np.concatenate([labels for _, labels in validation])
    broken = keras.models.clone_model(model)
    broken.set_weights(model.get_weights()[:2] + [np.zeros_like(w) for w in model.get_weights()[2:]])
    truth = model.predict(x, verbose=0) > 0.5
    result = fine_tune(broken, _tuning(x, truth.astype("float32"), validation), epochs=1, learning_rate=0.01)
    assert result["kept"] is True and result["gain_z"] >= FINE_TUNE_MIN_Z and result["auc_gain"] > 0.1
    assert result["rows"] == len(y)


def test_fine_tuning_from_a_teacher_fits_its_predictions_not_the_labels(mlp):
    from tfafm.training import _distilled

    model, x, validation = mlp
    rng = np.random.default_rng(2)
    noise = (rng.random((len(x), 1)) < 0.5).astype("float32")  # training labels that say nothing
    tuning = _tuning(x, noise, validation)
    targets = np.concatenate([y for _, y in _distilled(tuning.train, model, {"click": False})])
    np.testing.assert_allclose(targets, model.predict(x, verbose=0), atol=1e-6)
    # A model whose last layer was reset learns the teacher back from its predictions, whatever the labels.
    broken = keras.models.clone_model(model)
    broken.set_weights(model.get_weights()[:2] + [np.zeros_like(w) for w in model.get_weights()[2:]])
    result = fine_tune(broken, tuning, epochs=1, learning_rate=0.01, teacher=model)
    assert result["kept"] is True and result["auc_gain"] > 0.1
    with pytest.raises(UserError, match="the teacher .* has 1 output\\(s\\), the data 2 label column"):
        _distilled(tuning.train.map(lambda x, y: (x, (y, y))), model, {"click": False})


def _logit_twin(model):
    """``model`` with its last sigmoid taken off: the same scores as logits."""
    hidden = model.get_layer("hidden").output
    logits = keras.layers.Dense(1, name="click")(hidden)
    twin = keras.Model(model.inputs, logits, name="mlp_logits")
    twin.get_layer("click").set_weights(model.get_layer("click").get_weights())
    return twin


def test_a_model_of_logits_is_scored_on_their_sigmoid(mlp):
    """A user's model ending in Dense(1) without sigmoid (trained from_logits): its AUC and LogLoss are those
    of the probability model it stands for. They were computed on logits clipped to [1e-7, 1 - 1e-7], every
    negative logit tied: a wrong AUC, exit 0."""
    from tfafm.metrics import evaluate, logit_outputs, predict_outputs, scores

    model, _, validation = mlp
    twin = _logit_twin(model)
    raw, labels = predict_outputs(twin, validation, probabilities=False)
    assert raw["click"].min() < 0 and logit_outputs(twin, raw) == {"click": True}
    assert logit_outputs(model, raw) == {"click": False}  # the sigmoid layer says so, whatever the values
    np.testing.assert_allclose(evaluate(twin, validation)["auc"], evaluate(model, validation)["auc"], rtol=1e-9)
    np.testing.assert_allclose(evaluate(twin, validation)["logloss"], evaluate(model, validation)["logloss"],
                               rtol=1e-5)
    with pytest.raises(UserError, match="not probabilities"):
        scores(labels["click"], raw["click"])
    # Behind a Reshape (an output squeezed to (batch,)) the last Dense still says "logits".
    squeezed = keras.Model(twin.inputs, keras.layers.Reshape((), name="squeeze")(twin.output))
    assert logit_outputs(squeezed, {"squeeze": np.array([0.5])}) == {"squeeze": True}


def test_a_regression_output_is_compared_as_it_is(mlp):
    """A linear output with labels other than 0/1 (a rating) is a regression, not logits: its agreement was
    measured after a sigmoid (mean abs diff 1.4e-3 where the ratings differed by 0.030), and fine-tuning it
    ended in sklearn's "continuous format is not supported"."""
    from tfafm.compression.budget import compare_on
    from tfafm.metrics import predict_outputs

    model, x, validation = mlp
    rating = _logit_twin(model)  # a Dense(1) without activation, read as a rating
    ratings = validation.map(lambda features, y: (features, 1.0 + 4.0 * y + 0.25))
    raw, _ = predict_outputs(rating, ratings, probabilities=False)
    given, labels = predict_outputs(rating, ratings)
    np.testing.assert_array_equal(given["click"], raw["click"])
    shifted = keras.models.clone_model(rating)  # every rating 0.5 higher
    shifted.set_weights(rating.get_weights()[:-1] + [rating.get_weights()[-1] + 0.5])
    agreement = compare_on(rating, shifted, ratings)["outputs"]
    assert next(iter(agreement.values()))["agreement"]["mean_abs_diff"] == pytest.approx(0.5, abs=1e-5)
    with pytest.raises(UserError, match="needs 0/1 labels of both classes; its labels hold 2 distinct value"):
        fine_tune(rating, _tuning(x, np.ones((len(x), 1), "float32"), ratings), epochs=1, learning_rate=1e-3)


def test_labels_that_are_not_0_1_are_named_not_scored(mlp):
    """Soft, -1/1 or missing labels: tfafm.metrics.scores raised sklearn's ValueError, and compress's report
    left the AUC cells blank without a word."""
    from tfafm.metrics import scores

    for labels, shown in (([0, 0.3, 1, 1], "0.3"), ([-1, 1, 1, -1], "-1, 1"), ([0, np.nan, 1, 1], "nan")):
        with pytest.raises(UserError, match=f"AUC and LogLoss score 0/1 labels; these hold .*{shown}"):
            scores(labels, [0.1, 0.2, 0.3, 0.4])
    model, x, validation = mlp
    signed = validation.map(lambda features, y: (features, 2.0 * y - 1.0))
    _, report = tfafm.compress(model, x, ranks={"hidden": 4}, validation_data=signed, progress=False)
    assert "No AUC or LogLoss for output 'click': its labels hold 2 distinct value(s): -1, 1; AUC and LogLoss " \
           "score 0/1 labels of both classes." in report.to_markdown()


def test_an_output_the_graph_does_not_say_the_kind_of_is_read_with_a_warning():
    """An Add of two logits: values inside [0, 1] were read as probabilities without a word (LogLoss 1.98
    where the sigmoid's is 0.64)."""
    import warnings

    from tfafm.metrics import logit_outputs

    inputs = keras.Input((1,), name="x")
    model = keras.Model(inputs, keras.layers.Add(name="sum")([inputs, inputs]))
    with pytest.warns(UserWarning, match="'sum' of model .* does not say whether it gives probabilities or logits"):
        assert logit_outputs(model, {"sum": np.array([0.1, 0.7])}) == {"sum": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # values outside [0, 1] are logits for certain: nothing to say
        assert logit_outputs(model, {"sum": np.array([-0.5, 0.7])}) == {"sum": True}


def test_fine_tuning_a_model_of_logits_trains_on_their_sigmoid(mlp):
    """Fine-tuning and distilling a logit model: the loss takes its outputs from_logits and the teacher's
    logits become probabilities (binary cross-entropy on raw logits trains a different model)."""
    model, x, validation = mlp
    twin = _logit_twin(model)
    tuning = _tuning(x, (model.predict(x, verbose=0) > 0.5).astype("float32"), validation)
    broken = keras.models.clone_model(twin)
    broken.set_weights(twin.get_weights()[:2] + [np.zeros_like(w) for w in twin.get_weights()[2:]])
    result = tfafm.fine_tune(broken, tuning, epochs=1, learning_rate=0.01, teacher=twin)
    assert result["kept"] is True and result["auc_gain"] > 0.1
    assert 0.0 < result["logloss"] < 0.69


def test_a_dict_output_of_logits_is_compiled_from_logits(mlp):
    """Outputs given as a dict: the logit flags are keyed by the dict's keys, which compile_for_ctr looked up
    by layer name; it missed and trained the logits with a probabilities' cross-entropy."""
    from tfafm.training import compile_for_ctr

    model, _, _ = mlp
    logits = keras.layers.Dense(1, name="ctr_logit")(model.get_layer("hidden").output)
    keyed = keras.Model(model.inputs, {"ctr": logits, "seen": model.output})
    compile_for_ctr(keyed, 1e-3, {"ctr": True, "seen": False})
    assert {key: loss.get_config()["from_logits"] for key, loss in keyed.loss.items()} == {"ctr": True, "seen": False}


def test_a_dict_output_takes_a_tuple_of_labels_in_keras_order(mlp):
    """A dict output whose keys are not sorted ({"p_ctr", "a_cvr"}): Keras pairs a tuple of labels with it in
    sorted-key order (``model.outputs``); tfafm paired them in the dict's insertion order (each head scored
    on the other's labels, exit 0), and distillation looked the teacher's outputs up by layer name (KeyError)."""
    from tfafm.graph import output_names
    from tfafm.metrics import predict_outputs

    model, x, validation = mlp
    cvr = keras.layers.Dense(1, activation="sigmoid", name="cvr_head")(model.get_layer("hidden").output)
    keyed = keras.Model(model.inputs, {"p_ctr": model.output, "a_cvr": cvr}, name="two_heads")
    assert output_names(keyed) == ["a_cvr", "p_ctr"]
    data = validation.map(lambda features, y: (features, (y, 1.0 - y)))
    outputs, labels = predict_outputs(keyed, data)
    truth = np.concatenate([y for _, y in validation]).reshape(-1)
    np.testing.assert_array_equal(labels["a_cvr"], truth)
    np.testing.assert_array_equal(labels["p_ctr"], 1.0 - truth)
    keyed.compile(loss="binary_crossentropy", metrics={"p_ctr": ["binary_accuracy"], "a_cvr": ["binary_accuracy"]})
    by_keras = keyed.evaluate(data, verbose=0, return_dict=True)
    for name in ("a_cvr", "p_ctr"):  # Keras scores each head on the labels tfafm paired it with
        own = np.mean((outputs[name] > 0.5) == (labels[name] > 0.5))
        assert by_keras[f"{name}_binary_accuracy"] == pytest.approx(own, abs=1e-6)
    student = keras.models.clone_model(keyed)
    student.set_weights(keyed.get_weights())
    targets = model.predict(x, verbose=0)
    result = fine_tune(student, _tuning(x, (targets, targets), data), epochs=1, learning_rate=1e-4, teacher=keyed)
    assert set(result) >= {"auc", "kept"}


def test_fine_tuning_is_not_kept_when_another_output_loses(mlp):
    """A two-output model whose first head gains from fine-tuning while the second loses beyond noise keeps
    its starting weights (it was judged on the first output alone), and the result reports both heads."""
    import types

    model, x, validation = mlp
    fresh = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros", name="a_head")
    two = keras.Model(model.inputs, {"b_cvr": model.output, "a_ctr": fresh(model.get_layer("hidden").output)})
    y = (model.predict(x, verbose=0) > 0.5).astype("float32")
    tuning = types.SimpleNamespace(train=tf.data.Dataset.from_tensor_slices((x, (y, 1.0 - y))).batch(64),
                                   validation=validation.map(lambda features, labels: (features, (labels, labels))))
    start = [w.copy() for w in two.get_weights()]
    result = fine_tune(two, tuning, epochs=1, learning_rate=0.01)
    outputs = result["outputs"]
    assert outputs["a_ctr"]["auc_gain"] > 0.1 and outputs["a_ctr"]["gain_z"] >= FINE_TUNE_MIN_Z
    assert outputs["b_cvr"]["auc_gain"] < 0 and outputs["b_cvr"]["gain_z"] <= -FINE_TUNE_MIN_Z
    assert result["kept"] is False
    for now, before in zip(two.get_weights(), start):
        np.testing.assert_array_equal(now, before)


def test_the_report_describes_the_weights_fine_tuning_left(mlp):
    """`tfafm compress --finetune-epochs` kept the fine-tuned weights and wrote the report of the compressed ones
    (their validation AUC and agreement), which the saved model no longer had."""
    from tfafm.metrics import evaluate
    from tfafm.pipeline import _after_fine_tuning

    model, x, validation = mlp
    small, report = tfafm.compress(model, x, target_ratio=2, validation_data=validation, progress=False)
    compressed_auc = report.accuracy["validation"]["outputs"]["click"]["compressed"]["auc"]
    small.set_weights([w * 0.5 for w in small.get_weights()])  # what fine-tuning would change
    gain = {"auc_gain": 0.01, "gain_z": 2.0}
    kept = _after_fine_tuning(report, {**gain, "kept": True}, model, small, validation, 1, "teacher")
    now = evaluate(small, validation)["auc"]
    assert now != pytest.approx(compressed_auc, abs=1e-6)
    assert kept.accuracy["validation"]["outputs"]["click"]["compressed"]["auc"] == pytest.approx(now, abs=1e-9)
    assert "check" not in kept.accuracy and kept.accuracy["finetuning"]["kept"] is True
    assert "fine-tuned 1 epoch(s) on the original model's predictions: kept" in kept.to_markdown()
    dropped = _after_fine_tuning(report, {**gain, "kept": False}, model, small, validation, 1, "labels")
    assert dropped.accuracy["validation"] == report.accuracy["validation"] and "check" in dropped.accuracy
    assert "fine-tuned 1 epoch(s) on the labels: not kept" in dropped.to_markdown()


def test_fine_tuning_refuses_validation_rows_that_move_between_passes(mlp):
    model, x, validation = mlp
    shuffled = validation.unbatch().shuffle(10_000, seed=None, reshuffle_each_iteration=True).batch(128)
    tuned = keras.models.clone_model(model)
    tuned.set_weights(model.get_weights())
    with pytest.raises(UserError, match="another order"):
        fine_tune(tuned, _tuning(x, model.predict(x, verbose=0), shuffled), epochs=1, learning_rate=1e-4)


def test_tolerances_accept_rounding_and_refuse_broken_outputs():
    reference = np.linspace(0.05, 0.95, 200)
    exact = verify.TOLERANCES[None]
    assert exact.violation(reference, reference + 5e-5) is None
    assert "max abs diff" in exact.violation(reference, reference + 1e-3)
    int8 = verify.TOLERANCES["dynamic"]
    noisy = reference + np.random.default_rng(0).normal(scale=0.01, size=200)
    assert int8.violation(reference, noisy) is None
    narrow = np.linspace(0.25, 0.26, 200)  # reversed: small differences, opposite order
    assert "rank correlation" in int8.violation(narrow, narrow[::-1].copy())
    assert "mean abs diff" in int8.violation(reference, reference + 0.2)
    assert "mean abs diff" in int8.violation(reference, reference + 0.02)  # dynamic int8 is held closer ...
    assert verify.TOLERANCES["int8"].violation(reference, reference + 0.02) is None  # ... than full integer
    assert "non-finite" in int8.violation(reference, np.full(200, np.nan))


# ---------------------------------------------------------------- exports that go wrong are refused


def _assert_nothing_written(folder):
    assert sorted(p.name for p in folder.iterdir()) == []


def test_litert_file_that_does_not_load_is_refused(mlp, tmp_path, monkeypatch):
    litert_module = importlib.import_module("tfafm.export.litert_export")

    write = litert_module.write_with_signature

    def truncated(flatbuffer, interface, path, edit=None):
        write(flatbuffer, interface, path, edit=edit)
        with open(path, "r+b") as f:
            f.truncate(64)

    monkeypatch.setattr(litert_module, "write_with_signature", truncated)
    with pytest.raises(UserError, match="LiteRT cannot load"):
        tfafm.export.litert(mlp[0], str(tmp_path / "m.tflite"))
    _assert_nothing_written(tmp_path)


def test_litert_file_with_wrong_weights_is_refused(mlp, tmp_path, monkeypatch):
    litert_module = importlib.import_module("tfafm.export.litert_export")

    write = litert_module.write_with_signature

    def scaled(flatbuffer, interface, path, edit=None):
        def double_the_largest_weight(flat):
            data = max((b for b in flat.buffers if b.data is not None), key=lambda b: len(b.data))
            values = np.frombuffer(np.asarray(data.data, dtype=np.uint8).tobytes(), np.float32) * 2
            data.data = np.frombuffer(values.tobytes(), dtype=np.uint8)

        write(flatbuffer, interface, path, edit=double_the_largest_weight)

    monkeypatch.setattr(litert_module, "write_with_signature", scaled)
    with pytest.raises(UserError, match="LiteRT file .*disagrees with the Keras model 'mlp'.*max abs diff"):
        tfafm.export.litert(mlp[0], str(tmp_path / "m.tflite"))
    _assert_nothing_written(tmp_path)


def test_onnx_file_with_wrong_weights_is_refused(mlp, tmp_path, monkeypatch):
    import onnx
    import onnx.numpy_helper

    onnx_module = importlib.import_module("tfafm.export.onnx_export")

    finish = onnx_module._finish

    def tampered(path, names):
        finish(path, names)
        graph = onnx.load(path)
        initializer = max(graph.graph.initializer, key=lambda t: len(t.raw_data))
        initializer.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(initializer), initializer.name))
        onnx.save(graph, path)

    monkeypatch.setattr(onnx_module, "_finish", tampered)
    with pytest.raises(UserError, match="ONNX file .*disagrees"):
        tfafm.export.onnx(mlp[0], str(tmp_path / "m.onnx"))
    _assert_nothing_written(tmp_path)


def test_saved_model_that_computes_something_else_is_refused(mlp, tmp_path, monkeypatch):
    model = mlp[0]
    save = tf.saved_model.save

    def shifted(module, path, signatures):
        serve = tf.function(lambda inputs: {k: v + 0.5 for k, v in signatures["serving_default"](inputs).items()},
                            input_signature=signatures["serving_default"].input_signature)
        save(module, path, signatures={"serving_default": serve})

    monkeypatch.setattr(tf.saved_model, "save", shifted)
    with pytest.raises(UserError, match="SavedModel file .*disagrees"):
        tfafm.export.saved_model(model, str(tmp_path / "sm"))
    _assert_nothing_written(tmp_path)


def test_exports_are_checked_on_the_given_rows(mlp, tmp_path):
    model, x, _ = mlp
    path = tfafm.export.litert(model, str(tmp_path / "m.tflite"), quantization="dynamic", verification_data=x)
    got = tfafm.export.LiteRTRunner(path)({"x": x[:64]})
    assert agreement(np.asarray(model(x[:64])), got)["rank_correlation"] > 0.99


def _normalized_amount_model():
    """A model with a ``Normalization`` adapted to amounts around 20,000: standard-normal check rows lie
    thousands of standard deviations away from what it was fitted on."""
    keras.utils.set_random_seed(0)
    amount = (20_000 + 5 * np.random.default_rng(0).normal(size=(2_000, 1))).astype("float32")
    normalization = keras.layers.Normalization()
    normalization.adapt(amount)
    inputs = keras.Input((1,), name="amount")
    hidden = keras.layers.Dense(16, activation="relu")(normalization(inputs))
    model = keras.Model({"amount": inputs}, keras.layers.Dense(1, activation="sigmoid")(hidden))
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    model.fit({"amount": amount}, (amount[:, 0] > 20_001.5).astype("float32"), epochs=5, batch_size=64, verbose=0)
    return model, amount


def test_generated_check_rows_follow_what_normalization_and_discretization_were_fitted_on():
    from tfafm.compression.samples import generated_rows

    model, amount = _normalized_amount_model()
    rows = generated_rows(model, rows=4_000)["amount"]
    assert abs(rows.mean() - amount.mean()) < 0.5 and abs(rows.std() - amount.std()) < 0.5
    inputs = keras.Input((1,), name="age")
    binned = keras.layers.Discretization(bin_boundaries=[18.0, 30.0, 65.0])(inputs)
    ages = generated_rows(keras.Model(inputs, keras.layers.CategoryEncoding(4)(binned)), rows=4_000)["age"]
    assert all(np.mean(np.digitize(ages, [18.0, 30.0, 65.0]) == b) > 0.05 for b in range(4))
    one = keras.layers.Discretization(bin_boundaries=[20_000.0])(inputs)  # one boundary: both sides of it
    amounts = generated_rows(keras.Model(inputs, keras.layers.CategoryEncoding(2)(one)), rows=4_000)["age"]
    assert 0.2 < np.mean(amounts < 20_000.0) < 0.8


def test_generated_ids_put_the_small_frequent_ids_in_many_rows(tmp_path, monkeypatch):
    """Uniform ids put ids 1-3 of a 1,000-id field in 0.3% of the check rows (real CTR rows: 31%), so a file
    with those rows of its table zeroed passed its check without real rows: half the ids are log-uniform."""
    from tfafm.compression.samples import generated_rows
    from tfafm.export import litert, litert_export

    ids = keras.Input((1,), dtype="int32", name="item")
    table = keras.layers.Embedding(1_000, 8, name="table")
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(table(ids))))
    rows = generated_rows(model)["item"]
    assert rows.min() >= 0 and rows.max() < 1_000
    assert np.mean((rows >= 1) & (rows <= 3)) > 0.04 and np.mean(rows >= 500) > 0.15

    write = litert_export._write

    def damaged(m, *args):  # the file is written from a copy whose rows 1-3 are zero
        copy = keras.models.clone_model(m)
        copy.set_weights(m.get_weights())
        weights = copy.get_layer("table").embeddings
        weights.assign(ops.concatenate([weights[:1], ops.zeros((3, 8)), weights[4:]], axis=0))
        return write(copy, *args)

    monkeypatch.setattr(litert_export, "_write", damaged)
    with pytest.raises(UserError, match="disagrees with the Keras model"):
        litert(model, str(tmp_path / "m.tflite"))


def test_a_float16_file_wrong_at_the_inputs_normalization_magnitude_is_refused_without_real_rows(tmp_path):
    """Checked on standard-normal rows, a float16 file that loses the normalization constants of amounts
    around 20,000 was written (off by 0.93 on real rows)."""
    model, _ = _normalized_amount_model()
    with pytest.raises(UserError, match=r"LiteRT file \(float16\) disagrees .* It was not written"):
        tfafm.export.litert(model, str(tmp_path / "m.tflite"), quantization="float16")
    assert not (tmp_path / "m.tflite").exists()


def test_a_full_int8_file_is_checked_on_its_representative_rows(tmp_path, monkeypatch):
    """Without verification_data, the rows of representative_data (real rows the caller gave) check the
    file: generated rows, on which a wrong file can pass, are the last resort."""
    import tfafm.export.verify as verify_module

    model, amount = _normalized_amount_model()
    checked = []
    verify_export = verify_module.verify_export
    monkeypatch.setattr(verify_module, "verify_export",
                        lambda path, kind, keras_model, rows, *args: (checked.append(rows["amount"]),
                                                                      verify_export(path, kind, keras_model, rows,
                                                                                    *args))[1])
    representative = tf.data.Dataset.from_tensor_slices({"amount": amount}).batch(64)
    with pytest.raises(UserError, match="It was not written"):
        tfafm.export.litert(model, str(tmp_path / "m.tflite"), quantization="int8",
                            representative_data=representative)
    np.testing.assert_array_equal(checked[0], amount[:256])


# ---------------------------------------------------------------- tables written outside the converter


@pytest.fixture(scope="module")
def big_table_model():
    """A DeepFM whose one table is big enough to be written into the file after conversion."""
    from tfafm.export.litert_export import _TablePatch
    from tfafm.schema import Schema, SparseFeature

    rows = _TablePatch.MIN_ELEMENTS // 8 + 7
    keras.utils.set_random_seed(3)
    model = tfafm.models.build("deepfm", Schema([SparseFeature("big", rows, 8), SparseFeature("small", 50, 8)]),
                               hidden_units=(16,))
    table = model.get_layer("big_embedding")
    table.embeddings.assign(np.random.default_rng(0).normal(0, 0.05, table.embeddings.shape).astype("float32"))
    assert _TablePatch(model).layers == [table]
    return model


def _sabotaged_int8(monkeypatch, wrong):
    """Makes the table writer's int8 quantization return ``wrong(scale, data)``."""
    module = importlib.import_module("tfafm.export.litert_export")
    quantize = module._int8_symmetric
    monkeypatch.setattr(module, "_int8_symmetric", lambda table: wrong(*quantize(table)))


def test_int8_table_with_a_wrong_scale_is_refused(big_table_model, tmp_path, monkeypatch):
    _sabotaged_int8(monkeypatch, lambda scale, data: (scale * 1.5, data))
    with pytest.raises(UserError, match=r"\(dynamic\) does not hold the embedding table of layer 'big_embedding': "
                                        r"values off by up to"):
        tfafm.export.litert(big_table_model, str(tmp_path / "m.tflite"), quantization="dynamic")
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("quantization", [None, "float16", "dynamic"])
def test_table_with_a_damaged_last_row_is_refused(quantization, big_table_model, tmp_path, monkeypatch):
    """One wrong row among 32,775 escapes any check of outputs; reading the table back does not let it pass."""
    from tfafm.export.litert_export import _TablePatch

    patcher = _TablePatch.patcher

    def damaging(self, quantization):
        edit = patcher(self, quantization)

        def edit_then_damage(flat):
            edit(flat)
            for index in self.written:
                buffer = flat.buffers[flat.subgraphs[0].tensors[index].buffer]
                buffer.data = np.array(buffer.data, dtype=np.uint8)
                buffer.data[-4:] = 17
        return edit_then_damage

    monkeypatch.setattr(_TablePatch, "patcher", damaging)
    with pytest.raises(UserError, match="does not hold the embedding table of layer 'big_embedding'"):
        tfafm.export.litert(big_table_model, str(tmp_path / "m.tflite"), quantization=quantization)
    _assert_nothing_written(tmp_path)


def test_output_check_alone_refuses_a_wrongly_scaled_int8_table(big_table_model, tmp_path, monkeypatch):
    """The comparison of outputs is a backstop of its own: without the table read-back, a 3x scale still fails
    (mean |difference| about 0.019 (1 + mean |keras|) and rank correlation 0.987 here, which the former
    dynamic-int8 tolerance, 0.05 and 0.9, let through)."""
    from tfafm.export.litert_export import _TablePatch

    monkeypatch.setattr(_TablePatch, "check", lambda self, path, quantization: None)
    _sabotaged_int8(monkeypatch, lambda scale, data: (scale * 3, data))
    with pytest.raises(UserError, match="LiteRT file \\(dynamic\\) disagrees with the Keras model"):
        tfafm.export.litert(big_table_model, str(tmp_path / "m.tflite"), quantization="dynamic")
    _assert_nothing_written(tmp_path)


def _mixed_magnitudes(low_rank: bool = False):
    """A Dense (or a rank-8 LowRankDense) over 400 tiny features (which carry the signal) concatenated with
    4 large ones, and rows."""
    small, dense = keras.Input((400,), name="small"), keras.Input((4,), name="dense")
    joined = keras.layers.Concatenate(name="joined")([small, dense])
    layer = (tfafm.LowRankDense(16, rank=8, activation="relu", name="hidden") if low_rank
             else keras.layers.Dense(16, activation="relu", name="hidden"))
    hidden = layer(joined)
    model = keras.Model([small, dense], keras.layers.Dense(1, activation="sigmoid", name="click")(hidden),
                        name="mixed")
    rng = np.random.default_rng(0)
    width = 8 if low_rank else 16
    kernel = np.concatenate([rng.normal(0, 30, (400, width)), rng.normal(0, 0.1, (4, width))]).astype("float32")
    if low_rank:
        layer.set_weights([kernel, rng.normal(0, 0.3, (8, 16)).astype("float32"), np.zeros(8, "float32"),
                           np.zeros(16, "float32")])  # down, up, down bias, up bias
    else:
        layer.set_weights([kernel, np.zeros(16, "float32")])
    rows = {"small": rng.normal(0, 1e-3, (256, 400)).astype("float32"),
            "dense": rng.normal(0, 3, (256, 4)).astype("float32")}
    return model, rows


@pytest.mark.parametrize("low_rank", [False, True])
def test_dynamic_int8_that_loses_small_inputs_is_refused_with_the_reason(tmp_path, monkeypatch, low_rank):
    """Without the block split, dynamic int8 rounds the tiny block away: the file is refused, not handed back."""
    hybrid = importlib.import_module("tfafm.export.hybrid")
    monkeypatch.setattr(hybrid, "split_coarse_inputs", lambda model, rows: (model, []))
    model, rows = _mixed_magnitudes(low_rank)
    with pytest.raises(verify.Disagreement, match=r"mean abs diff .* one scale, which loses small values"):
        tfafm.export.litert(model, str(tmp_path / "m.tflite"), quantization="dynamic", verification_data=rows)
    _assert_nothing_written(tmp_path)


def test_dynamic_int8_splits_a_dense_over_blocks_of_different_magnitudes(tmp_path):
    model, rows = _mixed_magnitudes()
    path = tfafm.export.litert(model, str(tmp_path / "m.tflite"), quantization="dynamic", verification_data=rows)
    got = agreement(np.asarray(model(rows)), tfafm.export.LiteRTRunner(path)(rows))
    assert got["mean_abs_diff"] < 0.005 and got["rank_correlation"] > 0.999
    assert tfafm.export.litert_ops(path).count("FULLY_CONNECTED") == 3  # hidden as two blocks, then click
    # A LowRankDense there (a compressed model's first layer) gets its first factor split the same way.
    model, rows = _mixed_magnitudes(low_rank=True)
    path = tfafm.export.litert(model, str(tmp_path / "low.tflite"), quantization="dynamic", verification_data=rows)
    got = agreement(np.asarray(model(rows)), tfafm.export.LiteRTRunner(path)(rows))
    assert got["mean_abs_diff"] < 0.005 and got["rank_correlation"] > 0.999
    assert tfafm.export.litert_ops(path).count("FULLY_CONNECTED") == 4  # two blocks, the up factor, click
    # A model that agrees as it is keeps its one matmul per layer.
    inputs = keras.Input((16,), name="x")
    plain = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(96, activation="relu")(inputs)))
    path = tfafm.export.litert(plain, str(tmp_path / "plain.tflite"), quantization="dynamic")
    assert tfafm.export.litert_ops(path).count("FULLY_CONNECTED") == 2


# ---------------------------------------------------------------- compress checks what it returns


@keras.saving.register_keras_serializable(package="tfafm_tests")
class Rescale(keras.layers.Layer):
    """A user layer whose factor is a plain attribute set after construction: not a weight,
    not in its config, not an asset (so Keras' own saving loses it too)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.factor = None

    def call(self, x):
        return x * self.factor


def _rescaled_model(factor):
    inputs = keras.Input((16,), name="x")
    rescale = Rescale(name="rescale")
    rescale.factor = factor
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(rescale(inputs))
    return keras.Model(inputs, keras.layers.Dense(1, name="out")(hidden))


def test_a_layer_that_cannot_run_once_rewritten_is_named():
    model = _rescaled_model(ops.ones((16,)))  # a tensor: the re-created layer has None and fails
    data = np.random.default_rng(0).normal(size=(256, 16)).astype("float32")
    with pytest.raises(UserError, match="Rebuilding model .* fails in layer 'rescale' \\(Rescale\\)"):
        tfafm.compress(model, data, ranks={"hidden": 4}, progress=False)


def test_a_layer_that_computes_differently_once_rewritten_is_named():
    class Offset(Rescale):
        def call(self, x):
            return x + (0.0 if self.factor is None else self.factor)

    inputs = keras.Input((16,), name="x")
    offset = Offset(name="offset")
    offset.factor = 3.0
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(offset(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(hidden))
    data = np.random.default_rng(0).normal(size=(256, 16)).astype("float32")
    with pytest.raises(UserError, match="'offset' .*computes differently.*save_assets"):
        tfafm.compress(model, data, ranks={"hidden": 4}, progress=False)


def test_validation_data_measures_the_accuracy_cost(mlp):
    model, x, validation = mlp
    small, report = tfafm.compress(model, x, target_ratio=2, validation_data=validation, progress=False)
    row = report.accuracy["validation"]["outputs"]["click"]
    expected_before = tfafm.evaluate(model, validation)["auc"]
    expected_after = tfafm.evaluate(small, validation)["auc"]
    assert row["original"]["auc"] == pytest.approx(expected_before, abs=1e-12)
    assert row["compressed"]["auc"] == pytest.approx(expected_after, abs=1e-12)
    assert row["auc_drop"] == pytest.approx(expected_before - expected_after, abs=1e-12)
    assert report.accuracy["validation"]["rows"] == ROWS
    assert "## Accuracy on 512 validation rows" in report.to_markdown()
    assert report.to_dict()["accuracy"]["validation"]["outputs"]["click"]["agreement"]["rows"] == ROWS


# ---------------------------------------------------------------- the smallest model within a budget


def test_budget_search_finds_the_exact_low_rank_model():
    """A 256-256-256 MLP whose middle matrices have rank 4: AFM at rank >= 4 reproduces it exactly,
    so with a zero AUC budget the search must reach the ratio at which every rank is 4 (the file's
    fixed part, the last layer and the per-layer records, is small next to the matrices)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2048, 256)).astype("float32")
    inputs = keras.Input((256,), name="x")
    a = keras.layers.Dense(256, name="a")
    b = keras.layers.Dense(256, name="b")
    hidden = b(a(inputs))
    out = keras.layers.Dense(1, activation="sigmoid", name="click")(hidden)
    model = keras.Model(inputs, out)
    for layer in (a, b):
        low = rng.normal(size=(256, 4)) @ rng.normal(size=(4, 256)) / 32
        layer.set_weights([low.astype("float32"), np.zeros(256, "float32")])
    model.get_layer("click").set_weights([rng.normal(size=(256, 1)).astype("float32") / 16, np.zeros(1, "float32")])
    # Labels the original ranks perfectly (AUC 1): any model that reorders a pair loses AUC, so only
    # the exact rank-4 factors keep a zero budget (whatever the tests before left in Keras' seed).
    probabilities = np.asarray(model(x)).reshape(-1)
    y = (probabilities > np.median(probabilities)).astype("float32")[:, None]
    validation = (x[1024:], y[1024:])
    # Under the variance criterion: the loss criterion sees that the logit, linear in x, reads one
    # direction of each layer's outputs, and keeps the predictions at rank 1 (asserted at the end).
    small, report = tfafm.compress(model, x[:1024], max_auc_drop=0.0, validation_data=validation, progress=False,
                                   objective="params", criterion="variance")
    budget = report.accuracy["budget"]
    assert 1 <= budget["evaluations"] <= MAX_EVALUATIONS
    assert report.accuracy["validation"]["outputs"]["click"]["auc_drop"] <= 1e-9
    assert {row.name: row.rank for row in report.layers} == {"a": 4, "b": 4}
    assert report.ratio > 6
    assert all(not r["within_budget"] for r in budget["frontier"] if r["reachable"] and r["ratio"] > budget["chosen_ratio"])
    by_loss, _ = tfafm.compress(model, x[:1024], ranks={"a": 1, "b": 1}, progress=False)
    np.testing.assert_allclose(by_loss.predict(x[1024:], verbose=0), model.predict(x[1024:], verbose=0), atol=1e-3)


def test_a_frontier_row_shows_the_output_whose_drop_decides(tmp_path):
    """A two-output model's frontier rows showed the first output's AUC beside the worst output's drop (a row at
    AUC 0.6976, 0.0014 below the original's 0.6990, marked outside a 0.002 budget): the row now names the output
    whose drop decides and shows its AUC and LogLoss; the plot draws that AUC change."""
    from tfafm.compression.budget import Candidate
    from tfafm.compression.report import plot_budget

    outputs = {"ctr": {"auc_drop": 0.0014, "compressed": {"auc": 0.6976, "logloss": 0.55}},
               "a_cvr": {"auc_drop": 0.0031, "compressed": {"auc": 0.5151, "logloss": 0.15}}}
    candidate = Candidate(2.59, {"hidden": 3}, 1_000, 4_000, {"outputs": outputs}, 0.0031)
    row = candidate.row(0.002)
    assert (row["output"], row["auc"], row["logloss"], row["auc_drop"], row["within_budget"]) == (
        "a_cvr", 0.5151, 0.15, 0.0031, False)
    budget = {"frontier": [row, {**row, "ratio": 2.0, "file_bytes": 5_000, "auc_drop": 0.001}], "chosen_ratio": 2.0,
              "original_file_bytes": 10_000, "max_auc_drop": 0.002, "quantization": "float32",
              "original": {"ctr": {"auc": 0.699}}}
    if plot_budget(budget, str(tmp_path / "frontier.png")):  # False without matplotlib
        assert (tmp_path / "frontier.png").stat().st_size > 0


def test_budget_search_needs_labelled_validation_data(mlp):
    model, x, _ = mlp
    with pytest.raises(UserError, match="validation_data"):
        tfafm.compress(model, x, max_auc_drop=0.001, progress=False)
    with pytest.raises(UserError, match="max_auc_drop must be a number"):
        tfafm.compress(model, x, max_auc_drop=float("nan"), validation_data=(x, x[:, :1] > 0), progress=False)


def test_recurrent_layer_over_a_sequence_of_unknown_length_is_refused_with_the_fix(tmp_path):
    steps = keras.Input((None,), dtype="int32", name="history")
    vectors = keras.layers.Embedding(20, 4, name="table")(steps)
    model = keras.Model(steps, keras.layers.Dense(1)(keras.layers.GRU(4, name="gru")(vectors)))
    rows = {"history": np.ones((8, 5), "int32")}
    with pytest.raises(UserError, match="'gru' \\(GRU\\) runs over a sequence of unknown length.*fixed length"):
        tfafm.export.litert(model, str(tmp_path / "m.tflite"), verification_data=rows)
    _assert_nothing_written(tmp_path)


def test_labels_paired_with_another_output_are_warned_about():
    """`?label=click,conv` on outputs {"ctr", "a_cvr"} pairs click with a_cvr (Keras' sorted keys): a 30% label rate
    scored against a head predicting 3%, without a word. A warning now names the output and both rates."""
    from tfafm.metrics import warn_if_labels_look_paired_wrongly

    model = keras.Sequential(name="two_heads")
    outputs = {"a_cvr": np.full(100, 0.03), "ctr": np.full(100, 0.3)}
    rng = np.random.default_rng(0)
    paired = {"a_cvr": (rng.random(100) < 0.03).astype("float32"), "ctr": (rng.random(100) < 0.3).astype("float32")}
    paired["a_cvr"][:2] = [0.0, 1.0]  # both classes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_labels_look_paired_wrongly(model, outputs, paired)  # right: silent
    swapped = {"a_cvr": paired["ctr"], "ctr": paired["a_cvr"]}
    with pytest.warns(UserWarning, match=r"Output 'a_cvr' of model 'two_heads' predicts a mean of 0.03 .* positive "
                                         r"rate is 0.2"):
        warn_if_labels_look_paired_wrongly(model, outputs, swapped)
