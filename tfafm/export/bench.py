"""Latency, throughput, file size and peak memory of exported models.

:func:`benchmark` measures ``.tflite`` files, ``.onnx`` files, SavedModel
directories and Keras models (a ``.keras`` file, a run directory holding
``model.keras``, or an in-memory ``keras.Model``). Each model runs in a fresh
Python subprocess (this file executed as a script), so its peak resident
memory (``VmHWM``) is its own: the LiteRT and ONNX workers import neither
TensorFlow nor tfafm, the SavedModel and Keras workers do (their peak includes
the TensorFlow runtime). Inputs are realistic rows drawn from the schema:
Zipf-distributed ids inside each vocabulary (never the OOV id 0) and dense
values ``log1p`` of log-normal counts.

Usage::

    rows = benchmark(["a.tflite", "b.tflite"], schema, batch_sizes=(1, 256), threads=(1,))
    print(results_table(rows))
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Mapping, Sequence

import numpy as np

_RESULT_PREFIX = "TFAFM_BENCH_RESULT "


# ----------------------------------------------------------------------------- inputs


def interface_dict(description) -> dict:
    """An interface dict (see :mod:`tfafm.export.signature`) from a Schema, an Interface, a schema
    dict (``{"features": ...}``) or an interface dict."""
    if hasattr(description, "to_dict") and hasattr(description, "outputs"):
        return description.to_dict()
    if hasattr(description, "sparse"):  # a Schema
        from tfafm.export.signature import Interface

        return Interface.from_schema(description).to_dict()
    if "features" in description:
        inputs = [
            {"name": f["name"], "dtype": "int32", "shape": [1], "vocabulary_size": int(f["vocabulary_size"])}
            if f["type"] == "sparse" else {"name": f["name"], "dtype": "float32", "shape": [1]}
            for f in description["features"]
        ]
        return {"format": "tfafm-interface", "version": 1, "inputs": inputs, "outputs": ["prediction"]}
    return dict(description)


def _zipf_ids(rng: np.random.Generator, vocabulary: int, shape: tuple, exponent: float) -> np.ndarray:
    if vocabulary < 2:
        return np.zeros(shape, np.int32)
    cdf = np.cumsum(np.arange(1, vocabulary, dtype=np.float64) ** -exponent)
    ids = np.searchsorted(cdf / cdf[-1], rng.random(shape), side="right") + 1
    return np.minimum(ids, vocabulary - 1).astype(np.int32)


def sample_features(description, rows: int, seed: int = 0, zipf_exponent: float = 1.1) -> dict[str, np.ndarray]:
    """``rows`` realistic input rows for a model described by ``description`` (a Schema, an
    Interface or their dicts).

    Integer ids follow a Zipf law over ``[1, vocabulary_size)`` (an input of
    unknown vocabulary gets ids 0 and 1); float values are
    ``log1p(1 + floor(lognormal))``, so no value is zero.
    """
    rng = np.random.default_rng(seed)
    features = {}
    for spec in interface_dict(description)["inputs"]:
        shape = (rows, *spec["shape"])
        if spec["dtype"].startswith("int"):
            ids = _zipf_ids(rng, int(spec.get("vocabulary_size") or 2), shape, zipf_exponent)
            features[spec["name"]] = ids.astype(spec["dtype"])
        elif spec["dtype"] == "string":  # tokens a lookup layer inside the model maps
            features[spec["name"]] = np.char.add("v", _zipf_ids(rng, 1000, shape, zipf_exponent).astype(str)).astype(object)
        else:
            counts = 1.0 + np.floor(rng.lognormal(1.0, 1.5, size=shape))
            features[spec["name"]] = np.log1p(counts).astype(np.float32)
    return features


# ----------------------------------------------------------------------------- models


def model_kind(path: str) -> str:
    """``"tflite"``, ``"onnx"``, ``"saved_model"`` or ``"keras"`` for an exported model path.

    Raises:
        MissingFileError: nothing is at ``path``.
        UserError: ``path`` is none of those.
    """
    from tfafm.errors import MissingFileError, UserError

    if not os.path.exists(path):
        raise MissingFileError(f"Cannot benchmark {path}: no such file or directory.")
    if os.path.isfile(path):
        for ext, kind in ((".tflite", "tflite"), (".onnx", "onnx"), (".keras", "keras")):
            if path.endswith(ext):
                return kind
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return "saved_model"
        if os.path.isfile(os.path.join(path, "model.keras")):
            return "keras"
    raise UserError(f"Cannot benchmark {path!r}: expected a .tflite/.onnx/.keras file, a SavedModel "
                    "directory or a run directory with model.keras.")


def _model_file(path: str, kind: str) -> str:
    return os.path.join(path, "model.keras") if kind == "keras" and os.path.isdir(path) else path


def size_bytes(path: str) -> int:
    """File size, or the total size of a directory's files (SavedModel). A run directory is measured by its
    ``model.keras`` (:func:`_model_file`), not its reports and preprocessing files."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _load_sibling(name: str):
    """Imports a module of this package by file path, without importing tfafm (or TensorFlow)."""
    spec = importlib.util.spec_from_file_location(
        f"_tfafm_export_{name}", os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _set_tf_threads(threads: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


class KerasRunner:
    """Calls a saved Keras model through a traced ``tf.function`` on feature-dict batches."""

    def __init__(self, path: str):
        import keras
        import tensorflow as tf

        import tfafm.layers  # noqa: F401  (registers tfafm's custom layers)
        import tfafm.models  # noqa: F401  (and keras_rs's)
        from tfafm.export.signature import as_batch, interface, serving_function

        self._tf = tf
        self._as_batch = as_batch
        self.model = keras.saving.load_model(path, compile=False)
        self.interface = interface(self.model, vocabularies=False)
        self.function = serving_function(self.model)

    @property
    def feature_names(self) -> list[str]:
        return [spec.name for spec in self.interface.inputs]

    def __call__(self, features: Mapping) -> np.ndarray:
        batch = self._as_batch(features, self.interface.inputs)
        outputs = self.function({name: self._tf.constant(value) for name, value in batch.items()})
        return outputs[self.interface.outputs[0]].numpy()


def open_runner(kind: str, path: str, threads: int = 1):
    """A callable ``runner(features) -> probabilities`` for an exported model."""
    if kind == "tflite":
        return _load_sibling("litert_file").LiteRTRunner(path, num_threads=threads)
    if kind == "onnx":
        return _load_sibling("onnx_export").OnnxRunner(path, num_threads=threads)
    _set_tf_threads(threads)
    if kind == "saved_model":
        return _load_sibling("saved_model_export").SavedModelRunner(path)
    if kind == "keras":
        return KerasRunner(_model_file(path, kind))
    raise ValueError(f"Unknown model kind {kind!r}.")


# ----------------------------------------------------------------------------- measuring


def measure(runner, batches: Sequence[Mapping], warmup: int, iterations: int, max_seconds: float) -> dict:
    """Times ``runner`` over ``batches`` (cycled): p50/p99 latency in ms and rows per second.

    For LiteRT the timed part is ``invoke()``: the inputs are copied in
    beforehand, untimed, because the Python binding's per-input copy (a
    microsecond or so for each of dozens of inputs) would otherwise dominate
    batch-1 figures and is not what a mobile runtime pays.
    """
    split = hasattr(runner, "set_inputs") and hasattr(runner, "invoke")
    for i in range(warmup):
        runner(batches[i % len(batches)])
    rows = len(next(iter(batches[0].values())))
    times, start = [], time.perf_counter()
    for i in range(iterations):
        batch = batches[i % len(batches)]
        if split:
            runner.set_inputs(batch)
        t0 = time.perf_counter()
        runner.invoke() if split else runner(batch)
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 and time.perf_counter() - start > max_seconds:
            break
    ms = np.asarray(times) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput_rps": float(rows * len(ms) / (ms.sum() / 1e3)),
        "iterations": len(ms),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (``VmHWM``, else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


_KIND_NAMES = {"tflite": "LiteRT", "onnx": "ONNX", "saved_model": "SavedModel", "keras": "Keras"}


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _open_checked(job: dict):
    """The job's runner, or ``(None, reason)`` when the model cannot be loaded or does not fit the schema."""
    try:
        runner = open_runner(job["kind"], job["path"], job["threads"])
    except Exception as error:  # the file is not a loadable model of its kind
        return None, f"cannot load it as a {_KIND_NAMES[job['kind']]} model ({_first_line(error)})"
    names = {spec["name"] for spec in job["schema"]["inputs"]}
    missing = sorted(set(runner.feature_names) - names)
    if missing:
        more = " ..." if len(missing) > 5 else ""
        return None, f"it takes inputs the schema lacks: {', '.join(missing[:5])}{more}"
    try:
        runner(sample_features(job["schema"], 1, seed=job["seed"]))
    except Exception as error:  # the schema's inputs do not fit the model
        return None, f"it does not run on inputs drawn from the schema ({_first_line(error)})"
    return runner, None


def _worker(job: dict) -> dict:
    runner, problem = _open_checked(job)
    if problem is not None:
        return {"error": problem}
    results = {}
    for batch_size in job["batch_sizes"]:
        batches = [
            sample_features(job["schema"], batch_size, seed=job["seed"] + i) for i in range(job["distinct_batches"])
        ]
        results[str(batch_size)] = measure(runner, batches, job["warmup"], job["iterations"], job["max_seconds"])
    ops = len(_load_sibling("litert_file").litert_ops(job["path"])) if job["kind"] == "tflite" else None
    return {"results": results, "peak_rss_mb": peak_rss_mb(), "ops": ops}


def _run_worker(job: dict, timeout: float) -> dict:
    """Runs one measuring process.

    Raises:
        UserError: the model cannot be loaded, does not fit the schema, crashes
            the runtime or runs past ``timeout`` (the message names the file).
        RuntimeError: the worker failed otherwise (a bug; its traceback included).
    """
    from tfafm.errors import UserError

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    try:
        process = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            input=json.dumps(job), capture_output=True, text=True, timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"Benchmark of {job['path']} ran longer than {timeout:g} s; lower --iterations "
                        "or --max-seconds.") from None
    for line in process.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            outcome = json.loads(line[len(_RESULT_PREFIX):])
            if "error" in outcome:
                raise UserError(f"Cannot benchmark {job['path']}: {outcome['error']}.")
            return outcome
    if process.returncode < 0:
        raise UserError(f"Cannot benchmark {job['path']}: the {_KIND_NAMES[job['kind']]} runtime crashed "
                        f"(signal {-process.returncode}); is it a valid, complete model file?")
    raise RuntimeError(
        f"Benchmark worker for {job['path']} failed (exit {process.returncode}):\n{process.stderr[-3000:]}"
    )


# ----------------------------------------------------------------------------- API


def _targets(paths_or_models, names, tmp: str) -> list[tuple[str, str, str]]:
    """``(name, kind, path)`` per item; in-memory Keras models are saved under ``tmp`` first."""
    from tfafm.errors import UserError

    names = list(names) if names else display_names(paths_or_models)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"benchmark: names must differ (each row and ratio is keyed by its name): {repeated} "
                        "given more than once.")
    targets = []
    for i, item in enumerate(paths_or_models):
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            kind = model_kind(path)
        else:
            path = os.path.join(tmp, f"model_{i}.keras")
            item.save(path)
            kind = "keras"
        targets.append((names[i], kind, path))
    return targets


def display_names(paths_or_models: Sequence) -> list[str]:
    """The name of each model in a benchmark's rows: its file or directory name (``model.name`` in
    memory); where those repeat (``run1/model.keras`` and ``run2/model.keras``), its path as given, and
    a number where that repeats too. Rows and ratios are keyed by these names."""
    base = [os.path.basename(os.path.normpath(os.fspath(item))) if isinstance(item, (str, os.PathLike))
            else item.name for item in paths_or_models]
    fuller = [os.path.normpath(os.fspath(item)) if base.count(name) > 1 and isinstance(item, (str, os.PathLike))
              else name for item, name in zip(paths_or_models, base)]
    seen: dict[str, int] = {}
    names = []
    for name in fuller:
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return names


def described_interface(paths: Sequence) -> dict:
    """The interface described by the first ``.tflite`` file among ``paths`` that carries one."""
    from tfafm.errors import UserError

    for path in paths:
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).endswith(".tflite") and os.path.isfile(path):
            try:
                description = _load_sibling("litert_file").read_interface(os.fspath(path))
            except Exception as error:  # any parse failure: not a flatbuffer at all
                raise UserError(f"Cannot benchmark {os.fspath(path)}: not a valid LiteRT file "
                                f"({type(error).__name__}).") from None
            if description is not None:
                return description

    raise UserError("None of the models describes its inputs (a .tflite written by tfafm does): give a schema "
                    "(e.g. --schema run/schema.json).")


def _check_options(batch_sizes, threads, iterations, warmup, max_seconds, distinct_batches) -> None:
    """Raises a :class:`UserError` naming the first option that cannot give a measurement."""
    from tfafm.errors import UserError

    counts = {"batch_sizes": (list(batch_sizes), 1), "threads": (list(threads), 1), "iterations": ([iterations], 1),
              "warmup": ([warmup], 0), "distinct_batches": ([distinct_batches], 1)}
    for name, (values, least) in counts.items():
        if not values or not all(isinstance(v, (int, np.integer)) and v >= least for v in values):
            raise UserError(f"benchmark: {name} must be integers >= {least}, got {values}.")
    if not max_seconds > 0:
        raise UserError(f"benchmark: max_seconds must be positive, got {max_seconds!r}.")


def benchmark(
    paths_or_models: Sequence,
    schema=None,
    batch_sizes: Sequence[int] = (1, 256),
    threads: Sequence[int] = (1, os.cpu_count() or 1),
    warmup: int = 10,
    iterations: int = 200,
    max_seconds: float = 10.0,
    names: Sequence[str] | None = None,
    seed: int = 0,
    distinct_batches: int = 4,
    timeout: float = 900.0,
) -> list[dict]:
    """Measures every model at every batch size and thread count.

    Args:
        paths_or_models: ``.tflite`` / ``.onnx`` / ``.keras`` files, SavedModel
            directories, run directories holding ``model.keras``, or
            ``keras.Model`` objects.
        schema: what the models take (a :class:`~tfafm.Schema` or an
            :class:`~tfafm.export.Interface`); inputs are drawn from it.
            Default: the interface stored in the first ``.tflite`` file.
        batch_sizes, threads: the grid; each thread count runs in its own process.
        warmup, iterations: calls before / during timing (timing stops early
            after ``max_seconds`` once 10 calls are timed).
        names: display names (default: file or directory name, or ``model.name``).
        distinct_batches: different input batches cycled through while timing.

    Returns:
        One dict per (model, threads, batch size): ``name``, ``kind``, ``path``,
        ``batch_size``, ``threads``, ``size_bytes``, ``p50_ms``, ``p99_ms``,
        ``throughput_rps``, ``iterations``, ``peak_rss_mb`` (the worker
        process's peak over all its batch sizes) and ``ops`` (operators in a
        ``.tflite`` file, else None).
    """
    _check_options(batch_sizes, threads, iterations, warmup, max_seconds, distinct_batches)
    if names is not None and len(names) != len(paths_or_models):
        raise ValueError(f"names has {len(names)} entries for {len(paths_or_models)} models.")
    description = described_interface(paths_or_models) if schema is None else interface_dict(schema)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, path in _targets(paths_or_models, names, tmp):
            for n in dict.fromkeys(int(t) for t in threads):
                job = {
                    "kind": kind, "path": path, "threads": n, "batch_sizes": [int(b) for b in batch_sizes],
                    "warmup": warmup, "iterations": iterations, "max_seconds": max_seconds,
                    "schema": description, "seed": seed, "distinct_batches": distinct_batches,
                }
                outcome = _run_worker(job, timeout)
                for batch_size in batch_sizes:
                    rows.append({
                        "name": name, "kind": kind, "path": path, "batch_size": int(batch_size), "threads": n,
                        "size_bytes": size_bytes(_model_file(path, kind)), **outcome["results"][str(batch_size)],
                        "peak_rss_mb": outcome["peak_rss_mb"], "ops": outcome["ops"],
                    })
    return rows


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("nan")


def add_ratios(rows: Sequence[Mapping]) -> list[dict]:
    """Copies of ``rows`` with ``size_ratio``, ``p50_ratio`` and ``throughput_ratio``.

    Each ratio compares a row to the first model's row at the same batch size
    and thread count (so the first model's ratios are 1.0).
    """
    if not rows:
        return []
    first = rows[0]["name"]
    reference = {(r["batch_size"], r["threads"]): r for r in rows if r["name"] == first}
    out = []
    for r in rows:
        ref = reference.get((r["batch_size"], r["threads"]))
        out.append({
            **r,
            "size_ratio": _ratio(r["size_bytes"], ref["size_bytes"]) if ref else float("nan"),
            "p50_ratio": _ratio(r["p50_ms"], ref["p50_ms"]) if ref else float("nan"),
            "throughput_ratio": _ratio(r["throughput_rps"], ref["throughput_rps"]) if ref else float("nan"),
        })
    return out


def results_table(rows: Sequence[Mapping]) -> str:
    """A markdown table of :func:`benchmark` rows with each model's ratios to the first model."""
    if not rows:
        return "(no results)"
    header = ("| model | format | ops | batch | threads | size KiB | p50 ms | p99 ms | rows/s | peak RSS MiB "
              "| size ratio | p50 ratio | throughput ratio |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in add_ratios(rows):
        lines.append(
            f"| {r['name']} | {r['kind']} | {'-' if r.get('ops') is None else r['ops']} | {r['batch_size']} | {r['threads']} | {r['size_bytes'] / 1024:.1f} "
            f"| {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['throughput_rps']:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {r['size_ratio']:.2f} | {r['p50_ratio']:.2f} | {r['throughput_ratio']:.2f} |"
        )
    return "\n".join(lines)


def _main() -> None:
    # Run as a script, this directory heads sys.path; drop it so that ``onnx`` is the real package.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    job = json.loads(sys.stdin.read())
    outcome = _worker(job)
    sys.stdout.write(_RESULT_PREFIX + json.dumps(outcome) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _main()
