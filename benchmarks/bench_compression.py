"""Compression core benchmark: calibration speed, parameter ratio, AUC of SVD vs AFM.

DeepFM (embedding dim 16, MLP 400-400-400) trained on synthetic Criteo-like
data, then compressed at ``target_ratio=4`` with weight SVD and with AFM, and
fine-tuned for one epoch each. Everything is measured in this run and printed.

    python benchmarks/bench_compression.py            # 200k training rows
    python benchmarks/bench_compression.py --quick    # 40k rows, for a smoke test
"""

from __future__ import annotations

import argparse
import sys

import keras
import tensorflow as tf

import tfafm
from tfafm import models
from tfafm.data.synthetic import SyntheticCriteo
from tfafm.metrics import evaluate
from tfafm.training import compile_for_ctr

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import environment, stopwatch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = 40_000 if args.quick else 200_000
    calibration_rows = 20_000 if args.quick else 100_000
    batch = 1024

    generator = SyntheticCriteo(seed=args.seed, max_vocabulary=100_000)
    schema = generator.schema(embedding_dim=16)
    train = generator.dataset(rows, batch, "train").cache()
    validation = generator.dataset(rows // 10, batch, "validation").cache()
    calibration = generator.dataset(calibration_rows, batch, "calibration").cache()
    for dataset in (train, validation, calibration):
        for _ in dataset:  # materialise the caches so timings exclude data generation
            pass

    keras.utils.set_random_seed(args.seed)
    model = models.build("deepfm", schema, hidden_units=(400, 400, 400))
    compile_for_ctr(model, 1e-3)
    model.fit(train, validation_data=validation, epochs=1, verbose=0)

    half = calibration.take(calibration_rows // batch // 2)
    half_rows = calibration_rows // batch // 2 * batch
    times = {}
    for name, data, n in (("predict", calibration, calibration_rows), ("predict_half", half, half_rows),
                          ("calibrate", calibration, calibration_rows), ("calibrate_half", half, half_rows)):
        with stopwatch() as elapsed:
            if name.startswith("predict"):
                model.predict(data, verbose=0)
            else:
                statistics = tfafm.calibrate(model, data, progress=False)
        times[name] = elapsed["seconds"]
    print(f"# {environment()}")
    print(f"rows: train {rows:,}, validation {rows // 10:,}, calibration {calibration_rows:,}; batch {batch}")
    predict_rate = calibration_rows / times["predict"]
    calibrate_rate = calibration_rows / times["calibrate"]
    print(f"model.predict over calibration data: {predict_rate:,.0f} rows/s")
    print(f"tfafm.calibrate over the same data:  {calibrate_rate:,.0f} rows/s "
          f"({calibrate_rate / predict_rate:.2f}x the speed of predict, {len(statistics)} layers)")
    # Marginal rates (second half of the rows only) leave out one-time costs such as tracing.
    marginal_predict = (calibration_rows - half_rows) / (times["predict"] - times["predict_half"])
    marginal_calibrate = (calibration_rows - half_rows) / (times["calibrate"] - times["calibrate_half"])
    print(f"marginal rates without one-time costs: predict {marginal_predict:,.0f} rows/s, calibrate "
          f"{marginal_calibrate:,.0f} rows/s ({marginal_calibrate / marginal_predict:.2f}x)")

    rows_out = [("original", model.count_params(), evaluate(model, validation), None)]
    for method in ("svd", "afm"):
        compressed, report = tfafm.compress(model, calibration, method=method, target_ratio=4,
                                            statistics=statistics if method == "afm" else None,
                                            progress=False)
        before = evaluate(compressed, validation)
        compile_for_ctr(compressed, 5e-4)
        compressed.fit(train, epochs=1, verbose=0)
        after = evaluate(compressed, validation)
        rows_out.append((f"{method} x4", compressed.count_params(), before, after, report))

    print()
    print("| model | params | ratio | compressible ratio | AUC | LogLoss | AUC after 1 fine-tune epoch | LogLoss after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    original_params = rows_out[0][1]
    for name, params, before, after, *report in rows_out:
        comp = f"{report[0].compressible_ratio:.2f}x" if report else "-"
        tuned = f"{after['auc']:.4f} | {after['logloss']:.4f}" if after else "- | -"
        print(f"| {name} | {params:,} | {original_params / params:.2f}x | {comp} | "
              f"{before['auc']:.4f} | {before['logloss']:.4f} | {tuned} |")


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
