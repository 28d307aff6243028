"""Assertion helpers shared by the interop tests: parity measures and LiteRT predictions."""

from __future__ import annotations

import numpy as np

PARITY = 1e-5


def litert_predict(path: str, inputs: dict) -> np.ndarray:
    """Predictions of a tfafm ``.tflite`` file: through its ``serving_default`` signature when it has one."""
    from tfafm.export import LiteRTRunner

    runner = LiteRTRunner(path)
    signatures = runner.interpreter.get_signature_list()
    if "serving_default" not in signatures:
        return runner(inputs).reshape(-1)
    signature = runner.interpreter.get_signature_runner("serving_default")
    outputs = signature(**{name: np.asarray(inputs[name]).reshape(-1, 1).astype(
        runner.inputs[name]["dtype"]) for name in signatures["serving_default"]["inputs"]})
    return np.asarray(next(iter(outputs.values()))).reshape(-1)


def max_difference(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64).reshape(-1) - np.asarray(b, np.float64).reshape(-1))))
