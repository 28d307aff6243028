"""AFM vs SVD under the same rank allocator, at several ratios, with the ranks each chose.

On the real Criteo sample in ``../shared/data`` (the synthetic Criteo-like data
when it is absent), for each model and seed: train the original (MLP
400-400-400, embedding dim 16, early stopping on validation AUC), then for each
method and target ratio compress with ``tfafm.compress(target_ratio=...)``
(objective ``--objective``), evaluate on the held-out files before and after
``--finetune-epochs`` of fine-tuning, and print one Markdown table per model:
parameter ratio, AUC and LogLoss (mean ± std over seeds) and the ranks chosen
(first seed): embedding tables as min/median/max and how many stayed whole,
MLP and interaction matrices in order.

    python benchmarks/bench_ranks.py                          # deepfm dcnv2, 2 seeds
    python benchmarks/bench_ranks.py --models deepfm --seeds 1 --epochs 2   # quick look
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tfafm
from tfafm import models
from tfafm.data import load_data
from tfafm.metrics import evaluate
from tfafm.training import compile_for_ctr, fine_tune, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_section  # noqa: E402
from reproduce import DEFAULT_DATA, HIDDEN  # noqa: E402


def _data(args):
    train_files, test_files = DEFAULT_DATA["criteo"]
    if all(Path(f).exists() for f in (*train_files, *test_files)):
        bundle = load_data("criteo:" + ",".join(map(str, train_files)), batch_size=512, min_count=2)
        test = load_data("criteo:" + ",".join(map(str, test_files)), batch_size=512,
                         preprocessor=bundle.preprocessor)
        return bundle, test.validation, f"Criteo sample: {bundle.description}; held out: {test.description}"
    bundle = load_data(f"synthetic:{args.synthetic_rows}", batch_size=512, synthetic_max_vocabulary=20_000)
    return bundle, bundle.validation, f"synthetic Criteo-like data ({args.synthetic_rows:,} rows; no shared sample)"


def _ranks(report) -> str:
    tables = [row.rank for row in report.layers if row.kind == "embedding"]
    chosen = [rank for rank in tables if rank is not None]
    whole = len(tables) - len(chosen)
    parts = []
    if tables:
        summary = (f"{min(chosen)}/{int(np.median(chosen))}/{max(chosen)}" if chosen else "-")
        parts.append(f"tables {summary}" + (f", {whole} whole" if whole else ""))
    others = [str(row.rank) if row.rank is not None else "whole" for row in report.layers if row.kind != "embedding"]
    if others:
        parts.append("matrices " + " ".join(others))
    return "; ".join(parts)


def run_seed(model_name, bundle, test, seed, args) -> dict:
    """{arm: metrics, params and ranks} for one model and seed."""
    keras.utils.set_random_seed(seed)
    original = models.build(model_name, bundle.schema, hidden_units=HIDDEN)
    compile_for_ctr(original, 1e-3)
    fit(original, bundle, args.epochs, patience=1, verbose=0)
    statistics = tfafm.calibrate(original, bundle.train, progress=False)
    results = {"original": {**evaluate(original, test), "params": original.count_params(), "ranks": "-"}}
    for ratio in args.ratios:
        for method in ("svd", "afm"):
            model, report = tfafm.compress(original, method=method, target_ratio=ratio, objective=args.objective,
                                           statistics=statistics if method == "afm" else None, progress=False)
            row = {**evaluate(model, test), "params": model.count_params(), "ranks": _ranks(report)}
            if args.finetune_epochs:
                fine_tune(model, bundle, args.finetune_epochs, 5e-4)
                tuned = evaluate(model, test)
                row.update(auc_ft=tuned["auc"], logloss_ft=tuned["logloss"])
            results[f"{method.upper()} x{ratio:g}"] = row
    return results


def _table(per_seed: list[dict], finetuned: bool) -> list[str]:
    header = "| arm | params | AUC | LogLoss |" + (" AUC ft | LogLoss ft |" if finetuned else "") + " ranks (seed 0) |"
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    base = per_seed[0]["original"]["params"]
    for arm in per_seed[0]:
        cells = [cell[arm] for cell in per_seed]

        def stat(key):
            if key not in cells[0]:  # the original is not fine-tuned
                return "-"
            values = np.array([c[key] for c in cells])
            return f"{values.mean():.4f} ± {values.std():.4f}"

        metrics = [stat("auc"), stat("logloss")] + ([stat("auc_ft"), stat("logloss_ft")] if finetuned else [])
        lines.append(f"| {arm} | {cells[0]['params']:,} ({base / cells[0]['params']:.2f}x) | "
                     + " | ".join(metrics) + f" | {cells[0]['ranks']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["deepfm", "dcnv2"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[4.0, 8.0])
    parser.add_argument("--objective", choices=("both", "params", "latency"), default="both")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--synthetic-rows", type=int, default=50_000)
    parser.add_argument("--out", help="also write the tables as a section of this Markdown file (e.g. docs/benchmarks.md)")
    args = parser.parse_args()
    bundle, test, description = _data(args)
    lines = ["## AFM vs SVD under the same rank allocator", "",
             f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`", "", environment(), "",
             f"{description}. Objective {args.objective}; AUC/LogLoss mean ± std over {args.seeds} seed(s); ft = "
             f"after {args.finetune_epochs} fine-tuning epoch(s) (starting weights kept unless the validation AUC "
             "gain is significant, paired DeLong z >= 1.645). Ranks: tables min/median/max (and how many stayed whole), then the other "
             "matrices in model order."]
    print("\n".join(lines), flush=True)
    for model_name in args.models:
        per_seed = [run_seed(model_name, bundle, test, seed, args) for seed in range(args.seeds)]
        table = ["", f"### {model_name}", "", *_table(per_seed, args.finetune_epochs > 0)]
        print("\n".join(table), flush=True)
        lines += table
    if args.out:
        write_section(args.out, "bench_ranks", "\n".join(lines))


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
