"""Reproduction benchmark: original vs SVD vs AFM on real Criteo and Avazu samples.

For each model (DeepFM, DCN-V2, AutoInt, xDeepFM), data set and seed it trains
the original, then compares these arms on a held-out split:

    original            the trained model
    SVD x4 ft           weight SVD at target_ratio=4, fine-tuned
    AFM x4              AFM at target_ratio=4, no fine-tuning
    AFM x4 ft           AFM, fine-tuned
    AFM-relu x4 ft      AFM with inner_activation="relu", fine-tuned
    AFM x4 ft int8      the fine-tuned AFM model as a dynamic-int8 LiteRT file

Every training and fine-tuning run uses the same rule: Adam, batch 512, at
most ``--epochs`` epochs (``--finetune-epochs`` for fine-tuning), early
stopping on validation AUC with patience 1, best weights restored; a
fine-tuning run that never beats its starting point's validation AUC keeps the
starting weights. It writes
its section of ``docs/benchmarks.md`` (or ``--out``; other sections are kept) with the command,
library versions and machine.

    python benchmarks/reproduce.py                     # shared samples, 3 seeds
    python benchmarks/reproduce.py --datasets criteo --models deepfm --seeds 1   # quick look
    python benchmarks/reproduce.py --criteo-train /data/train.txt ...            # full data
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tfafm
from tfafm import models
from tfafm.data import load_data
from tfafm.export import litert
from tfafm.export.bench import benchmark
from tfafm.metrics import evaluate
from tfafm.training import compile_for_ctr, fine_tune, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, litert_scores, write_section  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = {
    "criteo": (
        [SHARED / "criteo/wide-resdnn/train.csv.gz", SHARED / "criteo/kaggle-2014-criteo/tr.rx.csv.gz"],
        [SHARED / "criteo/wide-resdnn/dev.csv", SHARED / "criteo/wide-resdnn/test.csv",
         SHARED / "criteo/kaggle-2014-criteo/va.rx.csv.gz"],
    ),
    "avazu": (
        [SHARED / "avazu/wide-resdnn/train.csv.gz"],
        [SHARED / "avazu/wide-resdnn/dev.csv", SHARED / "avazu/wide-resdnn/test.csv"],
    ),
}
ARMS = ("original", "SVD x4 ft", "AFM x4", "AFM x4 ft", "AFM-relu x4 ft", "AFM x4 ft int8")
HIDDEN = (400, 400, 400)



def run_cell(model_name, bundle, test, seed, args, tmp) -> dict[str, dict]:
    """All arms for one model, data set and seed: {arm: metrics + params + file size}."""
    keras.utils.set_random_seed(seed)
    original = models.build(model_name, bundle.schema, hidden_units=HIDDEN)
    compile_for_ctr(original, 1e-3)
    fit(original, bundle, args.epochs, patience=1, verbose=0)
    calibration = bundle.train
    afm, _ = tfafm.compress(original, calibration, method="afm", target_ratio=4, progress=False)
    statistics = tfafm.calibrate(original, calibration, progress=False)
    variants = {"original": original, "AFM x4": afm}
    for arm, method, inner in (("SVD x4 ft", "svd", None), ("AFM x4 ft", "afm", None),
                               ("AFM-relu x4 ft", "afm", "relu")):
        model, _ = tfafm.compress(original, method=method, target_ratio=4, inner_activation=inner,
                                  statistics=statistics if method == "afm" else None, progress=False)
        fine_tune(model, bundle, args.finetune_epochs, 5e-4)
        variants[arm] = model
    results = {}
    for arm, model in variants.items():
        path = litert(model, os.path.join(tmp, f"{model_name}-{seed}-{arm.replace(' ', '_')}.tflite"))
        results[arm] = {**evaluate(model, test.validation), "params": model.count_params(),
                        "size_bytes": os.path.getsize(path), "path": path}
    path = litert(variants["AFM x4 ft"], os.path.join(tmp, f"{model_name}-{seed}-int8.tflite"), quantization="dynamic")
    results["AFM x4 ft int8"] = {**litert_scores(path, test.validation), "params": results["AFM x4 ft"]["params"],
                                 "size_bytes": os.path.getsize(path), "path": path}
    return results


def _latency_ratios(cells: dict, schema) -> dict[str, float]:
    """Batch-1 single-thread p50 of each arm's LiteRT file over the original's (first seed)."""
    paths = [cells[arm]["path"] for arm in ARMS]
    rows = benchmark(paths, schema, batch_sizes=(1,), threads=(1,), names=list(ARMS),
                     iterations=2000, max_seconds=3.0)
    reference = rows[0]["p50_ms"]
    return {row["name"]: reference / row["p50_ms"] for row in rows}


def _summary(per_seed: list[dict], latency: dict[str, float]) -> list[str]:
    lines = []
    base_params = per_seed[0]["original"]["params"]
    base_size = per_seed[0]["original"]["size_bytes"]
    for arm in ARMS:
        auc = np.array([cell[arm]["auc"] for cell in per_seed])
        loss = np.array([cell[arm]["logloss"] for cell in per_seed])
        first = per_seed[0][arm]
        lines.append(
            f"| {arm} | {first['params']:,} ({base_params / first['params']:.2f}x) | "
            f"{first['size_bytes'] / 1024:,.0f} ({base_size / first['size_bytes']:.2f}x) | "
            f"{auc.mean():.4f} ± {auc.std():.4f} | {loss.mean():.4f} ± {loss.std():.4f} | "
            f"{latency[arm]:.2f}x |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["deepfm", "dcnv2", "autoint", "xdeepfm"])
    parser.add_argument("--datasets", nargs="+", default=["criteo", "avazu"], choices=sorted(DEFAULT_DATA))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--min-count", type=int, default=2)
    for name in DEFAULT_DATA:
        parser.add_argument(f"--{name}-train", help=f"{name} training files (comma-separated)")
        parser.add_argument(f"--{name}-test", help=f"{name} held-out files (comma-separated)")
    parser.add_argument("--out", default="docs/benchmarks.md")
    args = parser.parse_args()

    sections = [
        "# Benchmarks: original vs SVD vs AFM",
        "",
        f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        "",
        f"Machine and libraries: {environment()}",
        "",
        f"Protocol: MLP 400-400-400, embedding dim 16, Adam (lr 1e-3; fine-tuning 5e-4), batch 512, at most "
        f"{args.epochs} training / {args.finetune_epochs} fine-tuning epochs, early stopping on validation AUC "
        f"(patience 1, best weights restored; fine-tuning keeps the starting weights when no epoch beats "
        f"their validation AUC), min_count {args.min_count}; compression at target_ratio=4 "
        "(default objective: parameters and batch-1 bytes read each shrink 4x). AUC and LogLoss on the held-out files, mean ± std over "
        f"{args.seeds} seed(s). Params and LiteRT float32 file size (int8 row: dynamic-range file) are "
        "from the first seed, with the ratio to the original; speed-up is the original's batch-1 "
        "single-thread LiteRT p50 over the arm's (first seed). Differences smaller than the ± spread "
        "are noise.",
    ]
    for dataset in args.datasets:
        train_files = getattr(args, f"{dataset}_train") or ",".join(map(str, DEFAULT_DATA[dataset][0]))
        test_files = getattr(args, f"{dataset}_test") or ",".join(map(str, DEFAULT_DATA[dataset][1]))
        bundle = load_data(f"{dataset}:{train_files}", batch_size=512, min_count=args.min_count)
        test = load_data(f"{dataset}:{test_files}", batch_size=512, preprocessor=bundle.preprocessor)
        sections += ["", f"## {dataset}", "", f"Train: {bundle.description}. Held out: {test.description}."]
        for model_name in args.models:
            print(f"{dataset} / {model_name}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                per_seed = [run_cell(model_name, bundle, test, seed, args, tmp) for seed in range(args.seeds)]
                latency = _latency_ratios(per_seed[0], bundle.schema)
            sections += ["", f"### {model_name}", "",
                         "| arm | params | LiteRT KiB | AUC | LogLoss | batch-1 speed-up |",
                         "| --- | ---: | ---: | ---: | ---: | ---: |", *_summary(per_seed, latency)]
            print("\n".join(sections[-len(ARMS) - 2:]), flush=True)
    write_section(args.out, "reproduce", "\n".join(sections))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
