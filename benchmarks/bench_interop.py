"""A TFRS DCN (Keras 2) brought into tfafm: converted, compressed 4x, exported; against TensorFlow's own export.

Trains the TFRS DCN tutorial's model (string / integer lookups, embeddings of
32, a full-rank ``Cross`` layer, deep layers 192-192, rating regression, Adam
0.01, batch 8192, 8 epochs) on MovieLens ml-latest-small (first 90,000 of the
shuffled ratings; the other 10,836 are held out), then:

* exports the Keras 2 original with ``tf.lite.TFLiteConverter.from_keras_model``
  (float32; its lookups stay in the file as hash-table ops);
* converts it with ``tfafm.interop.from_tfrs_ranking``, compresses the result
  with ``tfafm.compress(method="afm", target_ratio=4)`` (calibration: 8,192
  training rows), optionally fine-tunes it one epoch (MSE, Adam 1e-3), and
  exports each with ``tfafm.export.litert`` (float32, and dynamic-range int8
  for the compressed model).

For every file it prints the size, batch-1 single-thread p50 latency of
``invoke()`` (inputs set beforehand: ``tfafm.export.bench.benchmark`` for the
tfafm files, whose inputs are ids; the same ``measure`` loop on raw strings and
integers for the original), held-out RMSE computed through the file, and the
largest difference from the Keras 2 original's predictions on 1,000 held-out
rows. Prints what it measured; asserts nothing.

    TF_USE_LEGACY_KERAS=1 python benchmarks/bench_interop.py [--out DIR] [--iterations N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    sys.exit("Set TF_USE_LEGACY_KERAS=1 (TensorFlow Recommenders needs Keras 2): "
             "TF_USE_LEGACY_KERAS=1 python benchmarks/bench_interop.py")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as k2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))
from keras2_models import DCN_INT_FEATURES, DCN_STRING_FEATURES, movielens_dcn, movielens_ratings, split_rows  # noqa: E402,E501

import tfafm  # noqa: E402
from tfafm.export import LiteRTRunner, litert_ops  # noqa: E402
from tfafm.export.bench import benchmark, measure  # noqa: E402
from tfafm.interop import from_tfrs_ranking, schema_of  # noqa: E402

DCN_FEATURES = DCN_STRING_FEATURES + DCN_INT_FEATURES
TRAIN_ROWS = 90_000
PARITY_ROWS = 1_000


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="directory for the .tflite files (default: a temporary one)")
    parser.add_argument("--iterations", type=int, default=2000, help="timed batch-1 calls per file")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of the original (tutorial: 8)")
    return parser.parse_args()


class RawLiteRTRunner:
    """Runs a ``.tflite`` written by TensorFlow's converter from a Keras 2 model, inputs by Keras input name."""

    def __init__(self, path: str):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path, num_threads=1)
        self.inputs = {d["name"].split(":")[0].removeprefix("serving_default_"): d
                       for d in self.interpreter.get_input_details()}
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.interpreter.allocate_tensors()
        self._rows = None

    def set_inputs(self, raw) -> None:
        rows = len(next(iter(raw.values())))
        if rows != self._rows:
            for name, detail in self.inputs.items():
                self.interpreter.resize_tensor_input(detail["index"], [rows])
            self.interpreter.allocate_tensors()
            self._rows = rows
        for name, detail in self.inputs.items():
            self.interpreter.set_tensor(detail["index"], np.asarray(raw[name]).astype(detail["dtype"]))

    def invoke(self) -> np.ndarray:
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output).reshape(-1)

    def __call__(self, raw) -> np.ndarray:
        self.set_inputs(raw)
        return self.invoke()


def in_batches(predict, rows: dict, batch: int = 1024) -> np.ndarray:
    n = len(next(iter(rows.values())))
    return np.concatenate([predict({k: v[i:i + batch] for k, v in rows.items()}) for i in range(0, n, batch)])


def rmse(predictions, labels) -> float:
    return float(np.sqrt(np.mean((np.asarray(predictions, np.float64).ravel() - labels) ** 2)))


def tf_converter_export(keras2_model, path: str) -> tuple[str, list[str]]:
    """A Keras 2 model exported by TensorFlow's own converter, and the TF Select (Flex) ops the file needs.

    Builtin ops are used wherever they exist; TF Select ops are allowed for the rest. The model is
    traced with one named input per Keras input, so the file's inputs carry those names.
    """
    specs = [tf.TensorSpec(t.shape, t.dtype, name=name) for name, t in zip(keras2_model.input_names, keras2_model.inputs)]
    function = tf.function(lambda *args: keras2_model(list(args), training=False), input_signature=specs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], keras2_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    with open(path, "wb") as f:
        f.write(converter.convert())
    return path, sorted({op for op in litert_ops(path) if op.startswith("Flex")})


def main() -> None:
    args = parse_args()
    out = args.out or tempfile.mkdtemp(prefix="bench-interop-")
    os.makedirs(out, exist_ok=True)
    from common import environment  # benchmarks/common.py

    print(environment())
    data = movielens_ratings()
    train, held_out = split_rows(data, 0, TRAIN_ROWS), split_rows(data, TRAIN_ROWS, len(data["user_rating"]))
    features = {k: v for k, v in held_out.items() if k != "user_rating"}
    labels = held_out["user_rating"].astype(np.float64)
    steps = -(-TRAIN_ROWS // 8192) * args.epochs
    start = time.time()
    dcn = movielens_dcn(train, steps=steps, batch_size=8192)
    print(f"Trained the TFRS DCN for {args.epochs} epochs ({steps} steps of 8192) in {time.time() - start:.0f}s")
    original = dcn.ranking_model
    expected = in_batches(lambda rows: original.predict(rows, batch_size=1024, verbose=0).reshape(-1), features)

    converted = from_tfrs_ranking(dcn)
    encoder = converted.raw_feature_encoder
    inputs = encoder.encode(features)
    train_inputs = encoder.encode({k: v for k, v in train.items() if k != "user_rating"})
    calibration = tf.data.Dataset.from_tensor_slices({k: v[:8192] for k, v in train_inputs.items()}).batch(1024)
    start = time.time()
    compressed, report = tfafm.compress(converted, calibration, method="afm", target_ratio=4, progress=False)
    print(f"Compressed {converted.count_params():,} -> {compressed.count_params():,} parameters in "
          f"{time.time() - start:.1f}s\n{report.to_markdown()}")
    tuned = keras.models.clone_model(compressed)
    tuned.set_weights(compressed.get_weights())
    tuned.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    tuned.fit(train_inputs, train["user_rating"], batch_size=8192, epochs=1, verbose=0)

    full_file, full_flex = tf_converter_export(original, os.path.join(out, "dcn_keras2_tfconverter.tflite"))
    # The same Keras 2 network with its lookups cut off (ids in), which LiteRT's builtin ops can run.
    lookups = [original.get_layer(f"{name}_lookup") for name in DCN_FEATURES]
    network = k2.Model([layer.output for layer in lookups], original.output, name="dcn_network")
    network_file, network_flex = tf_converter_export(network, os.path.join(out, "dcn_keras2_network.tflite"))
    network_ids = {name: layer(features[feature]).numpy()
                   for name, layer, feature in zip(network.input_names, lookups, DCN_FEATURES)}
    files = {
        "converted (tfafm, fp32)": (converted, tfafm.export.litert(converted, os.path.join(out, "dcn_converted.tflite"))),
        "AFM x4 (fp32)": (compressed, tfafm.export.litert(compressed, os.path.join(out, "dcn_afm4.tflite"))),
        "AFM x4 + 1 epoch (fp32)": (tuned, tfafm.export.litert(tuned, os.path.join(out, "dcn_afm4_ft.tflite"))),
        "AFM x4 + 1 epoch (dyn. int8)": (tuned, tfafm.export.litert(
            tuned, os.path.join(out, "dcn_afm4_ft_int8.tflite"), quantization="dynamic")),
    }

    network_runner = RawLiteRTRunner(network_file)
    batches = [{k: v[i:i + 1] for k, v in network_ids.items()} for i in range(4)]
    network_latency = measure(network_runner, batches, warmup=20, iterations=args.iterations, max_seconds=20)
    timings = benchmark([path for _, path in files.values()], schema_of(encoder), batch_sizes=(1,), threads=(1,),
                        iterations=args.iterations, max_seconds=20, names=list(files))
    latency = {row["name"]: row["p50_ms"] for row in timings}

    first = slice(0, PARITY_ROWS)
    network_lite = in_batches(network_runner, network_ids)
    lines = [
        f"Held-out: {len(labels):,} ratings; parity on the first {PARITY_ROWS:,} of them against the Keras 2 "
        f"model's predictions. The Keras 2 model with its lookups needs TF Select ops ({', '.join(full_flex)}): "
        "ai-edge-litert cannot run it (no Flex delegate), so it has no latency here.",
        "",
        "| model | params | file KiB | batch-1 p50 ms | held-out RMSE | max abs diff vs Keras 2 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| Keras 2 original with lookups (TF converter) | {original.count_params():,} | "
        f"{os.path.getsize(full_file) / 1024:,.0f} | needs Flex | - | - |",
        f"| Keras 2 network, lookups cut off (TF converter, Flex ops: {', '.join(network_flex) or 'none'}) | "
        f"{network.count_params():,} | "
        f"{os.path.getsize(network_file) / 1024:,.0f} | {network_latency['p50_ms']:.3f} | "
        f"{rmse(network_lite, labels):.4f} | {np.abs(network_lite[first] - expected[first]).max():.2g} |",
    ]
    for name, (model, path) in files.items():
        runner = LiteRTRunner(path)
        lite = in_batches(lambda rows: runner(rows).reshape(-1), inputs)  # noqa: B023 - called right here
        lines.append(
            f"| {name} | {model.count_params():,} | {os.path.getsize(path) / 1024:,.0f} | {latency[name]:.3f} | "
            f"{rmse(lite, labels):.4f} | {np.abs(lite[first] - expected[first]).max():.2g} |")
    print("\n".join(lines))
    print(f"Keras 2 original in Keras: held-out RMSE {rmse(expected, labels):.4f}")
    single = {k: v[:1] for k, v in features.items()}
    start = time.perf_counter()
    for _ in range(200):
        encoder.encode(single)
    print(f"Raw feature encoding in Python (outside the .tflite): {(time.perf_counter() - start) / 200 * 1e3:.3f} "
          "ms per single row")
    print(f"Files in {out}")


if __name__ == "__main__":
    main()
