"""The ``tfafm`` command: argument parsing and checks, kept apart from TensorFlow.

Importing anything under ``tfafm`` imports TensorFlow (the package registers its
Keras layers), which takes seconds. This module, outside the package, parses and
checks the command line first, so ``--help`` and argument errors answer at once;
only a valid command imports :mod:`tfafm.cli` to run it.

Exit codes: 0 success, 2 a user error (one line on stderr), 1 a bug (traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from typing import Iterator, NoReturn, Optional, Sequence

from tfafm_choices import (CRITERIA, DATA_KINDS, EXPORT_FORMATS, FINETUNE_FROM, FIRST_ORDER, ID_COVERAGE, ID_COVERAGES,
                           METHOD, METHODS, MODEL_NAMES, OBJECTIVES, QUANTIZATIONS, WITH_OPTIONS)

DESCRIPTION = """Compress Keras click-through-rate models with low-rank factorization (AFM or weight SVD)
and export them to LiteRT, SavedModel or ONNX. A typical session: tfafm train, tfafm compress,
tfafm export, tfafm bench. User errors print one line and exit with code 2.
Outputs are never half-written, and tfafm replaces only what it wrote itself unless you pass --overwrite."""

EPILOG = """TensorFlow's own start-up notes and warnings are hidden unless you set TF_CPP_MIN_LOG_LEVEL.
Run 'tfafm COMMAND --help' for the options of a command."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``tfafm CMD: error: ... (see tfafm CMD --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- argument types


INT_MAX = 2**31 - 1  # the largest count, size or step number any option takes (tfafm.config.MAX_COUNT)
SEED_MAX = 2**32 - 1  # numpy's and Keras' largest seed (tfafm.config.MAX_SEED)


def _number(text: str, kind: type, what: str, accept, upper: Optional[float] = None) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not accept(value) or value != value:  # NaN fails every comparison
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    if upper is not None and value > upper:
        raise argparse.ArgumentTypeError(f"expected {what} of at most {upper}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, "a positive integer", lambda v: v > 0, INT_MAX)


def non_negative_int(text: str) -> int:
    return _number(text, int, "an integer >= 0", lambda v: v >= 0, INT_MAX)


def seed(text: str) -> int:
    return _number(text, int, "an integer >= 0", lambda v: v >= 0, SEED_MAX)


def positive_float(text: str) -> float:
    return _number(text, float, "a positive number", lambda v: 0 < v < float("inf"))


def seconds(text: str) -> float:
    return _number(text, float, "a positive number of seconds", lambda v: 0 < v < float("inf"), 86_400)


def ratio(text: str) -> float:
    return _number(text, float, "a compression ratio greater than 1, e.g. 4", lambda v: 1 < v < float("inf"))


def auc_drop(text: str) -> float:
    return _number(text, float, "an AUC drop in [0, 1), e.g. 0.001", lambda v: 0 <= v < 1)


def fraction(text: str) -> float:
    return _number(text, float, "a fraction in (0, 1], e.g. 0.95", lambda v: 0 < v <= 1)


def coverage(text: str):
    return text if text == "auto" else _number(text, float, "auto or a fraction in (0, 1], e.g. 0.95",
                                               lambda v: 0 < v <= 1)


# ----------------------------------------------------------------------------- the parser

DATA_HELP = ("data spec: synthetic, synthetic:ROWS, criteo:PATH, avazu:PATH, parquet:PATH, csv:PATH, tfrecord:PATH "
             "or cache:DIR (from tfafm prepare); PATH is a file (may be gzipped), a directory, a glob or a "
             "comma-separated list. A model tfafm did not train (a .keras file) reads parquet/csv/tfrecord "
             "columns named like its inputs, as they are: add ?label=COLUMN (one per output, comma-separated) "
             "and &pad=COLUMN,... for list columns to pad with 0 or cut to their input's length (sequences)")
MODEL_HELP = "a run directory (tfafm train / compress) or a Keras model file (.keras)"


def _add_common(parser: argparse.ArgumentParser, writes: Optional[str] = None, out_default: str = "") -> None:
    """``--quiet`` on every command; ``--out`` and ``--overwrite`` on those that write ``writes``."""
    if writes is not None:
        parser.add_argument("--out", metavar="PATH", help=f"the {writes} to write; {out_default}. An existing one "
                            "is replaced only if tfafm wrote it (a marked directory of the same kind), or with "
                            "--overwrite; the new one is swapped in only once complete")
        parser.add_argument("--overwrite", action="store_true",
                            help="replace whatever is at --out (never an input of the command, nor a folder "
                                 "holding the current directory)")
    parser.add_argument("--quiet", action="store_true",
                        help="print only results and errors: no progress bars or progress lines")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a Python module (a name found from the current directory or PYTHONPATH, or a "
                             ".py file) before loading any model: where a model's custom layers are registered "
                             "(@keras.saving.register_keras_serializable); repeatable")


def _add_skip_bad_lines(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-bad-lines", action="store_true",
                        help="skip and count malformed data lines instead of stopping at the first one")


def _add_report_format(parser: argparse.ArgumentParser, choices: Sequence[str], default_help: str) -> None:
    parser.add_argument("--format", dest="report_format", choices=choices,
                        help=f"results as {', '.join(choices)} (default: {default_help})")


def build_parser() -> argparse.ArgumentParser:
    """The ``tfafm`` argument parser (building it imports neither TensorFlow nor tfafm)."""
    parser = Parser(prog="tfafm", description=DESCRIPTION, epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model-zoo model and save a run directory",
        description="Train a model-zoo model on a data spec and save a run directory (model.keras, "
                    "schema.json, preprocessor.json for real data, run.json with config and exact "
                    "validation metrics). Options given here override the --config file.")
    train.add_argument("--model", metavar="NAME",
                       help=f"model-zoo builder: {', '.join(MODEL_NAMES)} (default: the config's, else deepfm)")
    train.add_argument("--data", default="synthetic",
                       help="data spec: synthetic, synthetic:ROWS, criteo:PATH, avazu:PATH, parquet:PATH (with "
                            "?label=COLUMN&categorical=..) or cache:DIR (from tfafm prepare); PATH is a file (may be "
                            "gzipped), a directory, a glob or a comma-separated list (default: synthetic; csv: and "
                            "tfrecord: feed models of your own, in eval, compress and export)")
    train.add_argument("--config", metavar="YAML", help="experiment config, e.g. models/deepfm_criteo.yaml")
    train.add_argument("--epochs", type=positive_int, help="maximum training epochs; training stops early when "
                                                           "validation AUC stops improving (default 1)")
    train.add_argument("--batch-size", type=positive_int, help="rows per batch (default 1024)")
    train.add_argument("--embedding-dim", type=positive_int, help="embedding width of every sparse feature "
                                                                  "(default 16)")
    train.add_argument("--learning-rate", type=positive_float, help="Adam learning rate (default 0.001)")
    train.add_argument("--min-count", type=positive_int,
                       help="occurrences a categorical value needs to get its own id (default 1)")
    train.add_argument("--rows", type=positive_int, help="training rows of synthetic data (default 200000)")
    train.add_argument("--seed", type=seed, help="seed of weights, shuffling and synthetic data (default 0)")
    train.add_argument("--cluster-timeout", type=seconds, default=180.0, metavar="SECONDS",
                       help="on a cluster (TF_CONFIG): how long to wait for the other tasks to start, and for "
                            "any of them during a training step, before failing (default 180)")
    _add_skip_bad_lines(train)
    _add_common(train, "run directory", "default: run")

    evaluate = commands.add_parser(
        "eval", help="evaluate a run or a .keras model: exact AUC and LogLoss",
        description="Evaluate a run with its saved preprocessing, or a .keras model on its own data (columns "
                    "named like its inputs): exact AUC and LogLoss over every row, per output.")
    evaluate.add_argument("run", metavar="MODEL", help=MODEL_HELP)
    evaluate.add_argument("--data", help=f"{DATA_HELP}; every row is evaluated (default for a run: the validation "
                                         "split of its own training data; required for a .keras file)")
    _add_skip_bad_lines(evaluate)
    _add_report_format(evaluate, ("table", "md", "json"), "a table on a terminal, md when redirected")
    _add_common(evaluate)

    compress = commands.add_parser(
        "compress", help="compress a run or a .keras model with AFM or weight SVD",
        description="Compress a run or a .keras model: calibrate on its data, factor every embedding table "
                    "and Dense layer, check that the result runs, measure it on held-out rows, optionally "
                    "fine-tune, and save a new run directory (model.keras, report.md, report.json; "
                    "frontier.png with --max-auc-drop).")
    compress.add_argument("run", metavar="MODEL", help=f"{MODEL_HELP} to compress (never modified)")
    compress.add_argument("--data", help=f"{DATA_HELP} (default for a run: its training data; required for a "
                                         ".keras file, of which every 10th row is held out for validation "
                                         "unless --validation is given)")
    compress.add_argument("--validation", metavar="SPEC",
                          help="held-out data to measure the compressed model on, same forms as --data "
                               "(default: the run's validation split, or every 10th row of --data)")
    budget = compress.add_mutually_exclusive_group()
    budget.add_argument("--ratio", type=ratio,
                        help="shrink the LiteRT file (under --quantization) this many times (default 4)")
    budget.add_argument("--energy", type=fraction,
                        help="instead of --ratio, keep this fraction of each layer's output variance")
    budget.add_argument("--max-auc-drop", type=auc_drop, metavar="DROP",
                        help="instead of --ratio, the smallest model (in the bytes of --quantization) whose "
                             "validation AUC is at most DROP below the original's, e.g. 0.001; searched over "
                             "the ratio from one calibration (at most 10 evaluations)")
    compress.add_argument("--method", choices=METHODS, default=METHOD,
                          help="afm: factor each layer's output covariance (needs calibration data); "
                               "svd: factor the weights; auto: both, and keep SVD only where its validation AUC "
                               "is higher beyond noise (paired DeLong z >= 1.645) and its LogLoss no higher "
                               "(needs labels in --validation or --data; else afm) (default auto)")
    compress.add_argument("--objective", choices=OBJECTIVES, default="both",
                          help="what --ratio shrinks: both (the file, and the bytes read per batch-1 request as far "
                               "as that costs the predictions next to nothing), "
                               "params (the file only) or latency (the bytes read per request plus a cost per "
                               "op only; tables mostly stay whole) (default both)")
    compress.add_argument("--criterion", choices=CRITERIA,
                          help="what the factors keep: variance (each layer's output variance, AFM as published) "
                               "or loss (what the predictions see: directions and ranks weighted by the Fisher "
                               "information calibration also collects, one backward pass per batch, no labels) "
                               "(default: loss for afm, variance for svd)")
    compress.add_argument("--first-order", choices=FIRST_ORDER, default="codes",
                          help="a first-order term (one weight per field and id: DeepFM, Wide&Deep, NFM, xDeepFM, "
                               "FiBiNET) under --ratio or --max-auc-drop with afm and the loss criterion: codes "
                               "(read it from the fields' embeddings where that costs the predictions less than "
                               "keeping its table) or keep (default codes)")
    compress.add_argument("--id-coverage", type=coverage, default=ID_COVERAGE, metavar="auto|SHARE",
                          help="under --ratio or --max-auc-drop with afm and the loss criterion: in each field "
                               "behind tfafm's id guard, keep the table rows of the most frequent ids covering this "
                               "share of its calibration lookups; every other id reads one shared row (their "
                               "lookup-weighted mean); 1 keeps every row; auto tries every row and "
                               f"{', '.join(f'{c:g}' for c in ID_COVERAGES[1:])} and keeps the best on the "
                               f"validation AUC (every row without labelled validation data) (default {ID_COVERAGE})")
    compress.add_argument("--quantization", choices=QUANTIZATIONS, default="float32",
                          help="count costs in the bytes of the LiteRT quantization you will export with "
                               "(tfafm export --quantization) (default float32)")
    compress.add_argument("--inner-activation", metavar="NAME",
                          help="Keras activation between the two factors of Dense layers, e.g. relu (default "
                               "none: exact at full rank)")
    compress.add_argument("--finetune-epochs", type=non_negative_int, default=0, metavar="N",
                          help="fine-tuning epochs after compression; the fine-tuned weights are kept only if "
                               "their validation AUC gain is significant (paired DeLong test, z >= 1.645), "
                               "else the compressed weights (default 0)")
    compress.add_argument("--finetune-from", choices=FINETUNE_FROM, default=FINETUNE_FROM[0],
                          help="what fine-tuning fits on the training rows: teacher (the original model's "
                               "predictions: distillation) or labels (default teacher)")
    compress.add_argument("--calibration-steps", type=positive_int, metavar="N",
                          help="calibrate on at most N batches (default: the whole training split)")
    _add_skip_bad_lines(compress)
    _add_common(compress, "run directory", "default: the run's path with -small appended")

    export = commands.add_parser(
        "export", help="export a run to LiteRT, SavedModel or ONNX",
        description="Export a run's model or a .keras model for serving: one named input per model input, "
                    "named outputs. The written file is loaded in its runtime and checked against the Keras "
                    "model before it replaces anything.")
    export.add_argument("run", metavar="MODEL", help=f"{MODEL_HELP} to export")
    export.add_argument("--format", choices=EXPORT_FORMATS,
                        help="litert: a .tflite file (builtin ops only); saved_model: a directory; onnx: an "
                             ".onnx file (default: the one --out's extension names, .tflite, .onnx or "
                             ".saved_model, else litert; an --out naming another format is refused)")
    export.add_argument("--quantization", "--quantize", choices=("float16", "dynamic", "int8"),
                        help="LiteRT only: float16 weights, dynamic-range int8 weights, or full int8 "
                             "(calibrated on --data) (default: float32; --quantize is its former name)")
    export.add_argument("--data", help=f"rows the written file is checked on against Keras (and, for --quantization "
                                       f"int8, its representative data): {DATA_HELP} (default: rows generated "
                                       "inside each input's valid range; for int8, the run's training data)")
    export.add_argument("--opset", type=positive_int, help="ONNX only: opset version (default: tf2onnx's)")
    export.add_argument("--no-fuse", action="store_true",
                        help="LiteRT only: keep low-rank embedding projections separate instead of folding "
                             "them into the next Dense layer")
    _add_common(export, "file (directory for saved_model)",
                "default: the run's path with .tflite, -QUANTIZE.tflite, .onnx or .saved_model appended")

    bench = commands.add_parser(
        "bench", help="latency, throughput, size and memory of exported models, side by side",
        description="Measure exported models side by side, each in its own process: p50/p99 latency, "
                    "rows per second, file size and peak memory, with ratios to the first model.")
    bench.add_argument("models", nargs="+", metavar="MODEL",
                       help=".tflite, .onnx or .keras files, SavedModel directories or run directories")
    bench.add_argument("--schema", metavar="JSON",
                       help="schema.json describing the inputs of every model (default, per model: what a "
                            "tfafm .tflite file says of its inputs, else the schema.json of its run: in or next "
                            "to its folder, or the run an export's default name comes from, RUN.onnx beside RUN/)")
    bench.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 256], metavar="N",
                       help="batch sizes to time (default 1 256)")
    bench.add_argument("--threads", type=positive_int, nargs="+", default=[1, os.cpu_count() or 1], metavar="N",
                       help="thread counts to time, one process each (default 1 and the CPU count)")
    bench.add_argument("--iterations", type=positive_int, default=200,
                       help="timed calls per batch size (default 200)")
    bench.add_argument("--max-seconds", type=positive_float, default=10.0,
                       help="stop timing a batch size after this long, once 10 calls are timed (default 10)")
    _add_report_format(bench, ("md", "json"), "md, a markdown table")
    _add_common(bench)

    inspect = commands.add_parser(
        "inspect", help="what compress would do to a model, and the file sizes to expect",
        description="List a model's layers and parameters, which matrices compress would factor and which "
                    "layers it would leave alone (with the reason), and the LiteRT file size to expect per "
                    "quantization at ratios 2x to 64x. Needs no data.")
    inspect.add_argument("run", metavar="MODEL", help=MODEL_HELP)
    _add_report_format(inspect, ("md", "json"), "md")
    _add_common(inspect)

    prepare = commands.add_parser(
        "prepare", help="parse real data once into a binary cache (then use --data cache:DIR)",
        description="Parse criteo, avazu or Parquet data once: fit the vocabularies on the training split "
                    "and write the encoded rows as TFRecord shards that train, eval and compress read with "
                    "--data cache:DIR. A cache whose source files change is rebuilt when it is next used.")
    prepare.add_argument("--data", required=True, help="criteo:PATH, avazu:PATH or "
                         "parquet:PATH[?label=COLUMN&categorical=A,B&dense=C] (see data/README.md)")
    prepare.add_argument("--min-count", type=positive_int, default=1,
                         help="occurrences a categorical value needs to get its own id (default 1)")
    prepare.add_argument("--max-vocabulary", type=positive_int,
                         help="keep at most this many ids per field, the most frequent (default: all)")
    prepare.add_argument("--validation-fraction", type=fraction, default=0.1,
                         help="every round(1/F)-th data line is validation (default 0.1)")
    prepare.add_argument("--preprocessor", metavar="RUN_OR_JSON",
                         help="encode with this run's preprocessor (or preprocessor.json) instead of fitting one")
    prepare.add_argument("--shards", type=positive_int,
                         help="files per split (default: 1 up to 1M rows, else a multiple of 48)")
    _add_skip_bad_lines(prepare)
    _add_common(prepare, "cache directory", "required")

    demo = commands.add_parser(
        "demo", help="train, compress (SVD vs AFM), export and benchmark on built-in data",
        description="The whole story on built-in synthetic data: train a DeepFM, compress it with SVD and "
                    "AFM, fine-tune, export LiteRT float32 and dynamic-int8 files, measure them and write "
                    "report.md, report.json and tradeoff.png.")
    demo.add_argument("--rows", type=positive_int, default=200_000, help="synthetic training rows "
                                                                          "(default 200000)")
    demo.add_argument("--ratio", type=ratio, default=4.0, help="compression ratio (default 4)")
    demo.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    _add_common(demo, "report directory", "default: tfafm-demo")

    imported = commands.add_parser(  # Keras 2 / TFRS models in (issue 12): runs tfafm.interop.command
        "import", help="convert a Keras 2 model (TFRS layers included) into a run directory",
        description="Convert a Keras 2 (tf_keras) Sequential or functional model, TensorFlow Recommenders "
                    "layers included, into a run directory that export and bench take: model.keras, "
                    "schema.json, raw_features.json (the lookups, moved out of the model) and run.json. The "
                    "converted model is checked against the original on sampled rows before anything is "
                    "written.")
    imported.add_argument("source_format", metavar="FORMAT", choices=("keras2",),
                          help="keras2: a tf_keras .h5 / .keras file or SavedModel directory")
    imported.add_argument("path", help="the model file or SavedModel directory (never modified)")
    imported.add_argument("--parity-rows", type=positive_int, default=1000, metavar="N",
                          help="sampled raw rows on which the converted model must match the original "
                               "within 1e-5 (default 1000)")
    _add_common(imported, "run directory", "default: the model's path without extension, with -run appended")
    return parser


# ----------------------------------------------------------------------------- checks and defaults


def _beside(path: str, suffix: str) -> str:
    """``path`` with ``suffix`` appended to its last component (``run/`` -> ``run-small``)."""
    normalized = os.path.normpath(path)
    if os.path.basename(normalized) in (".", "..", ""):
        normalized = os.path.abspath(normalized)
    return normalized + suffix


class UsageError(Exception):
    """An option combination argparse cannot check; reported like argparse's own errors."""




def _check_data_spec(spec: Optional[str], option: str = "--data") -> None:
    """Checks a ``--data`` spec's form and that its files exist (their content is checked when read)."""
    if spec is None:
        return
    kind, colon, rest = spec.partition(":")
    if kind not in DATA_KINDS:
        raise UsageError(f"{option}: unknown data source {kind!r} in {spec!r}; expected synthetic[:ROWS], "
                         "criteo:PATH, avazu:PATH, parquet:PATH, csv:PATH, tfrecord:PATH or cache:DIR")
    if kind == "synthetic":
        if colon and not (rest.isdigit() and 0 < int(rest) <= INT_MAX):
            raise UsageError(f"{option}: ROWS of synthetic:ROWS must be a positive integer of at most {INT_MAX}, "
                             f"got {rest!r}")
        return
    if kind in WITH_OPTIONS:
        rest = rest.partition("?")[0]
    paths = [p for p in rest.split(",") if p]
    if not paths:
        raise UsageError(f"{option}: {kind} data needs a path: {kind}:PATH")
    for path in paths:
        if not os.path.exists(path) and not any(c in path for c in "*?["):
            raise UsageError(f"{option}: {path}: no such file or directory")


def _model_stem(path: str) -> str:
    """A model path without its ``.keras`` extension (a run directory as it is)."""
    normalized = os.path.normpath(path)
    return normalized[:-len(".keras")] if normalized.endswith(".keras") and not os.path.isdir(path) else path


_FORMAT_EXTENSIONS = {".tflite": "litert", ".onnx": "onnx", ".saved_model": "saved_model"}


def _export_format(args: argparse.Namespace) -> None:
    """``--format`` from ``--out``'s extension when not given; refused when the extension names another
    (``--out model.onnx`` wrote a LiteRT file under that name)."""
    extension = os.path.splitext(os.path.normpath(args.out))[1].lower() if args.out else ""
    implied = _FORMAT_EXTENSIONS.get(extension)
    if args.format is None:
        args.format = implied or "litert"
    elif implied is not None and implied != args.format:
        raise UsageError(f"--out {args.out} names a {implied} file ({extension}), but --format is {args.format}: "
                         "give an --out of that format or leave --format out")


def _check_and_fill(args: argparse.Namespace) -> None:
    """Checks option combinations argparse cannot, and fills the derived ``--out`` defaults."""
    _check_data_spec(getattr(args, "data", None))
    _check_data_spec(getattr(args, "validation", None), "--validation")
    if args.command == "export":
        _export_format(args)
        for option, value in (("--quantization", args.quantization), ("--no-fuse", args.no_fuse)):
            if value and args.format != "litert":
                raise UsageError(f"{option} applies to --format litert only, not {args.format}")
        if args.opset is not None and args.format != "onnx":
            raise UsageError(f"--opset applies to --format onnx only, not {args.format}")
        if args.out is None:
            suffix = {"saved_model": ".saved_model", "onnx": ".onnx"}.get(args.format)
            suffix = suffix or (f"-{args.quantization}.tflite" if args.quantization else ".tflite")
            args.out = _beside(_model_stem(args.run), suffix)
    elif args.command == "compress":
        if args.energy is not None and (args.objective != "both" or args.quantization != "float32"):
            raise UsageError("--objective and --quantization apply to --ratio and --max-auc-drop, not --energy")
        if args.ratio is None and args.energy is None and args.max_auc_drop is None:
            args.ratio = 4.0
        if args.out is None:
            args.out = _beside(_model_stem(args.run), "-small")
    elif args.command == "train" and args.out is None:
        args.out = "run"
    elif args.command == "demo" and args.out is None:
        args.out = "tfafm-demo"
    elif args.command == "import" and args.out is None:
        args.out = _beside(os.path.splitext(os.path.normpath(args.path))[0], "-run")
    elif args.command == "prepare":
        if args.out is None:
            raise UsageError("--out is required: the cache directory to write")
        if args.data.partition(":")[0] not in ("criteo", "avazu", "parquet"):
            raise UsageError(f"--data: prepare reads criteo:PATH, avazu:PATH or parquet:PATH, not {args.data!r}")


# ----------------------------------------------------------------------------- the process


# The real stderr while file descriptor 2 is silenced: never closed, since a logging handler created meanwhile
# (TensorFlow's, as it loads) keeps writing to it after (a closed one wrote to whatever file took its number).
_REAL_STDERR = None


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Sends file descriptor 2 to /dev/null while Python's ``sys.stderr`` keeps writing to the real stderr.

    TensorFlow's and LiteRT's C++ runtimes print notes (oneDNN, CUDA probing,
    converter, XNNPACK) straight to the file descriptor, some before any log
    level applies; Python's warnings, progress lines and errors are unaffected.
    """
    global _REAL_STDERR
    sys.stderr.flush()
    python_stderr = sys.stderr
    if _REAL_STDERR is None:
        _REAL_STDERR = open(os.dup(2), "w", buffering=1, encoding=python_stderr.encoding or "utf-8",
                            errors="backslashreplace")
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    sys.stderr = _REAL_STDERR
    try:
        yield
    finally:
        _REAL_STDERR.flush()
        sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)



# Set beside the TF_CPP_MIN_LOG_LEVEL the CLI chose: a tfafm process it starts (`tfafm import` rerunning itself
# under Keras 2) inherits both and hides TensorFlow's start-up notes too, as it would for a level the user set.
_CLI_CHOSE_TF_LOG_LEVEL = "TFAFM_CLI_CHOSE_TF_LOG_LEVEL"


def _quiets_tensorflow() -> bool:
    """Whether the CLI chooses TensorFlow's logging: not when the user set it, or TensorFlow is loaded."""
    user_level = "TF_CPP_MIN_LOG_LEVEL" in os.environ and os.environ.get(_CLI_CHOSE_TF_LOG_LEVEL) != "1"
    return not user_level and "tensorflow" not in sys.modules


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``tfafm`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or an argument error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        _check_and_fill(args)
    except UsageError as error:
        print(f"tfafm {args.command}: error: {error} (see tfafm {args.command} --help)", file=sys.stderr)
        return 2
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        cli = _import_cli()
    except KeyboardInterrupt:
        print(f"tfafm {args.command}: interrupted", file=sys.stderr)
        return 130
    except _StoppedWhileLoading:
        print(f"tfafm {args.command}: terminated by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    return cli.run(args)


def console() -> NoReturn:
    """The ``tfafm`` console script (and ``python -m tfafm_cli``): :func:`main`, then the process ends as
    soon as its output is flushed (``os._exit``), without Python's shutdown. TensorFlow threads still
    running there (a tf.data generator's, after a failed read) hung the shutdown now and then after the
    command had answered (2 runs of 10 of a ``tfafm eval`` refusing an id, on a loaded machine)."""
    try:
        code = main()
    except BaseException:  # noqa: BLE001 -- a bug: its traceback, exit code 1, as Python would
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr, _REAL_STDERR):
        with contextlib.suppress(Exception):  # a closed pipe (tfafm ... | head) has nothing left to say
            if stream is not None:
                stream.flush()
    os._exit(code)


class _StoppedWhileLoading(BaseException):
    """SIGTERM while TensorFlow loads, before the command's own handler is in place."""


def _import_cli():
    """``tfafm.cli`` (TensorFlow with it: seconds), a SIGTERM meanwhile raising :class:`_StoppedWhileLoading`;
    TensorFlow's native start-up notes hidden where the CLI chooses its logging."""
    def stop(signum, frame):
        raise _StoppedWhileLoading()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: Python cannot install a handler there
        previous = None
    try:
        if not _quiets_tensorflow():
            from tfafm import cli
        else:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
            os.environ[_CLI_CHOSE_TF_LOG_LEVEL] = "1"
            with native_stderr_silenced():
                from tfafm import cli
                import tensorflow as tf

                # Finds the devices now, while its notes are hidden: on a machine without a GPU driver, TensorFlow
                # would print "failed call to cuInit" as an error line when a command first runs an op.
                tf.config.list_physical_devices()
        return cli
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    console()
