"""Calibration speed against inference, and full-rank exactness.

For DeepFM and DCN-V2 (embedding 16, MLP 400-400-400, the synthetic
Criteo-like schema), times ``model.predict`` and ``tfafm.calibrate`` over the
same in-memory batches of 4096 rows and over the first half of them,
interleaved, several times, and prints medians: rows per second over all rows
(one-time costs such as building the probe and tracing included), the
marginal rate (the second half's rows over the time they added: one-time costs
excluded) and rows per CPU-second (immune to other processes on the machine).
Then checks that AFM at full rank reproduces each model.

    python benchmarks/bench_calibration.py             # 81,920 rows, 5 rounds
    python benchmarks/bench_calibration.py --quick     # 16,384 rows, 2 rounds
"""

from __future__ import annotations

import argparse
import statistics as stats
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import tfafm
from tfafm.compression.targets import find_targets
from tfafm.data.synthetic import SyntheticCriteo

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import environment  # noqa: E402

BATCH = 4096


def _timed(function) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = 16_384 if args.quick else 81_920
    rounds = 2 if args.quick else 5
    generator = SyntheticCriteo(seed=0, max_vocabulary=100_000)
    schema = generator.schema(embedding_dim=16)
    features = next(generator.batches(rows, rows, "calibration"))[0]
    data = tf.data.Dataset.from_tensor_slices(features).batch(BATCH).cache()
    for _ in data:  # materialise the cache: timings exclude data generation
        pass

    print(f"# {environment()}")
    print(f"# {rows:,} rows in batches of {BATCH}; median of {rounds} interleaved rounds")
    print("| model | predict rows/s | calibrate rows/s | ratio | marginal ratio | predict rows/CPU-s "
          "| calibrate rows/CPU-s | CPU ratio | max abs diff at full rank |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in ("deepfm", "dcnv2"):
        keras.utils.set_random_seed(0)
        model = tfafm.models.build(name, schema, hidden_units=(400, 400, 400))
        model.predict(data.take(1), verbose=0)  # trace once before timing
        tfafm.calibrate(model, data.take(1), progress=False, min_calibration_rows=0)
        half = data.take(rows // BATCH // 2)
        half_rows = rows // BATCH // 2 * BATCH
        timings = {"predict": [], "calibrate": [], "predict_half": [], "calibrate_half": []}
        for _ in range(rounds):
            for suffix, subset in (("", data), ("_half", half)):
                timings["predict" + suffix].append(_timed(lambda: model.predict(subset, verbose=0)))
                timings["calibrate" + suffix].append(_timed(lambda: tfafm.calibrate(model, subset, progress=False)))
        rate = {k: stats.median(rows / wall for wall, _ in timings[k]) for k in ("predict", "calibrate")}
        cpu_rate = {k: stats.median(rows / cpu for _, cpu in timings[k]) for k in ("predict", "calibrate")}
        marginal = {k: (rows - half_rows) / (stats.median(w for w, _ in timings[k])
                                             - stats.median(w for w, _ in timings[k + "_half"]))
                    for k in ("predict", "calibrate")}

        targets, _ = find_targets(model)
        ranks = {t.name: min(t.input_dim, t.output_dim) for t in targets}
        sample = {k: v[:BATCH] for k, v in features.items()}
        exact, _ = tfafm.compress(model, data, ranks=ranks, progress=False)
        diff = float(np.max(np.abs(exact.predict(sample, verbose=0) - model.predict(sample, verbose=0))))
        print(f"| {name} | {rate['predict']:,.0f} | {rate['calibrate']:,.0f} | "
              f"{rate['calibrate'] / rate['predict']:.2f}x | {marginal['calibrate'] / marginal['predict']:.2f}x | "
              f"{cpu_rate['predict']:,.0f} | "
              f"{cpu_rate['calibrate']:,.0f} | {cpu_rate['calibrate'] / cpu_rate['predict']:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
