"""Ingestion speed and memory: tfafm prepare vs a pyarrow parse of the same file, cache reads, training.

Writes a Criteo-format TSV of ``--rows`` rows (``SyntheticCriteo.write_criteo``:
13 integer counts, 26 Zipf categoricals as 8 hex digits), optionally repeated
``--copies`` times (more rows, the same distinct ids), then runs, interleaved
for ``--rounds`` rounds, each in its own process (so peak RSS is its own):

* ``parse``: pyarrow's streaming CSV reader (``open_csv``) over the file, parse only;
* ``parse-whole``: pyarrow ``read_csv`` of the whole file, parse only;
* ``prepare``: ``tfafm.data.prepare.prepare`` (parse, fit vocabularies, encode, write the cache);
* ``read``: one epoch of the cache with ``tf.data`` (batches of 1024);
* ``train``: DeepFM (embedding 16, MLP 400-400-400) training steps on cache batches
  held in memory, against the input pipeline alone on the same batches.

Prints wall and CPU seconds, rows/s, peak RSS, the ratios the targets are about
and an extrapolation to 45M rows (full Criteo). Asserts nothing.

    python benchmarks/bench_ingest.py [--rows 2000000] [--copies 1] [--rounds 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CRITEO_ROWS = 45_840_617
COLUMNS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
TASKS = ("parse", "parse-whole", "prepare", "read", "train")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="distinct generated rows (default 2M)")
    parser.add_argument("--copies", type=int, default=1, help="write the generated rows this many times")
    parser.add_argument("--max-vocabulary", type=int, default=1_000_000, help="largest generator vocabulary")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every task")
    parser.add_argument("--train-batches", type=int, default=100, help="batches timed by the train task")
    parser.add_argument("--workdir", help="where the file and cache go (default: a temporary directory, removed)")
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def peak_rss() -> int:
    """This process's peak resident set in bytes (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _report(rows: int, wall: float, cpu: float, **extra) -> None:
    peak = peak_rss()
    print(json.dumps({"rows": rows, "wall": wall, "cpu": cpu, "peak_rss": peak, **extra}))


def task_parse(args) -> None:
    import pyarrow.csv as pacsv

    start, cpu = time.perf_counter(), time.process_time()
    reader = pacsv.open_csv(args.file, read_options=pacsv.ReadOptions(column_names=COLUMNS),
                            parse_options=pacsv.ParseOptions(delimiter="\t"))
    rows = sum(batch.num_rows for batch in reader)
    _report(rows, time.perf_counter() - start, time.process_time() - cpu)


def task_parse_whole(args) -> None:
    import pyarrow.csv as pacsv

    start, cpu = time.perf_counter(), time.process_time()
    table = pacsv.read_csv(args.file, read_options=pacsv.ReadOptions(column_names=COLUMNS),
                           parse_options=pacsv.ParseOptions(delimiter="\t"))
    _report(table.num_rows, time.perf_counter() - start, time.process_time() - cpu)


def task_prepare(args) -> None:
    from tfafm.data.prepare import prepare
    from tfafm.data.specs import file_source

    shutil.rmtree(args.cache, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    cache, timings = prepare(file_source("criteo", args.file, f"criteo:{args.file}"), args.cache, progress=False)
    rows = cache.rows("train") + cache.rows("validation")
    distinct = sum(f.vocabulary_size - 1 for f in cache.schema().sparse)
    _report(rows, time.perf_counter() - start, time.process_time() - cpu, distinct=distinct,
            passes={t.name: t.seconds for t in timings})


def task_read(args) -> None:
    from tfafm.data import Cache

    cache = Cache.open(args.cache)
    start, cpu = time.perf_counter(), time.process_time()
    rows = 0
    for _, labels in cache.dataset(("train", "validation"), 1024):
        rows += int(labels.shape[0])
    _report(rows, time.perf_counter() - start, time.process_time() - cpu)


def task_train(args) -> None:
    import keras

    import tfafm
    from tfafm.data import Cache
    from tfafm.training import compile_for_ctr

    cache = Cache.open(args.cache)
    batches = cache.dataset(("train",), 1024).take(args.train_batches)
    for _ in batches:  # warm the file cache and tf.data's functions
        pass
    start = time.perf_counter()
    rows = sum(int(labels.shape[0]) for _, labels in batches)
    input_seconds = time.perf_counter() - start
    in_memory = batches.cache()
    keras.utils.set_random_seed(0)
    model = tfafm.models.build("deepfm", cache.schema(16), hidden_units=(400, 400, 400))
    compile_for_ctr(model, 1e-3)
    model.fit(in_memory, epochs=1, verbose=0)  # traces the step and fills the in-memory cache
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(in_memory, epochs=1, verbose=0)
    train_seconds = time.perf_counter() - start
    _report(rows, train_seconds, time.process_time() - cpu, input_seconds=input_seconds)


def run_task(task: str, args, path: str, cache: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--task", task, "--file", path, "--cache", cache,
               "--train-batches", str(args.train_batches)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"task {task} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_file(path: str, rows: int, copies: int, max_vocabulary: int) -> None:
    from tfafm.data import SyntheticCriteo

    SyntheticCriteo(seed=0, max_vocabulary=max_vocabulary).write_criteo(path, rows)
    if copies > 1:
        block = path + ".block"
        os.replace(path, block)
        with open(path, "wb") as out:
            for _ in range(copies):
                with open(block, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        os.remove(block)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.task:
        {"parse": task_parse, "parse-whole": task_parse_whole, "prepare": task_prepare,
         "read": task_read, "train": task_train}[args.task](args)
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="tfafm-bench-ingest-")
    os.makedirs(workdir, exist_ok=True)
    path, cache = os.path.join(workdir, "criteo.tsv"), os.path.join(workdir, "cache")
    try:
        start = time.perf_counter()
        write_file(path, args.rows, args.copies, args.max_vocabulary)
        print(f"wrote {args.rows * args.copies:,} rows ({os.path.getsize(path) / 2**20:,.0f} MiB) "
              f"in {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
        results: dict[str, list[dict]] = {task: [] for task in TASKS}
        for round_number in range(args.rounds):
            for task in TASKS:
                results[task].append(run_task(task, args, path, cache))
                r = results[task][-1]
                print(f"round {round_number + 1} {task}: {r['rows'] / r['wall']:,.0f} rows/s, "
                      f"{r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU, peak RSS {r['peak_rss'] / 2**30:.2f} GiB",
                      flush=True)
        print_summary(results, args)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def print_summary(results: dict[str, list[dict]], args) -> None:
    def median(task, key):
        return statistics.median(r[key] for r in results[task])

    rows = {task: results[task][0]["rows"] for task in TASKS}
    speed = {task: rows[task] / median(task, "wall") for task in TASKS}
    cpu_speed = {task: rows[task] / median(task, "cpu") for task in TASKS}
    print(f"\n{rows['prepare']:,} rows, {results['prepare'][0]['distinct']:,} distinct ids; medians of "
          f"{args.rounds} interleaved rounds; load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| task | rows/s (wall) | rows per CPU-second | peak RSS GiB | 45M rows (wall) |")
    print("|---|---:|---:|---:|---:|")
    names = {"parse": "pyarrow open_csv, parse only", "parse-whole": "pyarrow read_csv (whole file), parse only",
             "prepare": "tfafm prepare (parse + fit + encode + cache)", "read": "one epoch from the cache (tf.data)",
             "train": "DeepFM training steps (input in memory)"}
    for task in TASKS:
        peak = max(r["peak_rss"] for r in results[task]) / 2**30
        minutes = CRITEO_ROWS / speed[task] / 60
        print(f"| {names[task]} | {speed[task]:,.0f} | {cpu_speed[task]:,.0f} | {peak:.2f} | {minutes:.1f} min |")
    passes = results["prepare"][0]["passes"]
    print("\nprepare passes (first round): " + ", ".join(f"{k} {v:.1f} s" for k, v in passes.items()))
    input_speed = rows["train"] / median("train", "input_seconds")
    print(f"prepare / open_csv parse-only: {speed['prepare'] / speed['parse']:.2f}x wall, "
          f"{cpu_speed['prepare'] / cpu_speed['parse']:.2f}x CPU (target >= 0.5x)")
    print(f"prepare / read_csv parse-only: {speed['prepare'] / speed['parse-whole']:.2f}x wall, "
          f"{cpu_speed['prepare'] / cpu_speed['parse-whole']:.2f}x CPU")
    print(f"cache read: {speed['read']:,.0f} rows/s (target >= 300,000)")
    print(f"input pipeline / DeepFM training step on the same {args.train_batches} batches: "
          f"{input_speed:,.0f} / {speed['train']:,.0f} rows/s = {input_speed / speed['train']:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
