"""``tfafm demo``: the whole story on built-in data in a few minutes.

Train a DeepFM on synthetic Criteo-like data; compress it 4x with weight SVD
and with AFM; fine-tune each for one epoch; fuse; export LiteRT float32 and
dynamic-int8 files; measure AUC / LogLoss (through the LiteRT interpreter for
the exported files), file size and batch-1 latency; write ``report.md``,
``report.json`` and ``tradeoff.png``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import keras
import numpy as np

from tfafm.compression.api import compress
from tfafm.data import load_data
from tfafm.export import litert
from tfafm.export.bench import benchmark
from tfafm.export.litert_file import LiteRTRunner
from tfafm.io_utils import Destination
from tfafm.metrics import evaluate, scores
from tfafm import models
from tfafm.training import compile_for_ctr


def _litert_metrics(path: str, dataset) -> dict[str, float]:
    runner = LiteRTRunner(path, num_threads=os.cpu_count() or 1)
    predictions, labels = [], []
    for features, batch_labels in dataset:
        predictions.append(runner({k: v.numpy() for k, v in features.items()}).reshape(-1))
        labels.append(batch_labels.numpy().reshape(-1))
    return scores(np.concatenate(labels), np.concatenate(predictions))


def results_markdown(rows: list[dict[str, Any]]) -> str:
    """The demo's results table (markdown), with ratios to the first row."""
    lines = [
        "| model | params | file KiB | AUC | LogLoss | batch-1 p50 ms | params ratio | size ratio | speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    reference = rows[0]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['params']:,} | {row['size_bytes'] / 1024:,.0f} | {row['auc']:.4f} | "
            f"{row['logloss']:.4f} | {row['p50_ms']:.3f} | {reference['params'] / row['params']:.2f}x | "
            f"{reference['size_bytes'] / row['size_bytes']:.2f}x | {reference['p50_ms'] / row['p50_ms']:.2f}x |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: str) -> bool:
    """AUC vs file size (marker area ~ latency); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(7, 4.5))
    slowest = max(r["p50_ms"] for r in rows)
    for row in rows:
        axis.scatter(row["size_bytes"] / 2**20, row["auc"], s=40 + 400 * row["p50_ms"] / slowest, alpha=0.6)
        axis.annotate(row["model"], (row["size_bytes"] / 2**20, row["auc"]), fontsize=8,
                      xytext=(5, 5), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("LiteRT file size (MiB, log scale)")
    axis.set_ylabel("validation AUC")
    axis.set_title("tfafm demo: AUC vs size (marker area ~ batch-1 latency)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def run_demo(
    out: str = "tfafm-demo",
    rows: int = 200_000,
    ratio: float = 4.0,
    seed: int = 0,
    say: Callable[[str], None] = print,
    verbose: int = 1,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Runs the demo and writes its reports into the directory ``out``; returns the table rows.

    ``out`` is checked before any work and written atomically: an existing
    directory there is replaced only if it is an earlier demo's (or empty),
    unless ``overwrite`` (see :mod:`tfafm.io_utils`).
    """
    destination = Destination(out, "demo", overwrite=overwrite)
    bundle = load_data(f"synthetic:{rows}", synthetic_max_vocabulary=100_000, seed=seed)
    say(f"[1/5] training DeepFM (embedding 16, MLP 400-400-400) on {bundle.description}")
    keras.utils.set_random_seed(seed)
    original = models.build("deepfm", bundle.schema, hidden_units=(400, 400, 400))
    compile_for_ctr(original, 1e-3)
    original.fit(bundle.train, epochs=1, verbose=verbose)
    calibration = bundle.train.take(max(1, 50_000 // 1024))

    trained = {"original": original}
    for method in ("svd", "afm"):
        say(f"[2/5] compressing with {method.upper()} to {ratio:g}x and fine-tuning one epoch")
        compressed, _ = compress(original, calibration, method=method, target_ratio=ratio,
                                 progress=verbose > 0)
        compile_for_ctr(compressed, 5e-4)
        compressed.fit(bundle.train, epochs=1, verbose=verbose)
        trained[method.upper()] = compressed
    say("      reference: a copy of the original trained one more epoch (the fine-tuned models' budget)")
    longer = keras.models.clone_model(original)
    longer.set_weights(original.get_weights())
    compile_for_ctr(longer, 5e-4)
    longer.fit(bundle.train, epochs=1, verbose=verbose)
    longer_metrics = evaluate(longer, bundle.validation)

    with destination.staged() as tmp:
        os.makedirs(tmp)
        say("[3/5] fusing and exporting LiteRT files (float32 and dynamic int8)")
        files = {}
        for name, model in trained.items():
            for quantization in (None, "dynamic"):
                label = f"{name} {'int8-dyn' if quantization else 'fp32'}"
                files[label] = litert(model, os.path.join(tmp, f"{label.replace(' ', '_')}.tflite"),
                                      quantization=quantization)
        say("[4/5] evaluating every file with the LiteRT interpreter")
        rows_out = []
        for label, path in files.items():
            model = trained[label.split()[0]]
            rows_out.append({"model": label, "params": model.count_params(),
                             "keras": evaluate(model, bundle.validation),
                             **_litert_metrics(path, bundle.validation)})
        say("[5/5] measuring batch-1 single-thread latency")
        timings = benchmark(list(files.values()), bundle.schema, batch_sizes=(1,), threads=(1,),
                            names=list(files), iterations=2000, max_seconds=4.0)
        for row, timing in zip(rows_out, timings):
            row.update(size_bytes=timing["size_bytes"], p50_ms=timing["p50_ms"], p99_ms=timing["p99_ms"])

        table = results_markdown(rows_out)
        plotted = _plot(rows_out, os.path.join(tmp, "tradeoff.png"))
        with open(os.path.join(tmp, "report.md"), "w") as f:
            f.write(f"# tfafm demo\n\nDeepFM on {bundle.description}; compressed {ratio:g}x, one fine-tuning "
                    f"epoch per compressed model; AUC / LogLoss computed with the LiteRT interpreter on "
                    f"the validation rows; latency is LiteRT invoke time on this machine.\n\n{table}\n\n"
                    f"The compressed models saw one epoch more than the original. The original given that "
                    f"epoch too (Keras, not exported) reaches AUC {longer_metrics['auc']:.4f}, LogLoss "
                    f"{longer_metrics['logloss']:.4f}.\n")
            if not plotted:
                f.write("\n(tradeoff.png not drawn: install matplotlib, `pip install tfafm[plot]`.)\n")
        with open(os.path.join(tmp, "report.json"), "w") as f:
            json.dump({"data": bundle.description, "ratio": ratio, "rows": rows_out,
                       "original_one_more_epoch": longer_metrics}, f, indent=2)
    return rows_out
