"""``tfafm import keras2 PATH --out run/``: a Keras 2 model file -> a tfafm run directory.

The run directory is the one ``tfafm train`` writes (``model.keras``,
``schema.json``, ``run.json``) plus ``raw_features.json``, the preprocessing
sidecar (:class:`~tfafm.interop.RawFeatureEncoder`), so ``tfafm export`` and
``tfafm bench`` take it as they take any run. :mod:`tfafm_cli` parses the
command's arguments; :func:`run_import_command` runs it.
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


def save_imported_run(model, path: str, info: dict[str, Any] | None = None, overwrite: bool = False) -> None:
    """Writes a converted model as a tfafm run directory (atomically), with its raw feature encoder.

    ``run.json`` holds ``kind: "imported"``, a default training ``config``
    (used for fine-tuning: learning rate, batch size) and ``info``. An
    existing directory at ``path`` is replaced only if it is a tfafm run (or
    empty), unless ``overwrite``.
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
             extra_files={RAW_FEATURES_FILE: json.dumps(encoder.to_dict(), indent=1)}, overwrite=overwrite)


def predictions(model, inputs):
    """``model.predict`` (Keras 2 or 3) flattened to one float64 array: every output (a dict's in sorted
    key order, as both flatten it), each flattened, one after the other."""
    import numpy as np
    import tensorflow as tf

    outputs = model.predict(inputs, batch_size=1024, verbose=0)
    return np.concatenate([np.asarray(output, np.float64).reshape(-1) for output in tf.nest.flatten(outputs)])


def parity(original, converted, rows: int = 1000, seed: int = 0) -> float:
    """Largest absolute difference between the Keras 2 original and the converted model on sampled raw rows."""
    import numpy as np

    from tfafm.errors import UserError

    raw = converted.raw_feature_encoder.sample(rows, seed)
    try:
        expected = predictions(original, raw)
    except Exception as error:  # the user's model on rows drawn within its inputs' types
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = next((line for line in lines if "indices" in line), lines[-1] if lines else type(error).__name__)
        hint = (" (an Embedding reading a float input? make that input an integer one, dtype='int32')"
                if "indices" in message else "")
        raise UserError(f"The Keras 2 model fails on {rows} rows sampled within its inputs' types: "
                        f"{message}{hint}") from None
    return float(np.max(np.abs(expected - predictions(converted, converted.raw_feature_encoder.encode(raw)))))


def import_keras2_run(path: str, out: str, rows: int = 1000, seed: int = 0,
                      overwrite: bool = False) -> dict[str, Any]:
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
    save_imported_run(model, out, info, overwrite=overwrite)
    return {"model": model.name, "params": model.count_params(), **info}


def _needs_legacy_keras_process() -> bool:
    """Whether TFRS is installed but cannot load here, TensorFlow having been imported with Keras 3."""
    return (os.environ.get("TF_USE_LEGACY_KERAS") != "1" and "tensorflow" in sys.modules
            and importlib.util.find_spec("tensorflow_recommenders") is not None)


def run_import_command(args: argparse.Namespace, out) -> int:
    """``tfafm import keras2 PATH``: the command behind :mod:`tfafm_cli`'s ``import`` parser.

    TFRS layers load only under Keras 2, which TensorFlow picks when it is
    imported; when TFRS is installed and this process already runs Keras 3,
    the command reruns itself in a child process with ``TF_USE_LEGACY_KERAS=1``.
    """
    from tfafm.io_utils import Destination

    if _needs_legacy_keras_process():
        command = [sys.executable, "-m", "tfafm_cli", "import", args.source_format, args.path, "--out", args.out,
                   "--parity-rows", str(args.parity_rows)]
        command += ["--overwrite"] * args.overwrite + ["--quiet"] * args.quiet
        # stderr: Python's (the CLI points file descriptor 2 at /dev/null while TensorFlow loads, to hide its notes)
        return subprocess.run(command, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"}, stderr=sys.stderr,
                              check=False).returncode
    destination = Destination(args.out, "run", overwrite=args.overwrite, sources=[args.path])
    out.note(f"Converting {args.path}")
    with destination.staged() as staged:
        result = import_keras2_run(args.path, staged, rows=args.parity_rows)
    out.result(f"Converted {args.path} ({result['params']:,} parameters); on {args.parity_rows:,} sampled rows "
               f"the largest difference from the original is {result['parity']['max_abs_difference']:.2g}.")
    out.result(f"Saved run to {args.out}")
    return 0
