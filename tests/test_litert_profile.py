"""The benchmarks' per-node LiteRT profile (benchmarks/litert_profile.py, the C API's profiler via ctypes)."""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest

from tfafm.export import litert, litert_ops, xnnpack_partition

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def profile():
    spec = importlib.util.spec_from_file_location("litert_profile", BENCHMARKS / "litert_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reason = module.unavailable()
    if reason:
        pytest.skip(reason)
    return module


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    ids = keras.Input((1,), dtype="int32", name="item")
    price = keras.Input((1,), name="price")
    vectors = keras.layers.Flatten()(keras.layers.Embedding(50, 8)(ids))
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([vectors, price]))
    model = keras.Model([ids, price], keras.layers.Dense(1, activation="sigmoid")(hidden))
    rows = {"item": np.arange(8, dtype="int32")[:, None], "price": np.ones((8, 1), "float32")}
    return litert(model, os.path.join(tmp_path_factory.mktemp("profile"), "m.tflite"), verification_data=rows)


def test_builtin_kernels_time_every_node_within_invoke(profile, tflite):
    times = profile.node_times(tflite, runs=50, warmup=5, builtin_kernels=True)
    nodes = [node for node, _ in times["nodes"]]
    assert nodes == list(range(len(litert_ops(tflite))))
    micros = [us for _, us in times["nodes"]]
    assert all(us >= 0 for us in micros) and times["invoke"] > 0
    # Events are whole microseconds per node and run: the nodes' sum stays within Invoke plus that rounding.
    assert sum(micros) <= times["invoke"] + len(micros)


def test_under_xnnpack_the_nodes_timed_are_those_left_to_litert_kernels(profile, tflite):
    times = profile.node_times(tflite, runs=50, warmup=5)
    ops = litert_ops(tflite)
    _, fallback = xnnpack_partition(tflite)
    assert Counter(ops[node] for node, _ in times["nodes"]) == Counter(fallback)
    assert len(times["nodes"]) < len(ops)  # the Dense layers run in XNNPACK, untimed per node here


def test_a_batch_of_rows_is_timed_too(profile, tflite):
    one = profile.node_times(tflite, runs=30, warmup=3, builtin_kernels=True)
    many = profile.node_times(tflite, runs=30, warmup=3, builtin_kernels=True, batch_size=4096)
    assert [node for node, _ in many["nodes"]] == [node for node, _ in one["nodes"]]
    # 4,096 rows through the Dense layers cost more than one row (the nodes' own times: a run's Invoke
    # event can also hold one-off work).
    assert sum(us for _, us in many["nodes"]) > sum(us for _, us in one["nodes"])


def test_xnnpacks_own_operators_are_timed_in_run_order(profile, tflite):
    times = profile.node_times(tflite, runs=20, warmup=3, batch_size=256)
    operators = [name for name, _ in times["xnnpack"]]
    # The two Dense layers run inside XNNPACK: its own operator list names them, one entry per operator.
    assert sum("Fully Connected" in name for name in operators) == 2, operators
    assert all(us >= 0 for _, us in times["xnnpack"])
    assert profile.node_times(tflite, runs=5, warmup=1, builtin_kernels=True)["xnnpack"] == []


def test_operator_events_that_do_not_repeat_one_runs_order_are_refused(profile):
    assert profile._per_operator([("a", 1), ("b", 2), ("a", 3), ("b", 4)], 2) == [("a", 2.0), ("b", 3.0)]
    for events in ([("a", 1), ("b", 2), ("a", 3)], [("a", 1), ("b", 2), ("b", 3), ("a", 4)]):
        with pytest.raises(RuntimeError, match="do not repeat"):
            profile._per_operator(events, 2)
