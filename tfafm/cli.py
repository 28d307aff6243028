"""The ``tfafm`` command line: train, eval, compress, export, bench, demo."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table

from tfafm.quiet import import_tensorflow

console = Console()
USER_ERRORS = (ValueError, FileNotFoundError, TypeError, KeyError, NotADirectoryError, PermissionError)


def _metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    for column in ("model", "AUC", "LogLoss", "rows"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, metrics in rows.items():
        table.add_row(name, f"{metrics['auc']:.4f}", f"{metrics['logloss']:.4f}", f"{metrics['rows']:,}")
    return table


def _train_config(args):
    from tfafm.config import TrainConfig

    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    overrides = {
        "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
        "embedding_dim": args.embedding_dim, "min_count": args.min_count, "seed": args.seed,
        "learning_rate": args.learning_rate, "synthetic_rows": args.rows,
    }
    values = {**config.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict(values, source="options")


def cmd_train(args) -> int:
    from tfafm import models
    from tfafm.training import train

    config = _train_config(args)
    if config.model not in models.available():
        raise ValueError(f"Unknown model {config.model!r}; available: {', '.join(models.available())}.")
    console.print(f"Training [bold]{config.model}[/] on [bold]{args.data}[/] for up to {config.epochs} epoch(s)")
    result = train(config, args.data, out=args.out, skip_bad_lines=args.skip_bad_lines,
                   verbose=0 if args.quiet else 1)
    console.print(result.bundle.description)
    console.print(_metrics_table(f"{config.model}: validation", {config.model: result.metrics}))
    console.print(f"Saved run to [bold]{args.out}[/] ({result.model.count_params():,} parameters)")
    return 0


def cmd_eval(args) -> int:
    from tfafm.metrics import evaluate
    from tfafm.runs import load_run

    run = load_run(args.run)
    bundle = run.load_data(args.data, skip_bad_lines=args.skip_bad_lines)
    metrics = evaluate(run.model, bundle.validation)
    console.print(bundle.description)
    console.print(_metrics_table(f"{args.run} on {args.data}", {run.model.name: metrics}))
    return 0


def cmd_compress(args) -> int:
    from tfafm.compression.pipeline import compress_run
    from tfafm.runs import load_run

    run = load_run(args.run)
    data = args.data or run.info.get("data", "synthetic")
    result = compress_run(
        run, data, out=args.out, method=args.method, target_ratio=args.ratio, energy=args.energy,
        inner_activation=args.inner_activation, finetune_epochs=args.finetune_epochs,
        calibration_steps=args.calibration_steps, skip_bad_lines=args.skip_bad_lines,
        verbose=0 if args.quiet else 1,
    )
    console.print(result.report.to_markdown())
    console.print(_metrics_table("validation", result.metrics))
    console.print(f"Saved compressed run to [bold]{args.out}[/]")
    return 0


def cmd_export(args) -> int:
    from tfafm import export
    from tfafm.runs import load_run

    run = load_run(args.run)
    if args.quantize and args.format != "litert":
        raise ValueError(f"--quantize applies to --format litert only, not {args.format}.")
    if args.format == "litert":
        representative = None
        if args.quantize == "int8":
            data = args.data or run.info.get("data", "synthetic")
            representative = run.load_data(data, evaluation_only=False).train
        export.litert(run.model, args.out, quantize=args.quantize, representative_data=representative,
                      fuse=not args.no_fuse)
        ops = sorted(export.litert_ops(args.out))
        console.print(f"LiteRT ops: {', '.join(ops)}")
    elif args.format == "saved_model":
        export.saved_model(run.model, args.out)
    else:
        export.onnx(run.model, args.out, opset=args.opset)
    console.print(f"Wrote [bold]{args.out}[/]")
    return 0


def cmd_bench(args) -> int:
    from tfafm.export.bench import benchmark, results_table
    from tfafm.schema import Schema

    schema = Schema.load(args.schema) if args.schema else _schema_near(args.models[0])
    rows = benchmark(args.models, schema, batch_sizes=args.batch_sizes, threads=args.threads,
                     iterations=args.iterations, max_seconds=args.max_seconds)
    console.print(results_table(rows), markup=False)
    return 0


def _schema_near(path: str):
    """The schema.json of a run directory, or of the folder holding an exported file."""
    from tfafm.runs import SCHEMA_FILE
    from tfafm.schema import Schema

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for candidate in (os.path.join(folder, SCHEMA_FILE), os.path.join(os.path.dirname(folder), SCHEMA_FILE)):
        if os.path.isfile(candidate):
            return Schema.load(candidate)
    raise FileNotFoundError(f"No schema.json next to {path}; pass --schema run/schema.json.")


def cmd_prepare(args) -> int:
    from tfafm.data.prepare import prepare_spec

    cache, timings = prepare_spec(
        args.data, args.out, validation_fraction=args.validation_fraction, min_count=args.min_count,
        max_vocabulary=args.max_vocabulary, preprocessor=args.preprocessor, skip_bad_lines=args.skip_bad_lines,
        shards=args.shards, progress=not args.quiet)
    for timing in timings:
        console.print(str(timing), markup=False)
    console.print(f"Wrote cache {args.out}: {cache.rows('train'):,} training / {cache.rows('validation'):,} "
                  f"validation rows in {len(cache.files('train'))} + {len(cache.files('validation'))} shards"
                  + (f", {cache.bad_lines:,} bad lines skipped" if cache.bad_lines else ""), markup=False)
    return 0


def cmd_demo(args) -> int:
    from tfafm.demo import run_demo

    run_demo(out=args.out, rows=args.rows, ratio=args.ratio, seed=args.seed,
             say=lambda text: console.print(text, markup=False), verbose=0 if args.quiet else 1)
    console.print(f"Wrote {args.out}/report.md, report.json and tradeoff.png")
    return 0


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfafm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model-zoo model and save a run directory")
    train.add_argument("--model", help="builder name (default: the config's, else deepfm)")
    train.add_argument("--data", default="synthetic", help="synthetic[:ROWS] | criteo:PATH | avazu:PATH")
    train.add_argument("--config", help="YAML experiment config, e.g. models/deepfm_criteo.yaml")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--embedding-dim", type=int)
    train.add_argument("--learning-rate", type=_positive_float)
    train.add_argument("--min-count", type=int, help="min occurrences for a categorical value to get an id")
    train.add_argument("--rows", type=int, help="training rows for synthetic data")
    train.add_argument("--seed", type=int)
    train.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed lines")
    train.add_argument("--out", default="run", help="run directory to write (default: run)")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a saved run on data (exact AUC / LogLoss)")
    evaluate.add_argument("run")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--skip-bad-lines", action="store_true")
    evaluate.set_defaults(func=cmd_eval)

    comp = commands.add_parser("compress", help="compress a saved run with AFM or SVD")
    comp.add_argument("run")
    comp.add_argument("--data", help="data spec (default: the run's training data)")
    comp.add_argument("--ratio", type=_positive_float, default=4.0, help="target parameter ratio (default 4)")
    comp.add_argument("--energy", type=_positive_float, help="keep this variance fraction per layer instead")
    comp.add_argument("--method", choices=("afm", "svd"), default="afm")
    comp.add_argument("--inner-activation", help="activation between the factors, e.g. relu")
    comp.add_argument("--finetune-epochs", type=_non_negative_int, default=0)
    comp.add_argument("--calibration-steps", type=int, help="calibrate on at most this many batches")
    comp.add_argument("--skip-bad-lines", action="store_true")
    comp.add_argument("--out", default="run-small")
    comp.add_argument("--quiet", action="store_true")
    comp.set_defaults(func=cmd_compress)

    exp = commands.add_parser("export", help="export a run to LiteRT, SavedModel or ONNX")
    exp.add_argument("run")
    exp.add_argument("--format", choices=("litert", "saved_model", "onnx"), default="litert")
    exp.add_argument("--quantize", choices=("float16", "dynamic", "int8"))
    exp.add_argument("--data", help="representative data for --quantize int8 (default: the run's)")
    exp.add_argument("--opset", type=int, help="ONNX opset (default: tf2onnx's)")
    exp.add_argument("--no-fuse", action="store_true", help="keep low-rank embedding projections unfused")
    exp.add_argument("--out", required=True)
    exp.set_defaults(func=cmd_export)

    bench = commands.add_parser("bench", help="latency, throughput, size and memory, side by side")
    bench.add_argument("models", nargs="+", help=".tflite / .onnx files, SavedModel or run directories")
    bench.add_argument("--schema", help="schema.json (default: found next to the first model)")
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    bench.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    bench.add_argument("--iterations", type=int, default=200)
    bench.add_argument("--max-seconds", type=float, default=10.0)
    bench.set_defaults(func=cmd_bench)

    prep = commands.add_parser("prepare", help="parse real data once into a binary cache (use it as --data cache:DIR)")
    prep.add_argument("--data", required=True, help="criteo:PATH | avazu:PATH | parquet:PATH[?label=..&categorical=..]")
    prep.add_argument("--out", required=True, help="cache directory to write")
    prep.add_argument("--min-count", type=int, default=1, help="min occurrences for a value to get an id")
    prep.add_argument("--max-vocabulary", type=int, help="keep at most this many ids per field (most frequent)")
    prep.add_argument("--validation-fraction", type=_positive_float, default=0.1,
                      help="every round(1/F)-th data line is validation (default 0.1)")
    prep.add_argument("--preprocessor", help="encode with this preprocessor.json (or run directory) instead of fitting")
    prep.add_argument("--shards", type=int, help="training shards (default: 1 up to 1M rows, else a multiple of 48)")
    prep.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed lines")
    prep.add_argument("--quiet", action="store_true")
    prep.set_defaults(func=cmd_prepare)

    demo = commands.add_parser("demo", help="train, compress (SVD vs AFM), export and benchmark on built-in data")
    demo.add_argument("--out", default="tfafm-demo")
    demo.add_argument("--rows", type=int, default=200_000, help="synthetic training rows")
    demo.add_argument("--ratio", type=_positive_float, default=4.0)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``tfafm`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "train" and os.environ.get("TF_CONFIG"):  # before TensorFlow runs any op
        from tfafm.distribute import cluster_strategy

        cluster_strategy()
    import_tensorflow(initialize_devices=True)
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    try:
        return args.func(args)
    except USER_ERRORS as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"tfafm: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tfafm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
