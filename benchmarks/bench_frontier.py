"""Size/accuracy frontier: LiteRT file bytes against held-out AUC and LogLoss.

For each data set, model and seed it trains the original (Adam, batch 512, at
most ``--epochs`` epochs, early stopping on validation AUC, best weights kept),
calibrates AFM once, and measures on the held-out rows, every AUC through the
LiteRT interpreter unless said otherwise:

    float32        the original's float32 LiteRT file
    int8           the original as a dynamic-range int8 file (LiteRT's own quantizer)
    int4 tables    the original with every embedding table in 4 bits with one float32
                   scale per row (Keras' ``Embedding.quantize("int4")``), the rest dynamic
                   int8. AUC from Keras and bytes estimated (the int8 file less its
                   tables' int8 bytes plus their int4 bytes and scales): LiteRT's builtin
                   ops cannot read Keras' packed int4 tables.
    SVD xR, AFM xR ``tfafm.compress(method=..., target_ratio=R, quantization="dynamic")``,
                   exported as dynamic int8, for R in ``--ratios``; a ratio out of reach
                   is listed as such with the largest reachable one.
    AFM-loss xR    the same with ``criterion="loss"`` (directions and ranks by what they cost
                   the predictions, from the same calibration), the default
                   ``first_order="codes"`` (a first-order table read from the embeddings where
                   that costs the predictions less than keeping it) and the default
                   ``id_coverage="auto"`` with the validation split as ``validation_data``: the
                   model compressed with every table row and with the rows of rare ids pruned
                   (ids outside the most frequent ones covering 99%, 95%, 90% of a field's
                   calibration lookups merged into row 0), the best validation AUC kept.
    AFM-loss, every row xR
                   AFM-loss with ``id_coverage=1`` (``--methods afm-loss-all-rows``): no table
                   row pruned, as before pruning was the default.
    AFM-loss, first-order kept xR
                   AFM-loss with ``first_order="keep"`` (``--methods afm-loss-keep``): the
                   first-order table as it is (only for models that have one).
    AFM or SVD (auto) xR
                   ``method="auto"`` (the default, ``--methods auto``): AFM-loss and SVD both
                   built at the ratio, the one with the higher validation AUC kept.
    AFM-loss+ft xR AFM-loss xR fine-tuned for ``--finetune-epochs`` epochs (Adam at half the
                   training rate; early stopping on validation AUC; kept only for a significant
                   validation AUC gain, as ``tfafm compress --finetune-epochs``) on the original's
                   predictions (distillation, the default), then exported the same way.
    AFM-loss+ft, labels xR
                   the same fine-tuning on the 0/1 labels (``--finetune-from labels``).

Prints the measured tables and, per data set and model, the smallest file within
``--tolerance`` AUC of the float32 original (mean over seeds); with ``--doc`` it
writes its "frontier" section there and the plot next to it. Asserts nothing.

    python benchmarks/bench_frontier.py                                  # synthetic + shared samples, 3 seeds
    python benchmarks/bench_frontier.py --datasets synthetic --seeds 1   # quick look
    python benchmarks/bench_frontier.py --doc docs/benchmarks.md --plot docs/frontier.png
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tfafm
from tfafm.compression.first_order import find_plan
from tfafm.compression.rare_ids import DEFAULT_COVERAGE
from tfafm import models
from tfafm.data import load_data
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.errors import UserError
from tfafm.export import litert
from tfafm.metrics import scores
from tfafm.training import compile_for_ctr, fine_tune, fit
from tfafm_choices import FINETUNE_FROM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, litert_scores, write_section  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ATTRIBUTION_FIELDS = "label=click&categorical=cat1,cat4,cat6,cat8,cat9"
SHARED_DATA = {  # (format, training files, held-out files, spec options)
    "criteo": ("criteo",
               [SHARED / "criteo/wide-resdnn/train.csv.gz", SHARED / "criteo/kaggle-2014-criteo/tr.rx.csv.gz"],
               [SHARED / "criteo/wide-resdnn/test.csv", SHARED / "criteo/kaggle-2014-criteo/va.rx.csv.gz"], ""),
    "avazu": ("avazu", [SHARED / "avazu/wide-resdnn/train.csv.gz"], [SHARED / "avazu/wide-resdnn/test.csv"], ""),
    "criteo_attribution": ("parquet", [SHARED / "criteo_attribution/small_train.parquet"],
                           [SHARED / "criteo_attribution/small_valid.parquet"], ATTRIBUTION_FIELDS),
}
HIDDEN = (400, 400, 400)
LEARNING_RATE = 1e-3
SYNTHETIC_VOCABULARY = 100_000
# name: (label, method, criterion, first_order, id_coverage)
METHODS = {"afm": ("AFM", "afm", "variance", "keep", 1.0),
           "afm-loss": ("AFM-loss", "afm", "loss", "codes", DEFAULT_COVERAGE),
           "afm-loss-all-rows": ("AFM-loss, every row", "afm", "loss", "codes", 1.0),
           "afm-loss-keep": ("AFM-loss, first-order kept", "afm", "loss", "keep", DEFAULT_COVERAGE),
           "svd": ("SVD", "svd", "variance", "keep", 1.0),
           # The default: AFM-loss and SVD both built at the ratio, the higher validation AUC kept.
           "auto": ("AFM or SVD (auto)", "auto", None, "codes", DEFAULT_COVERAGE)}
REACH = re.compile(r"largest reachable ratio for this model under \w+ is ([0-9.]+)x")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "criteo", "avazu"],
                        choices=["synthetic", *SHARED_DATA])
    parser.add_argument("--models", nargs="+", default=["deepfm", "dcnv2"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ratios", nargs="+", type=float, default=[2, 4, 6, 8, 16, 32, 64])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, default=1,
                        help="epochs of fine-tuning for the AFM-loss+ft rows (0: no such rows)")
    parser.add_argument("--finetune-from", nargs="+", choices=FINETUNE_FROM, default=[FINETUNE_FROM[0]],
                        help="what the AFM-loss+ft rows fit: teacher (the original's predictions, the default of "
                             "tfafm compress) and/or labels (the 'AFM-loss+ft, labels' rows)")
    parser.add_argument("--synthetic-rows", type=int, default=100_000)
    parser.add_argument("--tolerance", type=float, default=0.001, help="AUC loss allowed for 'within'")
    parser.add_argument("--doc", help="markdown file whose 'frontier' section the tables replace")
    parser.add_argument("--plot", help="PNG of file bytes against AUC loss (default: frontier.png beside --doc)")
    return parser.parse_args()


def load(dataset: str, rows: int):
    """``(training bundle, held-out dataset)`` of a data set; None when its shared files are absent."""
    if dataset == "synthetic":
        bundle = load_data(f"synthetic:{rows}", batch_size=512, synthetic_max_vocabulary=SYNTHETIC_VOCABULARY)
        # The held-out rows come from the same generator (seed and vocabularies: the same hidden teacher).
        test = SyntheticCriteo(max_vocabulary=SYNTHETIC_VOCABULARY).dataset(max(rows // 5, 1000), 512, "test")
        return bundle, test
    form, train, held_out, options = SHARED_DATA[dataset]
    if not all(path.exists() for path in train + held_out):
        return None

    def spec(paths):
        return f"{form}:{','.join(map(str, paths))}" + (f"?{options}" if options else "")

    bundle = load_data(spec(train), batch_size=512, min_count=2)
    test = load_data(spec(held_out), batch_size=512, preprocessor=bundle.preprocessor)
    return bundle, test.validation



def keras_scores(model, dataset) -> dict:
    predictions, labels = [], []
    for features, batch_labels in dataset:
        predictions.append(np.asarray(model(features, training=False)).reshape(-1))
        labels.append(batch_labels.numpy().reshape(-1))
    return scores(np.concatenate(labels), np.concatenate(predictions))


def int4_tables(model, int8_bytes: int) -> tuple[keras.Model, int]:
    """The model with its embedding tables in Keras int4 (per-row scales) and the estimated file bytes."""
    quantized = keras.models.clone_model(model)
    quantized.set_weights(model.get_weights())
    saved = 0
    for layer in quantized._flatten_layers():
        if isinstance(layer, keras.layers.Embedding):
            rows, width = layer.input_dim, layer.output_dim
            if rows * width >= 1024:  # LiteRT's dynamic quantizer leaves smaller tables float32
                saved += rows * width - (rows * ((width + 1) // 2) + 4 * rows)
                layer.quantize("int4", type_check=False)
    return quantized, int8_bytes - saved


def run_cell(model_name, bundle, test, seed, args, tmp) -> list[dict]:
    """Every variant of one model, data set and seed: a dict each (variant, ratio, bytes, metrics)."""
    keras.utils.set_random_seed(seed)
    original = models.build(model_name, bundle.schema, hidden_units=HIDDEN)
    compile_for_ctr(original, LEARNING_RATE)
    fit(original, bundle, args.epochs, patience=1, verbose=0)
    calibration = bundle.train.take(40)
    statistics = tfafm.calibrate(original, calibration, progress=False, fisher=True)
    results = []

    def exported(name, model, quantization, ratio=None):
        path = litert(model, os.path.join(tmp, f"{model_name}-{seed}-{name}.tflite"), quantization=quantization)
        results.append({"variant": name, "ratio": ratio, "bytes": os.path.getsize(path),
                        **litert_scores(path, test)})
        return results[-1]

    exported("float32", original, None)
    int8 = exported("int8", original, "dynamic")
    quantized, estimated = int4_tables(original, int8["bytes"])
    results.append({"variant": "int4 tables", "ratio": None, "bytes": estimated, **keras_scores(quantized, test)})
    has_first_order = find_plan(original) is not None
    for name, method, criterion, first_order, id_coverage in (METHODS[m] for m in args.methods):
        if first_order == "keep" and method == "afm" and criterion == "loss" and not has_first_order:
            continue  # the same model as AFM-loss
        for ratio in args.ratios:
            try:
                small, _ = tfafm.compress(original, calibration, method=method, target_ratio=ratio,
                                          quantization="dynamic", statistics=statistics, criterion=criterion,
                                          first_order=first_order, id_coverage=id_coverage, progress=False,
                                          validation_data=bundle.validation
                                          if id_coverage == "auto" or method == "auto" else None)
            except UserError as error:
                reach = REACH.search(str(error))
                results.append({"variant": name, "ratio": ratio, "bytes": None,
                                "reach": float(reach.group(1)) if reach else None})
                continue
            exported(name, small, "dynamic", ratio)
            if name == "AFM-loss" and args.finetune_epochs:
                compressed_weights = small.get_weights()
                for source in args.finetune_from:
                    small.set_weights(compressed_weights)
                    fine_tune(small, bundle, args.finetune_epochs, LEARNING_RATE / 2,
                              teacher=original if source == "teacher" else None)
                    exported(f"{name}+ft" + ("" if source == "teacher" else ", labels"), small, "dynamic", ratio)
    return results


def label(row) -> str:
    return row["variant"] + (f" x{row['ratio']:g}" if row["ratio"] else "")


def table(per_seed: list[list[dict]]) -> tuple[list[str], list[dict]]:
    """Markdown rows (mean ± std over seeds) and the summary rows they come from."""
    base = np.array([next(r for r in cell if r["variant"] == "float32") for cell in per_seed], dtype=object)
    base_bytes = np.mean([b["bytes"] for b in base])
    lines = ["| variant | file KiB | x smaller than float32 | AUC | AUC - float32's | LogLoss |",
             "|---|---:|---:|---:|---:|---:|"]
    summary = []
    for i, first in enumerate(per_seed[0]):
        rows = [cell[i] for cell in per_seed]
        if first["bytes"] is None:
            reach = first.get("reach")
            lines.append(f"| {label(first)} | out of reach" + (f" (largest: x{reach:g})" if reach else "")
                         + " | | | | |")
            continue
        size = np.mean([r["bytes"] for r in rows])
        auc = np.array([r["auc"] for r in rows])
        drop = auc - np.array([b["auc"] for b in base])
        loss = np.array([r["logloss"] for r in rows])
        summary.append({"label": label(first), "variant": first["variant"], "bytes": size,
                        "smaller": base_bytes / size, "delta": float(drop.mean())})
        mark = " (est.)" if first["variant"] == "int4 tables" else ""
        lines.append(f"| {label(first)} | {size / 1024:,.1f}{mark} | {base_bytes / size:.1f}x | "
                     f"{auc.mean():.4f} ± {auc.std():.4f} | {drop.mean():+.4f} | {loss.mean():.4f} ± {loss.std():.4f} |")
    return lines, summary


def smallest_within(summary: list[dict], tolerance: float) -> list[str]:
    """Per variant family, the smallest file whose mean AUC is within ``tolerance`` of float32's."""
    lines = []
    for family in dict.fromkeys(row["variant"] for row in summary):
        within = [row for row in summary if row["variant"] == family and row["delta"] >= -tolerance]
        best = min(within, key=lambda row: row["bytes"]) if within else None
        lines.append(f"- {family}: " + (f"{best['label']}, {best['smaller']:.1f}x smaller than float32 "
                                        f"(AUC {best['delta']:+.4f})" if best else "none within the tolerance"))
    return lines


def plot(panels: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis, (title, summary) in zip(axes.flat, panels.items()):
        for family in dict.fromkeys(row["variant"] for row in summary):
            rows = sorted((r for r in summary if r["variant"] == family), key=lambda r: r["bytes"])
            axis.plot([r["bytes"] / 1024 for r in rows], [r["delta"] for r in rows], "o-", label=family)
        axis.axhline(0, color="grey", linewidth=0.5)
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("LiteRT file KiB")
        axis.set_ylabel("held-out AUC - float32 original's")
        axis.set_title(title)
        axis.legend(fontsize=7)
    figure.tight_layout()
    temporary = path + ".tmp.png"
    figure.savefig(temporary, dpi=90)
    os.replace(temporary, path)


def main() -> None:
    args = parse_args()
    sections = [
        "## Size/accuracy frontier (file bytes against held-out AUC)", "",
        f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}` ({environment()}).", "",
        f"Protocol: MLP {'-'.join(map(str, HIDDEN))}, embedding 16, Adam 1e-3, batch 512, at most {args.epochs} "
        "epochs with early stopping on validation AUC; calibrated on 40 training batches (with Fisher information, "
        "for AFM-loss); AFM-loss reads a first-order table (DeepFM) from the embeddings where that costs the "
        "predictions less than its bytes buy the codes (the default `first_order=\"codes\"`; the 'first-order kept' "
        "rows keep it) and, by default (`id_coverage=\"auto\"`, given the validation split), prunes the rows of rare "
        "ids where that gives the better validation AUC at the ratio (every row, or the ids covering 99%, 95% or 90% "
        "of each field's calibration lookups; the 'every row' rows never prune); 'AFM or SVD (auto)' builds AFM-loss "
        "and weight SVD at the ratio and keeps the higher validation AUC (the default `method=\"auto\"`); "
        "no fine-tuning, except the "
        "AFM-loss+ft rows "
        f"({args.finetune_epochs} epoch(s) at half the learning rate on the original's predictions (distillation; "
        "the ', labels' rows on the 0/1 labels), early stopping on validation AUC, kept only "
        "when the validation AUC gain is significant: paired DeLong z >= 1.645). "
        "Compressed models are ranked in dynamic-int8 bytes and exported as dynamic-int8 LiteRT files; AUC and "
        f"LogLoss through the LiteRT interpreter on held-out rows, mean ± std over {args.seeds} seed(s); 'x "
        "smaller' against the float32 original's file. int4 tables: Keras AUC and estimated bytes (see "
        "benchmarks/bench_frontier.py).",
    ]
    panels = {}
    for dataset in args.datasets:
        loaded = load(dataset, args.synthetic_rows)
        if loaded is None:
            print(f"{dataset}: shared files absent, skipped", flush=True)
            continue
        bundle, test = loaded
        sections += ["", f"### {dataset}", "", f"Train: {bundle.description}."]
        for model_name in args.models:
            print(f"{dataset} / {model_name}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                per_seed = [run_cell(model_name, bundle, test, seed, args, tmp) for seed in range(args.seeds)]
            lines, summary = table(per_seed)
            panels[f"{dataset} / {model_name}"] = summary
            sections += ["", f"#### {model_name}", "", *lines, "",
                         f"Smallest file within {args.tolerance} AUC of the float32 original:", "",
                         *smallest_within(summary, args.tolerance)]
            print("\n".join(sections[-(len(lines) + len(summary) + 6):]), flush=True)
    plot_path = args.plot or (os.path.join(os.path.dirname(args.doc) or ".", "frontier.png") if args.doc else None)
    if plot_path and panels:
        plot(panels, plot_path)
        sections += ["", f"![frontier]({os.path.relpath(plot_path, os.path.dirname(args.doc) or '.')})"
                     if args.doc else ""]
        print(f"wrote {plot_path}")
    if args.doc:
        write_section(args.doc, "frontier", "\n".join(sections))
        print(f"wrote {args.doc}")


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
