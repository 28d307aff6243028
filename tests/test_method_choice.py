"""``compress(method="auto")``: AFM and weight SVD built at the same ratio, the higher validation AUC kept."""

import keras
import numpy as np
import pytest

import tfafm

WIDTH, STRONG = 64, 16  # the hidden layer's last STRONG units carry most of the kernel's weight


def _model(label_units: slice) -> keras.Model:
    """x (64) -> Dense(64, linear, kernel diag(1, ..., 1, 4, ..., 4)) -> Dense(1, sigmoid) reading ``label_units``
    (the logit is 0.4 times the sum of their inputs)."""
    inputs = keras.Input((WIDTH,), name="x")
    hidden = keras.layers.Dense(WIDTH, name="hidden")
    output = keras.layers.Dense(1, activation="sigmoid", name="click")
    model = keras.Model(inputs, output(hidden(inputs)))
    scales = np.r_[np.ones(WIDTH - STRONG), 4 * np.ones(STRONG)]
    hidden.set_weights([np.diag(scales).astype("float32"), np.zeros(WIDTH, "float32")])
    readout = np.zeros((WIDTH, 1), "float32")
    readout[label_units, 0] = 0.4 / scales[label_units]  # each unit read adds x_i * 0.4 to the logit
    output.set_weights([readout, np.zeros(1, "float32")])
    return model


def _rows(seed: int, active: slice, model: keras.Model, n: int = 2048):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, WIDTH), "float32")
    x[:, active] = rng.normal(size=(n, len(range(WIDTH)[active])))
    labels = (rng.random((n, 1)) < model.predict(x, verbose=0)).astype("float32")
    return x, labels


def _validation_auc(model, report) -> float:
    return report.accuracy["validation"]["outputs"]["click"]["compressed"]["auc"]


@pytest.mark.parametrize("winner, label_units, calibrated", [
    # Calibration sees only the weak units and the labels hang on the strong ones: AFM keeps the directions
    # calibration saw, which say nothing on held-out rows; SVD keeps the kernel's strongest directions.
    ("svd", slice(WIDTH - STRONG, WIDTH), slice(0, WIDTH - STRONG)),
    # Calibration sees every unit and the labels hang on the weak ones: AFM (weighted by the Fisher
    # information) keeps what the prediction reads; SVD keeps the strong units, which it does not read.
    ("afm", slice(0, 8), slice(0, WIDTH)),
], ids=["svd-wins", "afm-wins"])
def test_auto_keeps_the_method_with_the_higher_validation_auc(winner, label_units, calibrated):
    model = _model(label_units)
    calibration, _ = _rows(0, calibrated, model)
    validation = _rows(1, slice(0, WIDTH), model)
    compressed = {method: tfafm.compress(model, calibration, method=method, target_ratio=3,
                                         validation_data=validation, progress=False)
                  for method in ("auto", "afm", "svd")}
    aucs = {method: _validation_auc(*result) for method, result in compressed.items()}
    assert aucs[winner] > aucs["svd" if winner == "afm" else "afm"] + 0.05
    small, report = compressed["auto"]
    assert report.method == winner and aucs["auto"] == aucs[winner]
    assert report.criterion == {"afm": "loss", "svd": "variance"}[winner]  # each method's own default
    # The model handed back is the explicit method's, weight for weight.
    x = validation[0][:256]
    np.testing.assert_allclose(small.predict(x, verbose=0), compressed[winner][0].predict(x, verbose=0), atol=1e-6)
    (note,) = [note for note in report.notes if note.startswith("method: ")]
    assert note.startswith(f"method: {winner.upper()}, chosen on the validation AUC")
    assert f"afm {-aucs['afm'] + report.accuracy['validation']['outputs']['click']['original']['auc']:+.4f}" in note
    assert compressed["afm"][1].method == "afm" and not any(n.startswith("method: ")
                                                            for n in compressed["afm"][1].notes)


def test_auto_without_labels_is_afm_and_says_why():
    model = _model(slice(0, 8))
    calibration, _ = _rows(0, slice(0, WIDTH), model)
    _, report = tfafm.compress(model, calibration, target_ratio=3, progress=False)
    assert report.method == "afm"
    assert any(n.startswith("method: AFM; method='auto' weighs weight SVD beside it on validation_data with 0/1 "
                            "labels") for n in report.notes)
    # An explicit rank or energy has no ratio to weigh the two at: AFM, as asked of method="afm".
    _, report = tfafm.compress(model, calibration, energy=0.9, validation_data=_rows(1, slice(0, WIDTH), model),
                               progress=False)
    assert report.method == "afm" and not any(n.startswith("method: ") for n in report.notes)


def test_auto_does_not_choose_on_a_handful_of_validation_rows():
    """On 33 validation rows auto took weight SVD for a "gain" of 0.21 AUC; its predictions followed the
    original's with rank correlation 0.44. Below MIN_CHOICE_ROWS (or MIN_CHOICE_CLASS of a class) the defaults
    are kept, and the report says why; from there on auto weighs the two (the svd-wins case above)."""
    from tfafm.compression.budget import MIN_CHOICE_ROWS

    model = _model(slice(WIDTH - STRONG, WIDTH))  # the svd-wins case
    calibration, _ = _rows(0, slice(0, WIDTH - STRONG), model)
    x, y = _rows(1, slice(0, WIDTH), model)
    _, report = tfafm.compress(model, calibration, method="auto", target_ratio=3, progress=False,
                               validation_data=(x[:MIN_CHOICE_ROWS - 1], y[:MIN_CHOICE_ROWS - 1]))
    assert report.method == "afm"
    assert any(f"{MIN_CHOICE_ROWS - 1} validation rows" in note and "too few to choose on" in note
               for note in report.notes)
    _, report = tfafm.compress(model, calibration, method="auto", target_ratio=3, progress=False,
                               validation_data=(x[:4 * MIN_CHOICE_ROWS], y[:4 * MIN_CHOICE_ROWS]))
    assert report.method == "svd"


def test_unknown_method_is_refused_by_name():
    with pytest.raises(tfafm.errors.UserError, match=r"Unknown compression method 'pca'.*'auto', 'afm', 'svd'"):
        tfafm.compress(_model(slice(0, 8)), np.zeros((8, WIDTH), "float32"), method="pca", target_ratio=2)


class _FixedPlan:
    """A stand-in for one of compress's plans: builds a logistic model on (x1, x2) with fixed weights."""

    def __init__(self, label: str, weights, challenger: bool = False):
        self.label, self.weights, self.challenger = label, weights, challenger

    def ranks_for_ratio(self, ratio):
        return {"w": 1}

    def build(self, ranks):
        inputs = keras.Input((2,), name="x")
        dense = keras.layers.Dense(1, activation="sigmoid", name="click")
        model = keras.Model(inputs, dense(inputs))
        dense.set_weights([np.asarray(self.weights, "float32").reshape(2, 1), np.zeros(1, "float32")])
        return model, None


def test_a_challenger_is_taken_only_when_better_beyond_noise_in_auc_and_no_worse_in_logloss():
    from tfafm.compression.budget import best_of, labelled
    from tfafm.metrics import SIGNIFICANT_Z, paired_auc_difference

    rng = np.random.default_rng(10)
    x = rng.normal(size=(1500, 2)).astype("float32")
    y = (rng.random((1500, 1)) < 1 / (1 + np.exp(-x[:, :1]))).astype("float32")  # the logit is x1; x2 is noise
    validation = (x, y)
    reference, labels = labelled(_FixedPlan("truth", [1.0, 0.0]).build(None)[0], validation)

    def chosen(incumbent, challenger):
        plans = [_FixedPlan("afm", incumbent), _FixedPlan("svd", challenger, challenger=True)]
        candidate = best_of(plans, 2.0, validation, reference, labels, None)
        return dict(candidate.variants), candidate.validation["outputs"]["click"]["compressed"]

    def measured(weights):
        p = np.clip(1 / (1 + np.exp(-(x.astype("float64") @ np.asarray(weights)))), 1e-7, 1 - 1e-7)
        return p, float(-np.mean(y[:, 0] * np.log(p) + (1 - y[:, 0]) * np.log(1 - p)))

    # As much noise the other way: its AUC is 0.005 higher on these rows by chance (not significant),
    # the incumbent stays.
    noisy, other_noise = [1.0, 0.3], [1.0, -0.3]
    gain = paired_auc_difference(y, measured(noisy)[0], measured(other_noise)[0])
    assert gain["difference"] > 0.004 and gain["z"] < SIGNIFICANT_Z
    drops, kept = chosen(noisy, other_noise)
    assert drops["svd"] < drops["afm"] and kept["logloss"] == pytest.approx(measured(noisy)[1], abs=1e-4)
    # Significantly higher AUC, but overconfident probabilities (a higher LogLoss): the incumbent stays.
    overconfident = [6.0, 0.0]
    gain = paired_auc_difference(y, measured([1.0, 1.0])[0], measured(overconfident)[0])
    assert gain["z"] >= SIGNIFICANT_Z and measured(overconfident)[1] > measured([1.0, 1.0])[1]
    _, kept = chosen([1.0, 1.0], overconfident)
    assert kept["logloss"] == pytest.approx(measured([1.0, 1.0])[1], abs=1e-4)
    # Better in both, beyond noise: the challenger is taken.
    _, kept = chosen([1.0, 1.0], [1.0, 0.0])
    assert kept["logloss"] == pytest.approx(measured([1.0, 0.0])[1], abs=1e-4)
