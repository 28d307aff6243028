"""Models whose layers hold state outside their weights (adapted lookups, assets), recurrent
and mixed-precision models: compression keeps every layer's state, and every export is either
written and verified against Keras or refused in one line naming the layer, leaving nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import keras
import tfafm
from tfafm.errors import UserError

from stateful_models import CORPUS, EXPORTS

pytestmark = pytest.mark.slow


def _predict(model, data) -> np.ndarray:
    return np.asarray(model.predict(tf.data.Dataset.from_tensor_slices(data).batch(64), verbose=0))


@pytest.fixture(scope="module", params=CORPUS, ids=lambda builder: builder.__name__)
def case(request):
    keras.utils.set_random_seed(0)
    model, data = request.param(np.random.default_rng(0))
    # Small models whose whole files reach 1.1x-1.6x: ranks by energy rather than a file ratio.
    compressed, report = tfafm.compress(model, data, energy=0.9, progress=False)
    return request.param, model, data, compressed, report


def test_compressed_model_runs_and_keeps_every_layers_state(case):
    _, model, data, compressed, report = case
    predictions = _predict(compressed, data)
    assert np.isfinite(predictions).all()
    check = report.accuracy["check"]
    assert check["rows"] == 256 and check["source"] == "calibration data"
    # The layers compression left alone compute exactly what they did: at full rank the model is unchanged.
    targets, _ = tfafm.compression.targets.find_targets(model)
    full = {t.name: min(t.input_dim, t.output_dim) for t in targets}
    exact, _ = tfafm.compress(model, data, ranks=full, progress=False)
    half = any(layer.dtype_policy.compute_dtype == "float16" for layer in model.layers)
    np.testing.assert_allclose(_predict(exact, data), _predict(model, data), atol=1e-3 if half else 1e-5)
    policies = [layer.dtype_policy.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert [layer.dtype_policy.name for layer in exact.layers
            if not isinstance(layer, keras.layers.InputLayer)] == policies


def test_compressed_model_round_trips_without_optimizer_state(case, tmp_path):
    _, _, data, compressed, _ = case
    assert not compressed.compiled
    path = tmp_path / "m.keras"
    compressed.save(path)
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in compressed.weights)
    assert path.stat().st_size <= 1.1 * weight_bytes + 64 * 1024
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(_predict(loaded, data), _predict(compressed, data), atol=1e-6)


@pytest.mark.parametrize("export_format", ["litert", "onnx", "saved_model"])
def test_export_is_verified_or_refused_naming_the_layer(case, export_format, tmp_path):
    builder, _, data, compressed, _ = case
    expected = EXPORTS[builder][export_format]
    path = tmp_path / {"litert": "m.tflite", "onnx": "m.onnx", "saved_model": "sm"}[export_format]
    export = getattr(tfafm.export, export_format)
    if expected == "ok":
        export(compressed, str(path), verification_data=data)
        assert path.exists()
    else:
        with pytest.raises(UserError, match=expected) as raised:
            export(compressed, str(path), verification_data=data)
        assert "\n" not in str(raised.value)
        assert not path.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
