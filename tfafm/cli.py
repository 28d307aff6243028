"""The ``tfafm`` commands: train, eval, compress, export, bench, demo.

:mod:`tfafm_cli` parses and checks the arguments (without TensorFlow) and calls
:func:`run`. Output conventions: results on stdout (never wrapped when stdout
is not a terminal), progress and notes on stderr (none with ``--quiet``), a
:class:`~tfafm.errors.UserError` as one line on stderr with exit code 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from typing import Callable, Optional, Sequence

from tfafm.errors import MissingFileError, UserError
from tfafm.io_utils import Destination
from tfafm_choices import WITH_OPTIONS

EXPORT_KINDS = {"litert": "tflite", "onnx": "onnx", "saved_model": "saved_model"}


# ----------------------------------------------------------------------------- output


class Output:
    """Where a command's results and notes go, honouring ``--quiet`` and whether stdout is a terminal."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.terminal = sys.stdout.isatty()

    def note(self, text: str) -> None:
        """A progress note on stderr (not with ``--quiet``)."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def result(self, text: str) -> None:
        """Plain result text (markdown, JSON) on stdout, never wrapped."""
        print(text, flush=True)

    def table(self, renderable) -> None:
        """A rich renderable on stdout; as wide as needed when stdout is not a terminal."""
        from rich.console import Console

        Console(file=sys.stdout, width=None if self.terminal else 10_000).print(renderable)

    @property
    def keras_verbose(self) -> int:
        """Keras ``fit`` verbosity: a live bar on a terminal, one line per epoch in logs, nothing if quiet."""
        return 0 if self.quiet else 1 if self.terminal else 2

    def report_format(self, chosen: Optional[str]) -> str:
        return chosen or ("table" if self.terminal else "md")


def _metrics_rows(rows: dict[str, dict[str, float]]) -> list[list[str]]:
    """One row of cells per model (or output)."""
    return [[name, f"{m['auc']:.4f}", f"{m['logloss']:.4f}", f"{m['rows']:,}"] for name, m in rows.items()]


def _show_metrics(out: Output, title: str, rows: dict[str, dict[str, float]], fmt: Optional[str] = None) -> None:
    """Metrics per model as a rich table (on a terminal), a markdown table (in files and pipes) or JSON."""
    fmt = fmt or out.report_format(None)
    header = ["model", "AUC", "LogLoss", "rows"]
    if fmt == "json":
        out.result(json.dumps({"title": title, "models": rows}, indent=2))
    elif fmt == "md":
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "| --- | ---: | ---: | ---: |"]
        out.result("\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in _metrics_rows(rows)]))
    else:
        from rich.table import Table

        table = Table(title=title)
        for column in header:
            table.add_column(column, justify="left" if column == "model" else "right")
        for cells in _metrics_rows(rows):
            table.add_row(*cells)
        out.table(table)


# ----------------------------------------------------------------------------- inputs


def _data_paths(spec: Optional[str]) -> list[str]:
    """The files a data spec reads (none for synthetic data)."""
    prefix, _, rest = (spec or "").partition(":")
    if prefix in WITH_OPTIONS:  # parquet, csv, tfrecord: options after the path (csv's were read as part of it)
        rest = rest.partition("?")[0]
    return [p for p in rest.split(",") if p] if prefix != "synthetic" else []


def _compressed_on(run) -> Optional[str]:
    """The data a model tfafm did not train was compressed on, where its run records it by absolute paths that
    all still exist: its export is checked on those rows when --data is not given (generated rows know nothing
    of, say, a raw count's magnitude)."""
    recorded = run.info.get("data") if run.reads_keyed_data else None
    paths = _data_paths(recorded) if isinstance(recorded, str) else []
    return recorded if paths and all(os.path.isabs(p) and os.path.isfile(p) for p in paths) else None


def _run_data(run, spec: Optional[str]) -> str:
    """``spec``, or the data the run was trained on."""
    if spec:
        return spec
    trained_on = run.info.get("data")
    if not isinstance(trained_on, str) or not trained_on:
        raise UserError(f"{run.path}/run.json names no training data; pass --data.")
    return trained_on


def _load_schema(path: str):
    from tfafm.runs import load_json_file
    from tfafm.schema import Schema

    return load_json_file(path, Schema.load)


def _schema_near(path: str, models: Sequence[str] = ()):
    """The schema.json of a run directory, of the folder holding an exported file (or its parent), or of
    the run an export's default name comes from (``RUN.onnx``, ``RUN-dynamic.tflite`` beside ``RUN/``);
    else the interface read off a Keras model: ``path``'s own, its run's, or the first among ``models``."""
    from tfafm.runs import SCHEMA_FILE

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    # tfafm export's default outputs sit beside their run: RUN.onnx, RUN.saved_model, RUN-dynamic.tflite
    stem = os.path.splitext(os.path.abspath(path.rstrip(os.sep)))[0]
    runs = [stem] + [stem[:-len(suffix)] for suffix in ("-float16", "-dynamic", "-int8") if stem.endswith(suffix)]
    for candidate in (os.path.join(folder, SCHEMA_FILE), os.path.join(os.path.dirname(folder), SCHEMA_FILE),
                      *(os.path.join(run, SCHEMA_FILE) for run in runs)):
        if os.path.isfile(candidate):
            return _load_schema(candidate)
    keras_model = next((m for m in [path, *runs, *models]
                        if m.endswith(".keras") or os.path.isfile(os.path.join(m, "model.keras"))), None)
    if keras_model is not None:
        from tfafm.export.signature import interface
        from tfafm.runs import load_source

        return interface(load_source(keras_model).model)
    raise MissingFileError(f"No schema.json next to {path}; pass --schema run/schema.json.")


# ----------------------------------------------------------------------------- commands


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


def cmd_train(args, out: Output) -> int:
    from tfafm import models
    from tfafm.training import train

    config = _train_config(args)
    if config.model not in models.available():
        raise UserError(f"Unknown model {config.model!r}; available: {', '.join(models.available())}.")
    from tfafm.distribute import cluster_size, cluster_strategy, is_chief

    chief, workers = is_chief(), cluster_size()
    destination = Destination(args.out, "run", overwrite=args.overwrite,
                              sources=[*_data_paths(args.data), args.config or ""]) if chief else None
    if workers > 1:  # everything is checked before waiting for the other tasks
        from tfafm.training import check_cluster_data

        check_cluster_data(args.data, workers)
        out.note(f"Waiting up to {args.cluster_timeout:g} s for the other {workers - 1} task(s) of the cluster")
        cluster_strategy(timeout_seconds=args.cluster_timeout, startup_timeout=args.cluster_timeout)
        _stop_on_sigterm()  # TensorFlow's coordination service took SIGTERM over while starting
    if not chief:  # a worker of a cluster (TF_CONFIG): trains with the others, writes nothing
        train(config, args.data, verbose=0)
        out.result(f"Worker done; the chief writes {args.out}")
        return 0
    out.note(f"Training {config.model} on {args.data} for up to {config.epochs} epoch(s)")
    with destination.staged() as staged:
        result = train(config, args.data, out=staged, skip_bad_lines=args.skip_bad_lines,
                       verbose=out.keras_verbose)
    out.result(result.bundle.description)
    _show_metrics(out, f"{config.model}: validation", {config.model: result.metrics})
    out.result(f"Saved run to {args.out} ({result.model.count_params():,} parameters)")
    return 0


def _require_data(run, args) -> str:
    """``--data``, or the data a run was trained on; a .keras file has none of its own."""
    if args.data:
        return args.data
    if run.reads_keyed_data:
        raise UserError(f"{args.run} is a model tfafm did not train: pass --data with its data, e.g. "
                        "--data parquet:events.parquet?label=click (columns named like the model's inputs)")
    return _run_data(run, None)


def cmd_eval(args, out: Output) -> int:
    from tfafm.runs import load_source

    run = load_source(args.run)
    spec = _require_data(run, args)
    fmt = out.report_format(args.report_format)
    if run.reads_keyed_data:
        from tfafm.metrics import predict_outputs, scores, warn_if_labels_look_paired_wrongly
        from tfafm.model_data import keyed_for

        data = keyed_for(run.model, spec, run.config.batch_size, labels_required=True)
        out.note(f"Evaluating {args.run} on {spec}")
        try:
            with data.errors_raised():
                outputs, labels = predict_outputs(run.model, data.dataset())
            warn_if_labels_look_paired_wrongly(run.model, outputs, labels)
            rows = {name: scores(labels[name], outputs[name]) for name in outputs}
        except UserError as error:  # an empty file, one class only: name the data
            raise UserError(f"{spec}: {_one_line(error)}") from None
        description, where = data.description, spec
    else:
        from tfafm.metrics import evaluate

        bundle = run.load_data(spec, skip_bad_lines=args.skip_bad_lines, evaluation_only=args.data is not None)
        where = spec if args.data else f"the validation split of {spec}"
        out.note(f"Evaluating {args.run} on {where}")
        rows, description = {run.model.name: evaluate(run.model, bundle.validation)}, bundle.description
    if fmt != "json":
        out.result(description)
    _show_metrics(out, f"{args.run} on {where}", rows, fmt)
    return 0


def cmd_compress(args, out: Output) -> int:
    from tfafm.compression.api import check_inner_activation
    from tfafm.pipeline import compress_run, load_run_data
    from tfafm.runs import load_source
    from tfafm.training import FINE_TUNE_MIN_Z

    check_inner_activation(args.inner_activation, "--inner-activation")
    run = load_source(args.run)
    data = _require_data(run, args)
    destination = Destination(args.out, "run", overwrite=args.overwrite,
                              sources=[args.run, *_data_paths(data), *_data_paths(args.validation)])
    needs_labels = args.max_auc_drop is not None or args.finetune_epochs > 0
    run_data = load_run_data(run, data, args.validation, skip_bad_lines=args.skip_bad_lines,
                             labels_required=needs_labels)
    if needs_labels and run_data.validation is None:
        raise UserError("--max-auc-drop and --finetune-epochs need labels: name the label column(s) with "
                        "?label=COLUMN in --data")
    method = "AFM (or SVD where it validates better)" if args.method == "auto" else args.method.upper()
    out.note(f"Compressing {args.run} with {method} on {run_data.description}")
    with destination.staged() as staged:
        result = compress_run(
            run, run_data, out=staged, method=args.method, target_ratio=args.ratio, energy=args.energy,
            max_auc_drop=args.max_auc_drop, objective=args.objective, criterion=args.criterion,
            first_order=args.first_order, id_coverage=args.id_coverage,
            quantization=None if args.quantization == "float32" else args.quantization,
            inner_activation=args.inner_activation, finetune_epochs=args.finetune_epochs,
            finetune_from=args.finetune_from,
            calibration_steps=args.calibration_steps, verbose=out.keras_verbose,
        )
    out.result(result.report.to_markdown())
    tuned = result.metrics.get("finetuned")
    if result.metrics:
        outputs = ((result.report.accuracy or {}).get("validation") or {}).get("outputs", {})
        scored = [name for name, row in outputs.items() if row["original"] is not None]
        rows = dict(result.metrics)
        if tuned is not None and not tuned["kept"] and out.report_format(None) != "json":
            # the weights tried, not the compressed ones saved instead (JSON keeps its keys, with "kept")
            rows["finetuned (discarded)"] = {**rows.pop("finetuned"), **tuned["tuned"]}
        _show_metrics(out, "validation" if len(outputs) <= 1 else
                      f"validation, output {scored[0]!r} (every output: the accuracy table above)", rows)
    if tuned is not None:
        gains = tuned.get("outputs") or {"": tuned}
        measured = "; ".join(f"{name + ' ' if name else ''}{g['auc_gain']:+.4f}, z = "
                             + ("n/a" if g["gain_z"] is None else f"{g['gain_z']:.2f}") for name, g in gains.items())
        out.result(f"Fine-tuning {'kept' if tuned['kept'] else 'discarded (the compressed weights are kept)'}: "
                   f"validation AUC {measured} (kept from {FINE_TUNE_MIN_Z} on the first output, no output "
                   f"below -{FINE_TUNE_MIN_Z})")
    out.result(f"Saved compressed run to {args.out}")
    return 0


def _export_data(run, args):
    """Rows to verify the export on and, for full int8, its representative data (None, None without)."""
    spec = args.data or _compressed_on(run) or (
        _run_data(run, None) if args.quantization == "int8" and not run.reads_keyed_data else None)
    if spec is None:
        if args.quantization == "int8":
            raise UserError(f"--quantization int8 needs representative data: pass --data for {args.run}")
        return None, None
    if run.reads_keyed_data:
        from tfafm.model_data import keyed_for

        return keyed_for(run.model, spec, 256).dataset(), spec
    bundle = run.load_data(spec, evaluation_only=False) if not args.data else run.load_data(spec)
    return (bundle.train if bundle.train is not None else bundle.validation), spec


def cmd_export(args, out: Output) -> int:
    from tfafm import export
    from tfafm.runs import load_source

    run = load_source(args.run)
    rows, spec = _export_data(run, args)
    destination = Destination(args.out, EXPORT_KINDS[args.format], overwrite=args.overwrite,
                              sources=[args.run, *_data_paths(spec)])
    out.note(f"Exporting {args.run} to {args.format}")
    with destination.staged() as staged:
        if args.format == "litert":
            # Fused inside the export, so that the file is checked against the run's own model.
            notes: list[str] = []
            export.litert(run.model, staged, quantization=args.quantization, representative_data=rows,
                          fuse=not args.no_fuse, schema=run.schema, verification_data=rows, fusion_notes=notes)
            for note in notes:
                out.note(f"fusion: {note}")
        elif args.format == "saved_model":
            export.saved_model(run.model, staged, verification_data=rows)
        else:
            export.onnx(run.model, staged, opset=args.opset, verification_data=rows)
    if args.format == "litert":
        ops = export.litert_ops(args.out)
        out.result(f"LiteRT ops ({len(ops)}): {', '.join(sorted(set(ops)))}")
    checked = ("generated rows inside each input's range; --data checks it on your rows" if not spec else
               spec if args.data else f"{spec}, the data it was compressed on")
    out.result(f"Wrote {args.out} (loaded and checked against the Keras model on {checked})")
    return 0


def cmd_bench(args, out: Output) -> int:
    from tfafm.export.bench import add_ratios, benchmark, display_names, model_kind, results_table

    for path in args.models:
        model_kind(path)  # every model is checked before the first one is measured
    # Each model is fed rows of its own inputs and id ranges: --schema, else what the file says about itself
    # (tfafm's .tflite files describe their inputs), else the schema.json of its run.
    schemas = {path: _load_schema(args.schema) if args.schema else _bench_schema(path, args.models)
               for path in args.models}
    rows = []
    for path, name in zip(args.models, display_names(args.models)):
        out.note(f"Measuring {path} (threads {', '.join(map(str, args.threads))}; "
                 f"batch sizes {', '.join(map(str, args.batch_sizes))})")
        rows += benchmark([path], schemas[path], batch_sizes=args.batch_sizes, threads=args.threads,
                          iterations=args.iterations, max_seconds=args.max_seconds, names=[name])
    if args.report_format == "json":
        out.result(json.dumps(add_ratios(rows), indent=2))
    else:
        out.result(results_table(rows))
    return 0


def _bench_schema(path: str, models: Sequence[str]):
    """The inputs ``tfafm bench`` feeds the model at ``path``: those its .tflite file describes, else the
    schema of its run, else a Keras model's inputs (:func:`_schema_near`)."""
    from tfafm.export.litert_file import read_interface

    if path.endswith(".tflite") and os.path.isfile(path):
        try:
            description = read_interface(path)
        except Exception:  # any parse failure: not a flatbuffer at all
            raise UserError(f"Cannot benchmark {path}: not a valid LiteRT file (empty, truncated or another "
                            "format).") from None
        if description is not None:
            return description
    return _schema_near(path, models)


def cmd_inspect(args, out: Output) -> int:
    from tfafm.compression.inspect import inspect_model, inspection_markdown
    from tfafm.runs import load_source

    inspection = inspect_model(load_source(args.run).model)
    out.result(json.dumps(inspection, indent=2) if args.report_format == "json" else inspection_markdown(inspection))
    return 0


def cmd_prepare(args, out: Output) -> int:
    from tfafm.data import Preprocessor
    from tfafm.data.prepare import prepare_spec
    from tfafm.runs import PREPROCESSOR_FILE, load_json_file

    Destination(args.out, "data-cache", overwrite=args.overwrite,
                sources=[*_data_paths(args.data), args.preprocessor or ""])
    preprocessor = None
    if args.preprocessor:
        path = args.preprocessor
        path = os.path.join(path, PREPROCESSOR_FILE) if os.path.isdir(path) else path
        preprocessor = load_json_file(path, Preprocessor.load)
    cache, timings = prepare_spec(
        args.data, args.out, validation_fraction=args.validation_fraction, min_count=args.min_count,
        max_vocabulary=args.max_vocabulary, preprocessor=preprocessor, skip_bad_lines=args.skip_bad_lines,
        shards=args.shards, overwrite=args.overwrite, progress=not args.quiet)
    for timing in timings:
        out.note(str(timing))
    skipped = f", {cache.bad_lines:,} bad lines skipped" if cache.bad_lines else ""
    out.result(f"Wrote {args.out}: {cache.rows('train'):,} training / {cache.rows('validation'):,} validation "
               f"rows in {len(cache.files('train'))} + {len(cache.files('validation'))} shards{skipped}")
    return 0


def cmd_demo(args, out: Output) -> int:
    from tfafm.demo import results_markdown, run_demo

    rows = run_demo(out=args.out, rows=args.rows, ratio=args.ratio, seed=args.seed, overwrite=args.overwrite,
                    say=out.note, verbose=out.keras_verbose)
    out.result(results_markdown(rows))
    out.result(f"Wrote {args.out}: report.md, report.json and tradeoff.png")
    return 0


def cmd_import(args, out: Output) -> int:
    from tfafm.interop.command import run_import_command  # Keras 2 / TFRS models in (issue 12)

    return run_import_command(args, out)


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "train": cmd_train, "eval": cmd_eval, "compress": cmd_compress,
    "export": cmd_export, "bench": cmd_bench, "demo": cmd_demo, "import": cmd_import,
    "prepare": cmd_prepare, "inspect": cmd_inspect,
}


def _one_line(error: BaseException) -> str:
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def _is_data_loss(error: BaseException) -> bool:
    """A TensorFlow ``DataLossError``: a file read through TensorFlow (a cache shard) fails its checksum."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.DataLossError)


def _tensorflow_message(error: BaseException) -> str:
    """The cause in a TensorFlow error's message: its last line that is not the graph node it ran in."""
    lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines()
             if line.strip() and not line.strip().startswith("[[")]
    return lines[-1] if lines else type(error).__name__


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler stopping the job): unwinds like KeyboardInterrupt, so temporary
    outputs are removed on the way out."""


# Set when SIGTERM arrives: third-party code with a bare ``except:`` (TensorFlow's dtype limits, for one) can
# turn the Terminated it raised into another error, or swallow it; the command is stopped all the same.
_SIGNALLED: list[str] = []
_RUNNING: list[threading.Event] = []  # per command run() is running: set once it has returned


def _raise_terminated(signum, frame) -> None:
    if not _SIGNALLED and _RUNNING:  # until the command has unwound, the signal comes again
        threading.Thread(target=_redeliver_while_running, args=(_RUNNING[-1],), daemon=True).start()
    elif _unwinding_from_termination():
        return  # a repeat landing in a clean-up the first one runs (removing a temporary output) would cut it short
    _SIGNALLED.append(signal.Signals(signum).name)
    raise Terminated(signal.Signals(signum).name)


def _unwinding_from_termination() -> bool:
    """True while a :class:`Terminated` (or an error raised while handling one) unwinds the main thread: the
    exception being handled there, or one it was raised during, is a Terminated."""
    error, seen = sys.exc_info()[1], set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Terminated):
            return True
        seen.add(id(error))
        error = error.__context__
    return False


def _redeliver_while_running(running: threading.Event) -> None:
    """Delivers SIGTERM to the main thread again every REDELIVERY_DELAY_S while the command runs: where
    third-party code swallowed the first :class:`Terminated` (a bare ``except:``), a later one lands where
    it unwinds the command. Once :func:`run` returns the handler is the previous one, and Python ignores
    a simulated signal it does not handle."""
    import _thread

    while not running.wait(REDELIVERY_DELAY_S):  # set when that command's run() has returned
        _thread.interrupt_main(signal.SIGTERM)


REDELIVERY_DELAY_S = 0.1


def _redelivering_termination(previous_hook: Callable) -> Callable:
    """A ``sys.unraisablehook`` for the time a command runs. A signal handler's exception raised while a
    finalizer or a weakref callback runs is dropped by Python ("Exception ignored in ..."): a dropped
    :class:`Terminated` is dropped silently, the redelivery that the first SIGTERM started
    (:func:`_redeliver_while_running`) landing where it unwinds the command. The hook does nothing that
    waits (it started a timer thread, and a redelivery landing while it waited for that thread printed
    "Exception ignored in sys.unraisablehook" and a traceback). Anything else goes to ``previous_hook``."""

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, Terminated):
            previous_hook(unraisable)

    return hook


def _stop_on_sigterm():
    """Makes SIGTERM raise :class:`Terminated` in the main thread; returns the handler it replaced
    (None outside the main thread, where Python cannot install one)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        return None


@contextlib.contextmanager
def _python_logs_quiet(quiet: bool):
    """With ``quiet`` (--quiet), absl's and TensorFlow's Python loggers print errors only (Keras,
    tf_keras and the converters warn through them), until the command returns."""
    import logging

    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")] if quiet else []
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _import_user_modules(names: list[str]) -> None:
    """Imports each ``--import`` module (a dotted name, looked up from the current directory first, or
    a ``.py`` file), so that the custom layers it registers load with the user's model."""
    import importlib
    import importlib.util

    for name in names:
        try:
            if name.endswith(".py"):
                if not os.path.isfile(name):
                    raise UserError(f"--import {name}: no such file")
                spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(name))[0], name)
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
            else:
                if os.getcwd() not in sys.path:
                    sys.path.insert(0, os.getcwd())
                importlib.import_module(name)
        except UserError:
            raise
        except ModuleNotFoundError as error:
            raise UserError(f"--import {name}: {error} (run from the folder that holds it, set PYTHONPATH, or give "
                            "the .py file)") from None
        except Exception as error:  # the user's module failed while importing
            raise UserError(f"--import {name}: importing it raised {type(error).__name__}: "
                            f"{_one_line(error)}") from None


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _one_line_warning(command: str, previous: Callable) -> Callable:
    """A ``warnings.showwarning`` printing tfafm's own warnings as ``tfafm COMMAND: warning: MESSAGE`` (not
    their source line); other libraries' go to ``previous``, as before."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
            print(f"tfafm {command}: warning: {_one_line(message)}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    return show


def run(args: argparse.Namespace) -> int:
    """Runs the command parsed by :func:`tfafm_cli.build_parser`; returns the exit code.

    SIGTERM (how schedulers stop a job) stops the command like any failure:
    one line on stderr, exit code 143 (128 + 15), no half-written output. The
    handler is restored on return.
    """
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    previous = _stop_on_sigterm()
    previous_unraisablehook = sys.unraisablehook
    sys.unraisablehook = _redelivering_termination(previous_unraisablehook)
    _SIGNALLED.clear()
    finished = threading.Event()
    _RUNNING.append(finished)
    terminated = f"tfafm {args.command}: terminated by SIGTERM"
    try:
        with _python_logs_quiet(args.quiet), warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command, warnings.showwarning)
            _import_user_modules(getattr(args, "imports", []))
            code = COMMANDS[args.command](args, Output(args.quiet))
        if _SIGNALLED:  # swallowed on the way (the outputs were written whole, or not at all)
            print(terminated, file=sys.stderr)
            return 128 + signal.SIGTERM
        return code
    except Terminated:
        print(terminated, file=sys.stderr)
        return 128 + signal.SIGTERM
    except (Exception, KeyboardInterrupt) as error:
        if _SIGNALLED:  # the Terminated came back as another error
            print(terminated, file=sys.stderr)
            return 128 + signal.SIGTERM
        if isinstance(error, KeyboardInterrupt):
            print(f"tfafm {args.command}: interrupted", file=sys.stderr)
            return 130
        if isinstance(error, UserError):
            print(f"tfafm {args.command}: error: {_one_line(error)}", file=sys.stderr)
            return 2
        if not _is_data_loss(error):
            raise
        print(f"tfafm {args.command}: error: a data file is corrupt ({_tensorflow_message(error)}): a record no "
              "longer matches its checksum; if it is a cache shard, rebuild the cache with tfafm prepare",
              file=sys.stderr)
        return 2
    finally:
        finished.set()  # stops its redeliveries, then a redelivery still pending meets the previous handler
        _RUNNING.remove(finished)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_unraisablehook
