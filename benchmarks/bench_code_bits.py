"""Bits or rank: AFM embedding codes stored in int8 or 4 bits, at the same bytes.

Trains a model on synthetic data, factors only its embedding tables with AFM
at each rank in ``--ranks`` (tables of fewer than 100 rows stay whole), and
evaluates validation AUC (Keras) with the stored codes (the ``(V, k)`` tables)
kept float32, rounded to int8 with one scale per table (what LiteRT's
dynamic-range quantizer does) or per column, and rounded to 4 bits per column
(16 levels, the clipping range chosen per column to minimise the squared
error). A 4-bit table at rank 2k costs the bytes of an int8 table at rank k:
compare those rows. Prints what it measured; asserts nothing.

    python benchmarks/bench_code_bits.py [--model deepfm] [--rows 100000] [--ranks 1 2 4 8]
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

import tfafm
from tfafm.compression.targets import find_targets
from tfafm.metrics import evaluate
from tfafm.training import compile_for_ctr

VARIANTS = (("float32", None, False), ("int8 per table", 8, False), ("int8 per column", 8, True),
            ("4-bit per column", 4, True))


def rounded(table: np.ndarray, bits: int, per_column: bool) -> np.ndarray:
    """``table`` rounded to ``bits``-bit symmetric integers times a scale (per column or for the table);
    below 8 bits the clipping range is the one of 15 candidates with the least squared error."""
    top = 2 ** (bits - 1) - 1
    columns = [slice(j, j + 1) for j in range(table.shape[1])] if per_column else [slice(None)]
    out = np.empty_like(table)
    for column in columns:
        values = table[:, column]
        largest = float(np.abs(values).max()) or 1.0
        candidates = []
        for fraction in (1.0,) if bits == 8 else np.linspace(0.3, 1.0, 15):
            scale = largest * fraction / top
            approximation = np.clip(np.round(values / scale), -top - 1, top) * scale
            candidates.append((float(((approximation - values) ** 2).sum()), approximation))
        out[:, column] = min(candidates, key=lambda c: c[0])[1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deepfm")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4, 8])
    args = parser.parse_args()
    data = tfafm.load_data(f"synthetic:{args.rows}", batch_size=512, synthetic_max_vocabulary=5000)
    keras.utils.set_random_seed(0)
    model = tfafm.models.build(args.model, data.schema)
    compile_for_ctr(model, 1e-3)
    model.fit(data.train, epochs=1, verbose=0)
    statistics = tfafm.calibrate(model, data.train.take(20), progress=False)
    print(f"{args.model}, synthetic:{args.rows} (vocabularies up to 5,000), 1 epoch; original validation AUC "
          f"{evaluate(model, data.validation)['auc']:.4f}\n")
    print("| rank | " + " | ".join(name for name, _, _ in VARIANTS) + " |")
    print("|---:|" + "---:|" * len(VARIANTS))
    tables = [t for t in find_targets(model)[0] if t.kind == "embedding" and t.input_dim >= 100]
    for rank in args.ranks:
        ranks = {t.name: min(rank, t.output_dim) for t in tables}
        small, _ = tfafm.compress(model, statistics=statistics, ranks=ranks, progress=False)
        layers = [layer for layer in small._flatten_layers() if isinstance(layer, tfafm.LowRankEmbedding)]
        stored = {id(layer): layer.embeddings.numpy() for layer in layers}
        aucs = []
        for _, bits, per_column in VARIANTS:
            for layer in layers:
                codes = stored[id(layer)]
                layer.embeddings.assign(codes if bits is None else rounded(codes, bits, per_column))
            aucs.append(evaluate(small, data.validation)["auc"])
        print(f"| {rank} | " + " | ".join(f"{auc:.4f}" for auc in aucs) + " |", flush=True)


if __name__ == "__main__":
    main()
