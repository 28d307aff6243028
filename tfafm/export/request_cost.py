"""What one batch-1 request to a ``.tflite`` file costs at least: weight bytes read and FLOPs.

:func:`request_cost` walks the ops of a LiteRT file with its inputs resized
to batch 1 and adds up, per op:

* the bytes of the constant tensors (weights) it reads -- a constant is a
  tensor that no op produces and that is not a model input;
* its floating-point operations.

Per op type:

* ``FULLY_CONNECTED``: the weight matrix ``(out, in)`` is read whole
  (elements x itemsize: an int8 weight is 1 byte an element); FLOPs
  ``2 * rows * in * out``.
* ``BATCH_MATMUL``: constant operands are read whole; FLOPs
  ``2 * M * K * N * batch``.
* ``GATHER`` / ``EMBEDDING_LOOKUP``: only the gathered rows of a constant
  table are touched (output elements x the table's itemsize); no FLOPs.
* ``DEQUANTIZE`` of a constant (float16 weights): LiteRT dequantizes it once,
  on the first run, and keeps the result, so it costs nothing per request and
  its float32 output counts as a constant of the ops reading it.
* any other op: constant inputs are read whole; FLOPs ~ its output elements.

Activations are not counted: the figure is a floor, the least a request must
read and compute. Only the main subgraph is walked (tfafm's exports have no
control flow). :meth:`RequestCost.floor_seconds` turns it into a time given a
machine's read bandwidth and arithmetic peak.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from tfafm.errors import MissingFileError, UserError
from tfafm.export.litert_file import _interpreter

_TABLE_INPUT = {"GATHER": 0, "EMBEDDING_LOOKUP": 1}  # which input of a lookup is the table


@dataclass(frozen=True)
class RequestCost:
    """The floor cost of one batch-1 request: weight bytes touched, FLOPs, and the file's op count."""

    bytes_touched: int
    flops: int
    ops: int

    def floor_seconds(self, bytes_per_second: float, flops_per_second: float) -> float:
        """Time to read :attr:`bytes_touched` at ``bytes_per_second`` plus compute :attr:`flops`
        at ``flops_per_second``."""
        return self.bytes_touched / bytes_per_second + self.flops / flops_per_second


@dataclass(frozen=True)
class _Tensor:
    shape: tuple[int, ...]
    itemsize: int

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.elements * self.itemsize


def request_cost(path: str) -> RequestCost:
    """The :class:`RequestCost` of a batch-1 request to the ``.tflite`` file at ``path``.

    Raises:
        MissingFileError: no file at ``path``.
        UserError: ``path`` is not a LiteRT file that can be loaded at batch 1.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"No LiteRT file at {path}.")
    try:
        interpreter = _batch_one_interpreter(path)
    except (ValueError, RuntimeError) as error:  # not a flatbuffer, or not resizable to batch 1
        raise UserError(f"{path}: cannot load it as a LiteRT model at batch 1 ({type(error).__name__}).") from None
    # ``_get_ops_details`` is a private Interpreter method (ai-edge-litert 2.x, TF 2.21; pinned by
    # tests/test_request_cost.py): the public API does not list the ops and their tensors.
    ops = [(op["op_name"], [int(i) for i in op["inputs"]], [int(i) for i in op["outputs"]])
           for op in interpreter._get_ops_details()]
    tensor = _tensor_reader(interpreter)
    constants = _constants(ops, interpreter)
    total_bytes = total_flops = 0
    for name, inputs, outputs in ops:
        if name == "DEQUANTIZE" and inputs[0] in constants:
            constants.update(outputs)
            continue
        op_bytes, op_flops = _op_cost(name, inputs, outputs, constants, tensor)
        total_bytes += op_bytes
        total_flops += op_flops
    return RequestCost(bytes_touched=total_bytes, flops=total_flops, ops=len(ops))


def _batch_one_interpreter(path: str):
    """An interpreter of ``path`` (no delegates) with every input resized to batch 1 and tensors allocated."""
    interpreter = _interpreter(path, delegates=False)
    for detail in interpreter.get_input_details():
        if len(detail["shape"]):
            interpreter.resize_tensor_input(detail["index"], [1, *detail["shape"][1:]])
    interpreter.allocate_tensors()
    return interpreter


def _tensor_reader(interpreter) -> Callable[[int], _Tensor]:
    """``tensor(index)``: the shape and itemsize of a tensor of the main subgraph, looked up once."""
    tensors: dict[int, _Tensor] = {}

    def tensor(index: int) -> _Tensor:
        if index not in tensors:
            # Private too (same pin): get_tensor_details() would read every tensor, most unused here.
            detail = interpreter._get_tensor_details(index, 0)
            tensors[index] = _Tensor(tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]).itemsize)
        return tensors[index]

    return tensor


def _constants(ops: Sequence[tuple[str, list[int], list[int]]], interpreter) -> set[int]:
    """Indices of the tensors ops read that no op produces and that are not model inputs."""
    produced = {i for _, _, outputs in ops for i in outputs}
    model_inputs = {int(detail["index"]) for detail in interpreter.get_input_details()}
    return {i for _, inputs, _ in ops for i in inputs} - produced - model_inputs - {-1}


def _op_cost(
    name: str, inputs: Sequence[int], outputs: Sequence[int], constants: set[int], tensor: Callable[[int], _Tensor]
) -> tuple[int, int]:
    """``(bytes of constants read, FLOPs)`` of one op (see the module docstring)."""
    out_elements = sum(tensor(i).elements for i in outputs)
    read = {i: tensor(i).nbytes for i in inputs if i in constants}
    if name in _TABLE_INPUT:
        table = inputs[_TABLE_INPUT[name]]
        if table in read:
            read[table] = out_elements * tensor(table).itemsize
        return sum(read.values()), 0
    if name == "FULLY_CONNECTED":
        return sum(read.values()), 2 * out_elements * tensor(inputs[1]).shape[-1]
    if name == "BATCH_MATMUL":
        inner = _inner_dimension(tensor(inputs[0]).shape, tensor(outputs[0]).shape)
        return sum(read.values()), 2 * out_elements * inner
    return sum(read.values()), out_elements


def _inner_dimension(x_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """``K`` of a batch matmul ``x (.., M, K) @ y (.., K, N) -> (.., M, N)``, whether ``x`` is transposed
    (``adj_x``, ``x`` stored ``(.., K, M)``) or not: ``x``'s last axis unless its second last is not ``M``."""
    return x_shape[-1] if x_shape[-2] == out_shape[-2] else x_shape[-2]

