"""compress(first_order="codes"): a first-order table read from the fields' embeddings."""

import os

import keras
import numpy as np
import pytest

import tfafm
from tfafm import models
from tfafm.compression import first_order
from tfafm.compression.report import estimated_file_bytes
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.models.layers import LinearTerms

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    generator = SyntheticCriteo(seed=3, num_dense=2, num_sparse=4, max_vocabulary=20_000)
    features, labels = next(generator.batches(2048, 2048))
    return generator.schema(embedding_dim=16), features, labels


def _deepfm(data, linear_weights=None):
    """A trained zoo DeepFM; ``linear_weights(model)`` then replaces its first-order table."""
    schema, features, labels = data
    keras.utils.set_random_seed(0)
    model = models.build("deepfm", schema, hidden_units=(16,))
    model.compile("adam", "binary_crossentropy")
    model.fit(features, labels, epochs=2, batch_size=256, verbose=0)
    if linear_weights is not None:
        linear = next(layer for layer in model.layers if isinstance(layer, LinearTerms))
        linear.weights_table.assign(linear_weights(model, linear).astype("float32"))
    return model


def _linear_in_embeddings(model, linear):
    """First-order weights that ARE a linear function of each field's embedding, ``w_f = E_f a_f + c_f``."""
    rng = np.random.default_rng(0)
    plan = first_order.find_plan(model)
    pieces = [layer.embeddings.numpy() @ rng.normal(size=layer.output_dim) + rng.normal()
              for layer in plan.embeddings]
    return np.concatenate(pieces)[:, None]


def test_the_plan_pairs_every_field_with_its_embedding(data):
    model = _deepfm(data)
    plan = first_order.find_plan(model)
    assert type(plan.linear) is LinearTerms
    assert [layer.name for layer in plan.embeddings] == [f"{f.name}_embedding" for f in data[0].sparse]
    assert plan.width == 16 * len(data[0].sparse)
    table = sum(f.vocabulary_size for f in data[0].sparse)
    assert plan.freed_bytes(None) == 4 * table - 4 * (plan.width + 1)
    assert plan.freed_bytes("dynamic") == table + 12 - 4 * (plan.width + 1)  # an int8 table, a float32 Dense
    with pytest.raises(tfafm.errors.UserError, match="calibration data is empty"):
        first_order.count_ids(model, plan, {name: values[:0] for name, values in data[1].items()})
    # Models without a first-order term have no plan.
    assert first_order.find_plan(_dcnv2(data)) is None


def _dcnv2(data):
    return models.build("dcnv2", data[0], hidden_units=(16,))


def test_least_squares_matches_numpy():
    rng = np.random.default_rng(1)
    codes, share = rng.normal(size=(300, 3)), rng.random(300)
    share /= share.sum()
    targets = codes @ rng.normal(size=3) + 0.3 * rng.normal(size=300) + 1.5
    kernel, intercept, variance, residual = first_order._least_squares(codes, targets, share)
    # Reference: weighted least squares with an intercept.
    design = np.hstack([codes, np.ones((300, 1))]) * np.sqrt(share)[:, None]
    solution = np.linalg.lstsq(design, targets * np.sqrt(share), rcond=None)[0]
    np.testing.assert_allclose(kernel, solution[:3], atol=1e-10)
    assert intercept == pytest.approx(solution[3])
    mean = share @ targets
    assert variance == pytest.approx(share @ (targets - mean) ** 2)
    assert residual == pytest.approx(share @ (targets - codes @ solution[:3] - solution[3]) ** 2)


def test_the_joint_fit_matches_numpy_and_wins_where_fields_correlate():
    # Two fields whose ids always agree: each field's weights alone are not linear in its codes, but
    # w_0[i] + w_1[i] is. The field-by-field fit misses the term; the joint fit, on rows, reads it exactly.
    rng = np.random.default_rng(4)
    vocabulary, rows = 40, 2000
    codes = [rng.normal(size=(vocabulary, 2)) for _ in range(2)]
    direction = rng.normal(size=2)
    noise = rng.normal(size=vocabulary)
    weights = np.concatenate([codes[0] @ direction + noise, codes[1] @ direction - noise + 0.5])
    ids = np.repeat(rng.integers(0, vocabulary, size=(rows, 1)), 2, axis=1)
    fields = []
    for f in range(2):
        counts = np.bincount(ids[:, f], minlength=vocabulary).astype(np.float64)
        fields.append(first_order._field(f * vocabulary, _Table(codes[f]), counts, weights, lambda *_: None))
    kernel, intercept = first_order._joint(fields, ids, weights)
    design = np.hstack([codes[0][ids[:, 0]], codes[1][ids[:, 1]], np.ones((rows, 1))])
    targets = weights[ids[:, 0]] + weights[vocabulary + ids[:, 1]]
    reference = np.linalg.lstsq(design, targets, rcond=None)[0]
    np.testing.assert_allclose(design[:, :4] @ kernel + intercept, design @ reference, atol=1e-9)
    assert first_order._error(fields, ids, weights, (kernel, intercept)) == pytest.approx(0.0, abs=1e-18)
    separate = (np.concatenate([f.on_codes for f in fields]), sum(f.intercept for f in fields))
    assert first_order._error(fields, ids, weights, separate) > 0.1


class _Table:
    """Stands in for an embedding layer: its table as ``embeddings``."""

    def __init__(self, table):
        self.embeddings = keras.ops.convert_to_tensor(table)


def test_an_exactly_linear_term_is_read_back_exactly(data):
    model = _deepfm(data, _linear_in_embeddings)
    plan = first_order.find_plan(model)
    counts = first_order.count_ids(model, plan, data[1])
    assert counts.rows == 2048 and all(c.sum() == 2048 for c in counts.counts)
    assert 0 < counts.fisher_weight <= 0.25
    fit = first_order.fit(plan, counts, lambda layer, rows: None)  # tables left whole
    assert fit.kept == pytest.approx(1.0, abs=1e-9) and fit.loss == pytest.approx(0.0, abs=1e-9)
    ids = [np.random.default_rng(f).integers(0, layer.input_dim, 50) for f, layer in enumerate(plan.embeddings)]
    vectors = np.concatenate([layer.embeddings.numpy()[i] for layer, i in zip(plan.embeddings, ids)], axis=1)
    weights = plan.linear.weights_table.numpy()[:, 0]
    expected = sum(weights[offset + i] for offset, i in zip(plan.linear.offsets, ids))
    np.testing.assert_allclose((vectors @ fit.kernel + fit.bias)[:, 0], expected, atol=1e-4)


def test_compress_reads_the_term_from_the_codes_and_the_file_shrinks_as_asked(data, tmp_path):
    model = _deepfm(data, _linear_in_embeddings)
    features = data[1]
    # Every row kept (id_coverage=1): pruned, the table costs so little that keeping it may win.
    small, report = tfafm.compress(model, features, target_ratio=8, quantization="dynamic", id_coverage=1,
                                   progress=False)
    assert not any(isinstance(layer, LinearTerms) for layer in small.layers)
    dense = small.get_layer("linear_terms")
    assert isinstance(dense, keras.layers.Dense) and dense.kernel.shape == (16 * len(data[0].sparse), 1)
    assert any("read from the fields' embeddings" in note and "held-out" in note for note in report.notes)
    ratio = estimated_file_bytes(model, "dynamic") / estimated_file_bytes(small, "dynamic")
    assert 8 <= ratio <= 8 * 1.15
    # Beyond the reach of the model that keeps its table.
    with pytest.raises(tfafm.errors.UserError, match="out of reach"):
        tfafm.compress(model, features, target_ratio=ratio * 1.1, quantization="dynamic", first_order="keep",
                       id_coverage=1, progress=False)
    # The rewired model saves and loads like any other, and its LiteRT file agrees with it.
    path = os.path.join(tmp_path, "small.keras")
    small.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(features, verbose=0),
                               small.predict(features, verbose=0), atol=1e-6)
    tfafm.export.litert(small, os.path.join(tmp_path, "small.tflite"), quantization="dynamic")  # verified there
    # Fused, the term is a Dense on the codes: the one gather reads the fields' codes and nothing else.
    fused, _ = tfafm.fuse(small)
    merged = [layer for layer in fused.layers if isinstance(layer, tfafm.layers.lookup.MergedEmbedding)]
    assert len(merged) == 1 and len(merged[0].widths) == len(data[0].sparse)
    # The predictions stay close to the original's: the term is exactly linear in the embeddings.
    assert report.accuracy["check"]["outputs"]["prediction"]["mean_abs_diff"] < 0.05


def test_a_term_the_embeddings_do_not_explain_keeps_its_table(data):
    def noise(model, linear):
        return np.random.default_rng(2).normal(0.0, 2.0, size=linear.weights_table.shape)

    model = _deepfm(data, noise)
    small, report = tfafm.compress(model, data[1], target_ratio=3, quantization="dynamic", progress=False)
    assert any(isinstance(layer, LinearTerms) for layer in small.layers)
    assert any("kept whole" in note for note in report.notes)


def test_keep_and_explicit_ranks_leave_the_table(data):
    model = _deepfm(data, _linear_in_embeddings)
    kept, report = tfafm.compress(model, data[1], target_ratio=4, first_order="keep", progress=False)
    assert any(isinstance(layer, LinearTerms) for layer in kept.layers)
    assert not any("first-order" in note for note in report.notes)
    chosen = {f"{f.name}_embedding": 2 for f in data[0].sparse}
    ranked, _ = tfafm.compress(model, data[1], ranks=chosen, progress=False)
    assert any(isinstance(layer, LinearTerms) for layer in ranked.layers)
    with pytest.raises(tfafm.errors.UserError, match="first_order must be one of"):
        tfafm.compress(model, data[1], target_ratio=4, first_order="drop", progress=False)


def test_a_term_wired_wrongly_is_refused(data, monkeypatch):
    # Sabotage: the fitted Dense gets the opposite sign. The check against the original term on sample
    # rows refuses the model instead of handing it back.
    model = _deepfm(data, _linear_in_embeddings)
    honest = first_order.fit

    def flipped(*args, **kwargs):
        fitted = honest(*args, **kwargs)
        return first_order.FirstOrderFit(-fitted.kernel, fitted.bias, fitted.variance, fitted.residual, fitted.loss)

    monkeypatch.setattr(first_order, "fit", flipped)
    with pytest.raises(tfafm.errors.UserError, match="first-order term 'linear_terms' read from the fields"):
        tfafm.compress(model, data[1], target_ratio=8, quantization="dynamic", id_coverage=1, progress=False)
