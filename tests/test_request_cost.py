"""request_cost: weight bytes and FLOPs of a batch-1 request, checked against hand counts."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfafm.errors import MissingFileError, UserError
from tfafm.export import litert, litert_ops
from tfafm.export.request_cost import RequestCost, _inner_dimension, request_cost
from tfafm.layers.lookup import InRangeEmbedding

VOCABULARY, DIM, SMALL, WIDE = 256, 8, 4, 256  # table 2048 and wide kernel 1024 elements: int8 in "dynamic"
FLOAT, INT8 = 4, 1


@pytest.fixture(scope="module")
def model():
    """One id per row -> its 8-wide embedding row -> Dense(8 -> 4, relu) -> Dense(4 -> 256), biases non-zero
    (the converter drops all-zero biases; the relu keeps it from folding the first bias into the second)."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((), dtype="int32", name="item")
    x = InRangeEmbedding(VOCABULARY, DIM, name="table")(ids)
    x = keras.layers.Dense(SMALL, "relu", name="small", bias_initializer="ones")(x)
    x = keras.layers.Dense(WIDE, name="wide", bias_initializer="ones")(x)
    return keras.Model(ids, x)


@pytest.mark.parametrize("quantization, weight_bytes", [(None, FLOAT), ("dynamic", INT8)])
def test_costs_match_hand_counts(model, quantization, weight_bytes, tmp_path):
    path = litert(model, str(tmp_path / "m.tflite"), quantization=quantization)
    dequantize = ["DEQUANTIZE"] if quantization else []  # the gathered int8 row back to float
    assert litert_ops(path) == ["GATHER", *dequantize, "FULLY_CONNECTED", "FULLY_CONNECTED"]

    # Tables and kernels of >= 1024 elements are int8 under "dynamic"; the small kernel and biases stay float32.
    row = DIM * weight_bytes  # one gathered row, not the table
    small = (DIM * SMALL + SMALL) * FLOAT
    wide = SMALL * WIDE * weight_bytes + WIDE * FLOAT
    flops = (
        len(dequantize) * DIM  # DEQUANTIZE: one per output element
        + 2 * DIM * SMALL  # Dense 8 -> 4
        + 2 * SMALL * WIDE  # Dense 4 -> 256
    )
    cost = request_cost(path)
    assert cost == RequestCost(bytes_touched=row + small + wide, flops=flops, ops=len(litert_ops(path)))
    assert cost.floor_seconds(1e9, 1e9) == pytest.approx((cost.bytes_touched + cost.flops) / 1e9)


def test_batch_matmul_inner_dimension():
    assert _inner_dimension((2, 5, 3), (2, 5, 7)) == 3  # x (.., M, K)
    assert _inner_dimension((2, 3, 5), (2, 5, 7)) == 3  # adj_x: x stored (.., K, M)
    assert _inner_dimension((4, 4), (4, 9)) == 4


def test_bad_files_name_the_file(tmp_path):
    missing = str(tmp_path / "none.tflite")
    with pytest.raises(MissingFileError, match="none.tflite"):
        request_cost(missing)
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(np.arange(64, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match="garbage.tflite"):
        request_cost(str(garbage))
