"""Peak memory of compressing and exporting models with big embedding tables.

Each measurement runs in a fresh process: it builds the model (random
weights), notes its resident memory, runs one step (``compress`` with AFM on
a few calibration batches, or ``export.litert``), and reports how far the peak
resident memory (``VmHWM``) rose above the resident memory before the step,
as a multiple of the model's float32 weight bytes.

    python benchmarks/bench_memory.py                 # one 10M x 16 table; a 33M-row Criteo-sized schema;
                                                      # a user's plain keras Embedding of 4M x 32 (dynamic int8)
    python benchmarks/bench_memory.py --quick         # 2M rows; 6M rows; 1M x 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_PREFIX = "TFAFM_MEMORY "


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Makes VmHWM restart from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _vocabularies(kind: str, rows: int) -> list[int]:
    if kind == "one-table":
        return [rows] + [1000] * 3
    # Criteo-like: a few huge fields, many small ones, `rows` in all.
    shares = [0.30, 0.25, 0.15, 0.10, 0.06, 0.05, 0.03, 0.02, 0.01, 0.01] + [0.0008] * 16
    return [max(10, int(rows * share)) for share in shares]


def _user_embedding_model(rows: int):
    """A user's model around one plain ``keras.layers.Embedding(rows, 32)``."""
    import keras

    ids = keras.Input((4,), dtype="int32", name="ids")
    vectors = keras.layers.Flatten()(keras.layers.Embedding(rows, 32, name="items")(ids))
    return keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(64)(vectors)))


def _worker(kind: str, step: str, rows: int) -> dict:
    import keras
    import numpy as np

    import tfafm
    from tfafm.schema import DenseFeature, Schema, SparseFeature

    if kind == "user-embedding":
        model = _user_embedding_model(rows)
        with tempfile.TemporaryDirectory() as tmp:
            before = _rss_mib("VmRSS")
            _reset_peak()
            tfafm.export.litert(model, os.path.join(tmp, "m.tflite"), quantization="dynamic")
            peak = _rss_mib("VmHWM")
        return {"weights_mib": model.count_params() * 4 / 2**20, "before_mib": before, "peak_mib": peak}

    schema = Schema([DenseFeature(f"I{i}") for i in range(13)]
                    + [SparseFeature(f"C{i}", v, 16) for i, v in enumerate(_vocabularies(kind, rows))])
    keras.utils.set_random_seed(0)
    model = tfafm.models.build("dcnv2", schema, hidden_units=(256, 128), num_cross=1)
    weight_mib = model.count_params() * 4 / 2**20
    rng = np.random.default_rng(0)
    calibration = {f.name: rng.integers(0, f.vocabulary_size, (8192, 1)).astype("int32") for f in schema.sparse}
    calibration.update({f.name: rng.random((8192, 1)).astype("float32") for f in schema.dense})
    with tempfile.TemporaryDirectory() as tmp:
        before = _rss_mib("VmRSS")
        _reset_peak()
        if step == "compress":
            tfafm.compress(model, calibration, target_ratio=4, progress=False)
        else:
            tfafm.export.litert(model, os.path.join(tmp, "m.tflite"), fuse=False)
        peak = _rss_mib("VmHWM")
    return {"weights_mib": weight_mib, "before_mib": before, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("one-table", "criteo-sized", "user-embedding"), help="one model kind")
    args = parser.parse_args()
    sizes = {"one-table": 2_000_000 if args.quick else 10_000_000,
             "criteo-sized": 6_000_000 if args.quick else 33_000_000,
             "user-embedding": 1_000_000 if args.quick else 4_000_000}
    print("| model | step | float32 weights MiB | RSS before MiB | peak MiB | rise / weights |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for kind, rows in sizes.items():
        if args.only and kind != args.only:
            continue
        for step in ("export",) if kind == "user-embedding" else ("compress", "export"):
            job = json.dumps({"kind": kind, "step": step, "rows": rows})
            process = subprocess.run([sys.executable, __file__, "--worker", job], capture_output=True, text=True)
            lines = [line for line in process.stdout.splitlines() if line.startswith(_PREFIX)]
            if not lines:
                print(f"| {kind} ({rows:,} rows) | {step} | failed: {process.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(lines[0][len(_PREFIX):])
            rise = (r["peak_mib"] - r["before_mib"]) / r["weights_mib"]
            print(f"| {kind} ({rows:,} rows) | {step} | {r['weights_mib']:,.0f} | {r['before_mib']:,.0f} | "
                  f"{r['peak_mib']:,.0f} | {rise:.2f}x |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        job = json.loads(sys.argv[2])
        print(_PREFIX + json.dumps(_worker(job["kind"], job["step"], job["rows"])))
    else:
        main()
