"""LiteRT size and speed of original vs AFM-compressed DeepFM, DCN-V2, AutoInt and xDeepFM.

For each model: train briefly on synthetic Criteo-like data (embedding dim 16,
MLP 400-400-400), compress with ``tfafm.compress(method="afm",
target_ratio=4, objective=--objective)`` on calibration data (first-order weights read from the
embeddings where that costs the predictions less, the default), once per
quantization (ranks counted in that quantization's bytes), export LiteRT
float32 and dynamic-range int8 for the original and the compressed model, then measure file size,
batch-1 single-thread p50 latency and batch-256 single-thread throughput (each
file in a fresh process) and validation AUC. Prints what it measured; asserts
nothing. Full-integer int8 (activations int8 too) is measured beside dynamic int8:
each variant's file verified on held-out rows, or the reason it was refused.

Compressed against original under the same quantization is measured a second
time with the two files interleaved in one process (1 thread): rounds of
calls alternate between them, so a shared machine's drifts hit both alike, and
the ratios come from that one run. The LiteRT op counts (and GATHERs) are
given for the original, the compressed model exported without fusion (one
lookup per field) and the fused compressed file.

Each file's batch-1 latency is also set against this machine's floor: the
weight bytes and FLOPs one request needs at least
(:func:`tfafm.export.request_cost.request_cost`) at the machine's
single-thread cache-resident read bandwidth and float32 matmul peak, both
measured here with numpy (BLAS and OpenMP held to one thread, OpenBLAS free
to pick its own kernel). ``x above floor`` is batch-1 p50 / floor. Per file, the ops
LiteRT's XNNPACK delegate runs and those left to LiteRT's own kernels are listed, and
LiteRT's own profiler times the nodes by op (:mod:`litert_profile`): under XNNPACK
those left to LiteRT's kernels and, for a batch of rows, XNNPACK's own operators, and with
LiteRT's builtin kernels only, every node.

    python benchmarks/bench_export.py [--quick] [--objective both|params|latency] [--out DIR]
                                      [--doc docs/benchmarks.md]   # writes its "export" section there
"""

from __future__ import annotations

import os

# Before numpy loads OpenBLAS: the peak and bandwidth below are single-thread figures, and an
# OPENBLAS_CORETYPE pinned in the environment (e.g. Haswell, for old OpenBLAS builds) would hide
# AVX-512 from the matmul peak that LiteRT's kernels do use.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"
for _variable in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_variable, None)

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

import tfafm  # noqa: E402
from tfafm.data.synthetic import SyntheticCriteo  # noqa: E402
from tfafm.export import LiteRTRunner, litert, litert_ops, xnnpack_partition  # noqa: E402
from tfafm.export.verify import Disagreement  # noqa: E402
from tfafm.export.bench import benchmark, results_table, sample_features  # noqa: E402
from tfafm.export.request_cost import RequestCost, request_cost  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_section  # noqa: E402
import litert_profile  # noqa: E402

BUILDERS = ("deepfm", "dcnv2", "autoint", "xdeepfm")
QUANTIZATIONS = (None, "dynamic")
BANDWIDTH_MIB = 2  # fits the L2 or L3 cache of current CPUs: the read bandwidth is a cache one
MATMUL_N = 256


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer training rows and timing iterations")
    parser.add_argument("--objective", choices=("both", "params", "latency"), default="both",
                        help="the rank allocator's objective (tfafm.compress(objective=...))")
    parser.add_argument("--out", help="directory for the .tflite files (default: a temporary one)")
    parser.add_argument("--doc", help="markdown file whose 'export' section the tables replace")
    return parser.parse_args()


def train_and_compress(name, gen, schema, train_rows, calibration_rows, objective):
    """The trained original and ``{quantization: compressed model}`` (full int8 included)."""
    start = time.time()
    model = tfafm.models.build(name, schema, hidden_units=(400, 400, 400))
    model.compile("adam", "binary_crossentropy")
    model.fit(gen.dataset(train_rows, 256), epochs=1, verbose=0)
    calibration = gen.dataset(calibration_rows, 1024, split="calibration")
    statistics = tfafm.calibrate(model, calibration, progress=False)
    compressed = {}
    for quantization in (*QUANTIZATIONS, "int8"):
        compressed[quantization], report = tfafm.compress(model, calibration, statistics=statistics, method="afm",
                                                      target_ratio=4, objective=objective, quantization=quantization,
                                                      progress=False)
        ranks = [row.rank for row in report.layers if row.kind != "embedding"]
        print(f"{name} ({quantization or 'float32'}): {model.count_params():,} -> {compressed[quantization].count_params():,} "
              f"parameters ({model.count_params() / compressed[quantization].count_params():.2f}x); ranks of the "
              f"non-embedding matrices {ranks}")
    print(f"{name}: trained on {train_rows} rows, calibrated and compressed in {time.time() - start:.0f}s")
    return model, compressed


def export_all(name, model, compressed, out):
    """The benchmarked files, and per quantization the compressed model exported without fusion."""
    files, unfused = {}, {}
    for quantization in QUANTIZATIONS:
        q = quantization or "float32"
        for variant, m in (("original", model), ("compressed", compressed[quantization])):
            label = f"{name}-{variant}-{q}"
            files[label] = litert(m, os.path.join(out, f"{label}.tflite"), quantization=quantization)
        unfused[q] = litert(compressed[quantization], os.path.join(out, f"{name}-unfused-{q}.tflite"),
                            quantization=quantization, fuse=False)
    return files, unfused


def full_integer(name, model, compressed, files, gen, out, verification, features, labels, iterations) -> list[str]:
    """Rows of the full-integer int8 table: each variant exported with int8 activations too (representative
    data: calibration rows; verified on held-out rows), against its dynamic-int8 file, or why it was refused."""
    rows = []
    for variant, m in (("original", model), ("compressed", compressed["int8"])):
        dynamic = files[f"{name}-{variant}-dynamic"]
        try:
            path = litert(m, os.path.join(out, f"{name}-{variant}-int8.tflite"), quantization="int8",
                          representative_data=gen.dataset(2048, 64, split="calibration"),
                          verification_data=verification)
        except Disagreement as error:
            reason = str(error).split(":", 1)[-1].split(". It was not written")[0].strip()
            rows.append(f"| {name} | {variant} | refused: {reason} | | | | |")
            continue
        delegated, fallback = xnnpack_partition(path)
        (dynamic_p50, int8_p50) = [r["p50_ms"] for r in interleaved([dynamic, path], None, 1, rounds=10,
                                                                    calls=iterations, features=verification)]
        aucs = [validation_auc(file, features, labels) for file in (dynamic, path)]
        rows.append(f"| {name} | {variant} | verified | {os.path.getsize(path) / 1024:,.1f} "
                    f"| {len(delegated) + len(fallback)} ({len(delegated)}) "
                    f"| {dynamic_p50:.3f} -> {int8_p50:.3f} ({int8_p50 / dynamic_p50:.2f}) "
                    f"| {aucs[0]:.4f} / {aucs[1]:.4f} |")
    return rows


FULL_INTEGER_HEADER = ("| model | variant | full int8 | size KiB | ops (XNNPACK) | batch-1 p50 ms dynamic -> full int8 "
                       "(ratio) | AUC dynamic / full int8 |")


def interleaved(paths, schema, batch_size: int, rounds: int, calls: int, features=None) -> list[dict]:
    """``p50_ms`` and ``throughput_rps`` of each file at ``batch_size``, 1 thread, timed in alternation.

    Each of ``rounds`` rounds runs ``calls`` timed ``invoke()`` calls of every
    file (inputs copied in untimed, as :func:`tfafm.export.bench.measure`
    does), the order reversed every other round.
    """
    runners = [LiteRTRunner(path, num_threads=1) for path in paths]
    batches = ([sample_features(schema, batch_size, seed=i) for i in range(4)] if features is None else
               [{key: value[i * batch_size:(i + 1) * batch_size] for key, value in features.items()} for i in range(4)])
    times = [[] for _ in runners]
    for runner in runners:  # warm-up
        for batch in batches:
            runner(batch)
    for round_ in range(rounds):
        order = range(len(runners)) if round_ % 2 == 0 else reversed(range(len(runners)))
        for k in order:
            for i in range(calls):
                runners[k].set_inputs(batches[i % len(batches)])
                start = time.perf_counter()
                runners[k].invoke()
                times[k].append(time.perf_counter() - start)
    return [{"p50_ms": float(np.percentile(t, 50)) * 1e3, "throughput_rps": batch_size * len(t) / float(np.sum(t))}
            for t in times]


def validation_auc(path, features, labels):
    return roc_auc_score(labels.ravel(), LiteRTRunner(path)(features).ravel())


def best_seconds(function, repeats: int, rounds: int = 7) -> float:
    """Seconds per call of ``function()``: the best of ``rounds`` rounds of ``repeats`` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def read_bandwidth(mib: int = BANDWIDTH_MIB) -> float:
    """Single-thread read bandwidth in bytes/s over a cache-resident float32 array (``max`` over it:
    numpy's ``sum`` is pairwise and bound by its additions at a third of this rate)."""
    array = np.random.default_rng(0).random(mib << 18, dtype=np.float32)
    return array.nbytes / best_seconds(array.max, repeats=50)


def matmul_peak(n: int = MATMUL_N) -> float:
    """Single-thread float32 matmul rate in FLOP/s (``n x n @ n x n``)."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    out = np.empty_like(a)
    return 2 * n**3 / best_seconds(lambda: np.matmul(a, a, out=out), repeats=50)


def blas_kernel() -> str:
    """The BLAS numpy uses and its kernel, e.g. ``openblas SkylakeX``."""
    kernels = dict.fromkeys(f"{info['internal_api']} {info.get('architecture', '?')}" for info in threadpool_info()
                            if info.get("user_api") == "blas")
    return ", ".join(kernels) or "unknown"


def floor_table(rows, costs: dict[str, RequestCost], floors_us: dict[str, float]) -> str:
    """Per file: ops, weight bytes and FLOPs of a batch-1 request, its floor and batch-1 p50 / floor."""
    header = "| file | ops | weights touched KiB | kFLOP | floor us | batch-1 p50 us | x above floor |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        if r["batch_size"] != 1:
            continue
        cost, floor, p50 = costs[r["name"]], floors_us[r["name"]], r["p50_ms"] * 1e3
        lines.append(f"| {r['name']} | {cost.ops} | {cost.bytes_touched / 1024:.1f} | {cost.flops / 1e3:.1f} "
                     f"| {floor:.2f} | {p50:.1f} | {p50 / floor:.1f} |")
    return "\n".join(lines)


def partition_table(paths) -> str:
    """Per file: how many ops LiteRT's default XNNPACK delegate runs and which are left to LiteRT's kernels."""
    lines = ["| file | ops | run by XNNPACK | left to LiteRT kernels |", "|---|---:|---:|---|"]
    for path in paths:
        delegated, fallback = xnnpack_partition(path)
        left = ", ".join(f"{op} {fallback.count(op)}" for op in sorted(set(fallback), key=lambda o: -fallback.count(o)))
        lines.append(f"| {os.path.basename(path)} | {len(delegated) + len(fallback)} | {len(delegated)} | {left} |")
    return "\n".join(lines)


def profile_table(paths, runs: int) -> str:
    """Per file, from LiteRT's own profiler (:mod:`litert_profile`): microseconds per run of the nodes left to
    LiteRT's kernels under XNNPACK, at batch 1 and 256, of XNNPACK's own operators at batch 256, and of every
    node with LiteRT's builtin kernels only."""
    reason = litert_profile.unavailable()
    if reason:
        return f"(not measured: {reason})"
    lines = ["| file | XNNPACK batch 1: nodes left to LiteRT kernels, us (by op) | XNNPACK batch 256: the same "
             "| XNNPACK batch 256: its own operators, us (by operator) "
             "| builtin kernels only, batch 1: all nodes, us (by op, top 5) |", "|---|---|---|---|---|"]
    for path in paths:
        ops, cells = litert_ops(path), []
        for builtin, batch_size in ((False, 1), (False, 256), (True, 1)):
            times = litert_profile.node_times(path, runs=runs if batch_size == 1 else max(runs // 50, 10),
                                              builtin_kernels=builtin, batch_size=batch_size)
            cells.append(_by_kind([(ops[node], micros) for node, micros in times["nodes"]], 5 if builtin else 4))
            if batch_size == 256:
                cells.append(_by_kind(times["xnnpack"], 4))
        lines.append(f"| {os.path.basename(path)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _by_kind(timed: list[tuple[str, float]], top: int) -> str:
    """``total (kind us, ...)`` of ``(kind, microseconds)`` pairs, the ``top`` kinds by time."""
    by_kind: dict[str, float] = {}
    for kind, micros in timed:
        by_kind[kind] = by_kind.get(kind, 0.0) + micros
    ranked = sorted(by_kind.items(), key=lambda item: -item[1])[:top]
    return f"{sum(by_kind.values()):,.1f} ({', '.join(f'{kind} {us:,.1f}' for kind, us in ranked)})"


def op_counts(ops: list[str]) -> str:
    """``total (GATHERs)`` of a file's op list."""
    return f"{len(ops)} ({ops.count('GATHER')})"


def summary(rows, paired, aucs, ops: dict[str, list[str]], unfused_ops: dict[str, list[str]],
            floors_us: dict[str, float]):
    """One line per model and quantization; latency and throughput from the interleaved runs (``paired``:
    original, compressed and compressed without fusion)."""
    by = {(r["name"], r["batch_size"]): r for r in rows}
    header = ("| model | quantization | size MiB orig -> comp (ratio) | ops (GATHERs) orig -> comp unfused -> comp "
              "| floor us orig -> comp | batch-1 p50 ms orig -> comp (ratio) [unfused ratio] "
              "| batch-256 rows/s orig -> comp (ratio) [unfused ratio] | AUC orig / comp |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name in BUILDERS:
        for quantization in QUANTIZATIONS:
            q = quantization or "float32"
            o, c = f"{name}-original-{q}.tflite", f"{name}-compressed-{q}.tflite"
            so, sc = by[(o, 1)]["size_bytes"] / 2**20, by[(c, 1)]["size_bytes"] / 2**20
            (lo, lc, lu), (to, tc, tu) = ([r["p50_ms"] for r in paired[(name, q, 1)]],
                                          [r["throughput_rps"] for r in paired[(name, q, 256)]])
            lines.append(
                f"| {name} | {q} | {so:.2f} -> {sc:.2f} ({sc / so:.2f}) "
                f"| {op_counts(ops[o])} -> {op_counts(unfused_ops[c])} -> {op_counts(ops[c])} "
                f"| {floors_us[o]:.2f} -> {floors_us[c]:.2f} | {lo:.3f} -> {lc:.3f} ({lc / lo:.2f}) [{lu / lo:.2f}] "
                f"| {to:,.0f} -> {tc:,.0f} ({tc / to:.2f}) [{tu / to:.2f}] | {aucs[o]:.4f} / {aucs[c]:.4f} |"
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
    verification = {key: value[:1024] for key, value in features.items()}
    files, unfused, unfused_ops, aucs, integer_rows = {}, {}, {}, {}, []
    for name in BUILDERS:
        model, compressed = train_and_compress(name, gen, schema, train_rows, calibration_rows, args.objective)
        exported, unfused[name] = export_all(name, model, compressed, out)
        files.update(exported)
        unfused_ops.update({f"{name}-compressed-{q}.tflite": litert_ops(path) for q, path in unfused[name].items()})
        integer_rows += full_integer(name, model, compressed, exported, gen, out, verification, features, labels,
                                     iterations)
    costs, ops = {}, {}
    for path in files.values():
        aucs[os.path.basename(path)] = validation_auc(path, features, labels)
        costs[os.path.basename(path)] = request_cost(path)
        ops[os.path.basename(path)] = litert_ops(path)
    bandwidth, peak = read_bandwidth(), matmul_peak()
    print(f"\nthis machine, 1 thread: read bandwidth {bandwidth / 1e9:.1f} GB/s ({BANDWIDTH_MIB} MiB float32), "
          f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s ({MATMUL_N}x{MATMUL_N} @ {MATMUL_N}x{MATMUL_N}; "
          f"BLAS {blas_kernel()})")
    floors_us = {name: cost.floor_seconds(bandwidth, peak) * 1e6 for name, cost in costs.items()}
    rows = benchmark(list(files.values()), schema, batch_sizes=(1, 256), threads=(1,),
                     warmup=20, iterations=iterations, max_seconds=5.0)
    print("\nAll measurements (ratios to the first file):\n")
    print(results_table(rows))
    print("\nBatch-1 latency against this machine's floor (weight bytes / bandwidth + FLOPs / peak):\n")
    print(floor_table(rows, costs, floors_us))
    paired = {}
    for name in BUILDERS:
        for quantization in QUANTIZATIONS:
            q = quantization or "float32"
            triple = [files[f"{name}-{variant}-{q}"] for variant in ("original", "compressed")] + [unfused[name][q]]
            for batch_size, calls in ((1, iterations), (256, max(iterations // 10, 5))):
                paired[(name, q, batch_size)] = interleaved(triple, schema, batch_size, rounds=10, calls=calls)
    partition = partition_table(files.values())
    print("\nOps run by XNNPACK and ops left to LiteRT's own kernels:\n")
    print(partition)
    profiled = [path for name in BUILDERS for path in (files[f"{name}-original-dynamic"],
                                                        files[f"{name}-compressed-dynamic"], unfused[name]["dynamic"])]
    profile = profile_table(profiled, runs=iterations * 5)
    print("\nPer-node times from LiteRT's profiler (dynamic int8, 1 thread, zero inputs):\n")
    print(profile)
    print("\nCompressed vs original under the same quantization (1 thread, interleaved in one process):\n")
    compared = summary(rows, paired, aucs, ops, unfused_ops, floors_us)
    print(compared)
    integer = "\n".join([FULL_INTEGER_HEADER, "|" + "---|" * (FULL_INTEGER_HEADER.count("|") - 1), *integer_rows])
    print("\nFull-integer int8 beside dynamic int8 (batch 1, 1 thread, interleaved; held-out rows):\n")
    print(integer)
    if args.doc:
        command = "python benchmarks/bench_export.py" + (" --quick" if args.quick else "") + (
            f" --objective {args.objective}" if args.objective != "both" else "") + f" --doc {args.doc}"
        write_section(args.doc, "export", "\n".join([
            "## LiteRT size, speed and ops (4 architectures, synthetic Criteo-like schema)", "",
            f"Command: `{command}` ({environment()}; {train_rows:,} training rows, AFM at `target_ratio=4`, "
            f"objective {args.objective}, each quantization's model ranked in that quantization's bytes; fused; "
            "1 thread). Ratios are compressed / original under the same quantization, timed interleaved in one "
            "process with the compressed model exported without fusion (`fuse=False`, `--no-fuse`; its ratio "
            "in brackets); ops as total (GATHERs): original -> compressed without fusion -> fused.", "",
            compared, "",
            f"Batch-1 latency against this machine's floor (read bandwidth {bandwidth / 1e9:.1f} GB/s, float32 "
            f"matmul peak {peak / 1e9:.1f} GFLOP/s, 1 thread):", "",
            floor_table(rows, costs, floors_us), "",
            "Ops run by LiteRT's default XNNPACK delegate and ops left to LiteRT's own kernels "
            "(`tfafm.export.xnnpack_partition`):", "",
            partition, "",
            "Per-node times of the dynamic-int8 files (original, compressed, compressed without fusion) from "
            "LiteRT's own profiler (`benchmarks/litert_profile.py`: the LiteRT C API's profiler through ctypes, as "
            f"the Python packages expose none; 1 thread, zero inputs, mean of {iterations * 5} runs at batch 1 and "
            f"{max(iterations * 5 // 50, 10)} at batch 256; whole microseconds per node and run, so small nodes "
            "read low). Under XNNPACK the nodes left to LiteRT's kernels are timed by node, and XNNPACK's own "
            "operators (named by XNNPACK: `QDU8` a matmul with int8 weights whose float activations it quantizes "
            "per row, `F32` a float matmul, for weights the converter left float) at batch 256, where they take "
            "tens of microseconds; with LiteRT's builtin kernels only, every node is timed:", "",
            profile, "",
            "Full-integer int8 (`quantization=\"int8\"`: activations int8 too, calibrated on 2,048 calibration rows; "
            "the compressed model ranked in full-int8 bytes) beside each variant's dynamic-int8 file, verified on "
            "1,024 held-out rows as `tfafm.export.litert` does before writing anything (a refused file is not "
            "written); batch-1 p50 timed interleaved with the dynamic file, 1 thread:", "",
            integer]))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
