"""``tfafm import keras2 PATH --out run/``: a Keras 2 model file -> a tfafm run directory.

The run directory is the one ``tfafm train`` writes (``model.keras``,
``schema.json``, ``run.json``) plus ``raw_features.json``, the preprocessing
sidecar (:class:`~tfafm.interop.RawFeatureEncoder`), so ``tfafm export`` and
``tfafm bench`` take it as they take any run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

PARITY_TOLERANCE = 1e-5
RAW_FEATURES_FILE = "raw_features.json"


def save_imported_run(model, path: str, info: dict[str, Any] | None = None) -> None:
    """Writes a converted model as a tfafm run directory (atomically), with its raw feature encoder.

    ``run.json`` holds ``kind: "imported"``, a default training ``config``
    (used for fine-tuning: learning rate, batch size) and ``info``.
    """
    from tfafm.config import TrainConfig
    from tfafm.interop.graph import schema_of
    from tfafm.runs import save_run

    encoder = model.raw_feature_encoder
    run_info = {
        "kind": "imported", "model": model.name, "config": TrainConfig(model=model.name).to_dict(),
        "raw_features": RAW_FEATURES_FILE, **(info or {}),
    }
    save_run(path, model, schema_of(encoder), None, run_info,
             extra_files={RAW_FEATURES_FILE: json.dumps(encoder.to_dict(), indent=1)})


def predictions(model, inputs):
    """``model.predict`` (Keras 2 or 3) flattened to a float64 array."""
    import numpy as np

    return np.asarray(model.predict(inputs, batch_size=1024, verbose=0), np.float64).reshape(-1)


def parity(original, converted, rows: int = 1000, seed: int = 0) -> float:
    """Largest absolute difference between the Keras 2 original and the converted model on sampled raw rows."""
    import numpy as np

    raw = converted.raw_feature_encoder.sample(rows, seed)
    expected = predictions(original, raw)
    return float(np.max(np.abs(expected - predictions(converted, converted.raw_feature_encoder.encode(raw)))))


def import_keras2_run(path: str, out: str, rows: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Converts the Keras 2 model at ``path`` and writes it as a run directory at ``out``.

    Before writing, the converted model is compared with the original on
    ``rows`` raw rows drawn by :meth:`RawFeatureEncoder.sample`; a difference
    above ``PARITY_TOLERANCE`` is a conversion bug and raises ``RuntimeError``.

    Returns:
        ``run.json``'s content.
    """
    from tfafm.interop.keras2 import from_keras2, load_keras2

    original = load_keras2(path)
    model = from_keras2(original)
    difference = parity(original, model, rows, seed)
    if not difference <= PARITY_TOLERANCE:
        raise RuntimeError(
            f"The converted model differs from {path} by {difference:.3g} on {rows} sampled rows "
            f"(tolerance {PARITY_TOLERANCE}); this is a tfafm.interop bug, please report it."
        )
    info = {"source": os.path.abspath(path), "parity": {"rows": rows, "max_abs_difference": difference}}
    save_imported_run(model, out, info)
    return {"model": model.name, "params": model.count_params(), **info}


def _needs_legacy_keras_process() -> bool:
    """Whether TFRS is installed but cannot load here, TensorFlow having been imported with Keras 3."""
    return (os.environ.get("TF_USE_LEGACY_KERAS") != "1" and "tensorflow" in sys.modules
            and importlib.util.find_spec("tensorflow_recommenders") is not None)


def run_import_command(args: argparse.Namespace) -> int:
    """The ``tfafm import`` command.

    TFRS layers load only under Keras 2, which TensorFlow picks when it is
    imported; when TFRS is installed and this process already runs Keras 3,
    the command reruns itself in a child process with ``TF_USE_LEGACY_KERAS=1``.
    """
    if _needs_legacy_keras_process():
        command = [sys.executable, "-m", "tfafm.cli", "import", args.format, args.path, "--out", args.out,
                   "--parity-rows", str(args.parity_rows)]
        return subprocess.run(command, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"}, check=False).returncode
    result = import_keras2_run(args.path, args.out, rows=args.parity_rows)
    print(f"Converted {args.path} ({result['params']:,} parameters); on {args.parity_rows:,} sampled rows the "
          f"largest difference from the original is {result['parity']['max_abs_difference']:.2g}.")
    print(f"Saved run to {args.out}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_import_command(commands) -> None:
    """Registers ``tfafm import`` on the CLI's subcommand parsers."""
    parser = commands.add_parser("import", help="convert a Keras 2 model (TFRS layers included) into a run directory")
    parser.add_argument("format", choices=("keras2",),
                        help="keras2: a tf_keras .h5 / .keras file or SavedModel directory")
    parser.add_argument("path", help="the model file or SavedModel directory")
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--parity-rows", type=_positive_int, default=1000,
                        help="sampled rows on which the converted model is checked against the original")
    parser.set_defaults(func=run_import_command)
