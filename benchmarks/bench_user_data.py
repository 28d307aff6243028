"""Peak memory of ``tfafm compress my.keras --data parquet:...`` as the user's file grows.

Writes a user-style Keras model (8 id inputs into their own embedding tables,
a float input, an MLP) and Parquet files of click data with the same columns
at each size given, then runs the command line on each in a fresh process and
reads that process's peak resident memory. The data is read streaming, so the
peak should not grow with the file.

    python benchmarks/bench_user_data.py                       # 1M and 10M rows
    python benchmarks/bench_user_data.py --rows 100000 1000000 # quicker
    python benchmarks/bench_user_data.py --out docs/benchmarks.md   # also write its section there
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS, VOCABULARY, DIM = 8, 50_000, 16
CHUNK = 1_000_000

_MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def write_model(path: str) -> None:
    import keras

    inputs = {f"f{i}": keras.Input((1,), dtype="int32", name=f"f{i}") for i in range(FIELDS)}
    price = keras.Input((1,), name="price")
    vectors = [keras.layers.Flatten()(keras.layers.Embedding(VOCABULARY, DIM, name=f"table_{name}")(x))
               for name, x in inputs.items()]
    hidden = keras.layers.Concatenate()(vectors + [price])
    for units in (256, 128):
        hidden = keras.layers.Dense(units, activation="relu")(hidden)
    model = keras.Model({**inputs, "price": price}, keras.layers.Dense(1, activation="sigmoid", name="click")(hidden))
    model.save(path)


def write_parquet(path: str, rows: int, seed: int = 0) -> None:
    """``rows`` rows written in chunks (bounded memory), ids Zipf-like over the tables."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        columns = {f"f{i}": np.minimum(rng.zipf(1.2, n) - 1, VOCABULARY - 1).astype("int64") for i in range(FIELDS)}
        columns["price"] = rng.lognormal(size=n)
        columns["click"] = (rng.uniform(size=n) < 0.25).astype("int64")
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=256 * 1024)
    writer.close()


def measure(model: str, data: str, out: str) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MiB) of one compress run in a fresh process."""
    command = [sys.executable, os.path.join(ROOT, "tfafm_cli.py"), "compress", model, "--data",
               f"parquet:{data}?label=click", "--ratio", "4", "--out", out, "--quiet", "--overwrite"]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, check=True)
    code, kib = result.stdout.split()
    return int(code), time.perf_counter() - start, int(kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--out", help="also write the table as the user-data section of this Markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tfafm-bench-user-") as folder:
        model = os.path.join(folder, "my.keras")
        write_model(model)
        results = []
        for rows in args.rows:
            data = os.path.join(folder, f"events_{rows}.parquet")
            write_parquet(data, rows)
            code, seconds, peak = measure(model, data, os.path.join(folder, f"small_{rows}"))
            if code != 0:
                raise SystemExit(f"tfafm compress failed on {rows:,} rows (exit {code})")
            results.append((rows, os.path.getsize(data) / 2**20, seconds, peak))
            os.remove(data)
    lines = ["| rows | Parquet MiB | wall s | peak RSS MiB | peak / smallest |", "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {rows:,} | {size:,.0f} | {seconds:.0f} | {peak:,.0f} | {peak / results[0][3]:.2f}x |"
              for rows, size, seconds, peak in results]
    table = "\n".join(lines)
    print(table)
    if args.out:
        from common import environment, write_section

        sizes = " ".join(str(r) for r in args.rows)
        write_section(args.out, "user-data", "\n".join([
            "## User data: peak memory of `tfafm compress my.keras --data parquet:...`", "",
            f"Command: `python benchmarks/bench_user_data.py --rows {sizes} --out {args.out}` ({environment()}). "
            f"A user-style model ({FIELDS} id inputs into tables of {VOCABULARY:,} x {DIM}, a float input, MLP "
            "256-128) compressed at `--ratio 4` from Parquet files of each size, each run in a fresh process; "
            "peak RSS is that process's. Files are read a batch at a time, so memory stays flat as they grow.",
            "", table]))


if __name__ == "__main__":
    main()
