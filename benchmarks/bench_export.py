"""LiteRT size and speed of original vs AFM-compressed DeepFM and DCN-V2.

For each model: train briefly on synthetic Criteo-like data (embedding dim 16,
MLP 400-400-400), compress with ``tfafm.compress(method="afm",
target_ratio=4)`` on calibration data, export LiteRT float32 and dynamic-range
int8 for the original and the compressed model, then measure file size,
batch-1 single-thread p50 latency and batch-256 single-thread throughput (each
file in a fresh process) and validation AUC. Prints what it measured; asserts
nothing.

    python benchmarks/bench_export.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from sklearn.metrics import roc_auc_score

import tfafm
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.export import LiteRTRunner, litert
from tfafm.export.bench import benchmark, results_table

BUILDERS = ("deepfm", "dcnv2")
QUANTIZATIONS = (None, "dynamic")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer training rows and timing iterations")
    parser.add_argument("--out", help="directory for the .tflite files (default: a temporary one)")
    return parser.parse_args()


def train_and_compress(name, gen, schema, train_rows, calibration_rows):
    start = time.time()
    model = tfafm.models.build(name, schema, hidden_units=(400, 400, 400))
    model.compile("adam", "binary_crossentropy")
    model.fit(gen.dataset(train_rows, 256), epochs=1, verbose=0)
    calibration = gen.dataset(calibration_rows, 1024, split="calibration")
    compressed, report = tfafm.compress(model, calibration, method="afm", target_ratio=4, progress=False)
    print(f"{name}: trained on {train_rows} rows, compressed {model.count_params():,} -> "
          f"{compressed.count_params():,} parameters ({model.count_params() / compressed.count_params():.2f}x) "
          f"in {time.time() - start:.0f}s")
    return model, compressed


def export_all(name, model, compressed, out):
    files = {}
    for variant, m in (("original", model), ("compressed", compressed)):
        for quantize in QUANTIZATIONS:
            label = f"{name}-{variant}-{quantize or 'float32'}"
            files[label] = litert(m, os.path.join(out, f"{label}.tflite"), quantize=quantize)
    return files


def validation_auc(path, features, labels):
    return roc_auc_score(labels.ravel(), LiteRTRunner(path)(features).ravel())


def summary(rows, aucs):
    by = {(r["name"], r["batch_size"]): r for r in rows}
    header = ("| model | quantization | size MiB orig -> comp (ratio) | batch-1 p50 ms orig -> comp (ratio) "
              "| batch-256 rows/s orig -> comp (ratio) | AUC orig / comp |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name in BUILDERS:
        for quantize in QUANTIZATIONS:
            q = quantize or "float32"
            o, c = f"{name}-original-{q}.tflite", f"{name}-compressed-{q}.tflite"
            so, sc = by[(o, 1)]["size_bytes"] / 2**20, by[(c, 1)]["size_bytes"] / 2**20
            lo, lc = by[(o, 1)]["p50_ms"], by[(c, 1)]["p50_ms"]
            to, tc = by[(o, 256)]["throughput_rps"], by[(c, 256)]["throughput_rps"]
            lines.append(
                f"| {name} | {q} | {so:.2f} -> {sc:.2f} ({sc / so:.2f}) | {lo:.3f} -> {lc:.3f} ({lc / lo:.2f}) "
                f"| {to:,.0f} -> {tc:,.0f} ({tc / to:.2f}) | {aucs[o]:.4f} / {aucs[c]:.4f} |"
            )
    return "\n".join(lines)


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="tfafm-bench-") as tmp:
        run(args, out=args.out or tmp)


def run(args, out):
    train_rows, calibration_rows, iterations = (10_000, 4096, 60) if args.quick else (50_000, 8192, 300)
    gen = SyntheticCriteo(max_vocabulary=100_000)
    schema = gen.schema(16)
    print(f"schema: {len(schema.sparse)} sparse (vocabulary {min(f.vocabulary_size for f in schema.sparse)}.."
          f"{max(f.vocabulary_size for f in schema.sparse)}), {len(schema.dense)} dense; files in {out}; "
          f"{os.cpu_count()} CPUs")
    features, labels = next(gen.batches(10_000, 10_000, split="validation"))
    files, aucs = {}, {}
    for name in BUILDERS:
        model, compressed = train_and_compress(name, gen, schema, train_rows, calibration_rows)
        files.update(export_all(name, model, compressed, out))
    for label, path in files.items():
        aucs[os.path.basename(path)] = validation_auc(path, features, labels)
    rows = benchmark(list(files.values()), schema, batch_sizes=(1, 256), threads=(1,),
                     warmup=20, iterations=iterations, max_seconds=5.0)
    print("\nAll measurements (ratios to the first file):\n")
    print(results_table(rows))
    print("\nCompressed vs original under the same quantization (1 thread):\n")
    print(summary(rows, aucs))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
