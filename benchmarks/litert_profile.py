"""Per-node times of a .tflite file from LiteRT's own profiler, through ctypes on the wheel's libLiteRt.so.

The Python LiteRT packages expose no per-op timer, but the LiteRT C API that
ai-edge-litert ships in ``libLiteRt.so`` has one (``LiteRtCompiledModelGetProfiler``).
This module drives it: a compiled model on the CPU with profiling enabled, zero
inputs, ``runs`` timed runs, and the profiler's events read back.

It relies on details of that build that no public header states, so it runs only
on the version it was checked against (:data:`VERIFIED`; :func:`unavailable` says why
not otherwise): options are passed as TOML strings under the identifiers ``"xnnpack"``
(``num_threads``, ``kernel_mode``: 2 runs every node with LiteRT's builtin kernels) and
``"runtime_options_string"`` (``enable_profiling``); an event record is 104 bytes
(tag pointer at 0, event type at 8, elapsed microseconds at 24, node index at 80);
a ranked tensor type keeps its rank in the low 7 bits at offset 4 and its int32 dims
from offset 8; a host-memory buffer type is 1. Events are whole microseconds per node and run (averages over many
runs are meaningful), and XNNPACK reports its ops rounded down to whole microseconds,
so under XNNPACK the nodes left to LiteRT's kernels and the whole ``Invoke`` are timed usefully at
batch 1; with ``builtin_kernels=True`` every node is. XNNPACK's own operators (a delegate node runs
several) are events of type 8 in this build, named by XNNPACK (``Fully Connected (NC, QDU8, F32,
QC8W) GEMM``), one per operator and run in run order: timed usefully for a batch of rows, where
they take tens of microseconds.
"""

from __future__ import annotations

import ctypes
import os
import struct
from importlib.metadata import PackageNotFoundError, version

import numpy as np

VERIFIED = "2.3.0"
_EVENT = struct.Struct("<Qi4xQQ48xQ16x")  # tag, type, start, elapsed, (memory), node, (rest): 104 bytes
_OPERATOR_EVENT, _DEFAULT_EVENT, _XNNPACK_EVENT = 2, 1, 8
_TENSOR_TYPE_BYTES = 256  # room for LiteRtRankedTensorType (72 bytes in this build)
_CPU = 1
_HOST_MEMORY = 1  # kLiteRtTensorBufferTypeHostMemory
_MAX_ELEMENT_BYTES = 8  # a hand-sized buffer holds any element type
_libc = ctypes.CDLL(None)
_libc.strdup.restype, _libc.strdup.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
_FREE = ctypes.cast(_libc.free, ctypes.c_void_p).value


def unavailable() -> str | None:
    """Why the profiler cannot run here, or None."""
    try:
        found = version("ai-edge-litert")
    except PackageNotFoundError:
        return "ai-edge-litert is not installed"
    if found != VERIFIED:
        return f"per-node times are read with details checked on ai-edge-litert {VERIFIED} only (found {found})"
    return None


class _Api:
    """The C functions used, each called with its status checked."""

    def __init__(self):
        import ai_edge_litert

        self.lib = ctypes.CDLL(os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so"))

    def __call__(self, name: str, *args):
        function = getattr(self.lib, name)
        function.restype = ctypes.c_int
        status = function(*args)
        if status != 0:
            raise RuntimeError(f"LiteRT {name} failed with status {status}")

    def destroy(self, name: str, handle) -> None:
        if handle.value:
            function = getattr(self.lib, name)
            function.restype = None
            function(handle)


def _option(api: _Api, options, identifier: str, toml: str) -> None:
    payload = _libc.strdup(toml.encode())  # the runtime frees it with the destructor given
    opaque = ctypes.c_void_p()
    api("LiteRtCreateOpaqueOptions", identifier.encode(), ctypes.c_void_p(payload), ctypes.c_void_p(_FREE),
        ctypes.byref(opaque))
    api("LiteRtAddOpaqueOptions", options, opaque)


def node_times(path: str, runs: int = 200, warmup: int = 20, builtin_kernels: bool = False,
               batch_size: int = 1) -> dict:
    """Mean microseconds per run of each node LiteRT's kernels run (1 thread, zero inputs, the
    inputs' dynamic dimensions taken as ``batch_size``).

    Returns ``{"nodes": [(node index, microseconds)], "invoke": microseconds, "xnnpack": [(operator,
    microseconds)]}``: ``xnnpack`` lists XNNPACK's own operators in run order (the delegate nodes' insides;
    empty with ``builtin_kernels``, where every node is run by LiteRT's builtin kernels).
    """
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    api = _Api()
    environment, model, options, compiled = (ctypes.c_void_p() for _ in range(4))
    buffers = []
    try:
        api("LiteRtCreateEnvironment", 0, None, ctypes.byref(environment))
        api("LiteRtCreateModelFromFile", environment, os.fsencode(path), ctypes.byref(model))
        api("LiteRtCreateOptions", ctypes.byref(options))
        api("LiteRtSetOptionsHardwareAccelerators", options, _CPU)
        _option(api, options, "xnnpack", "num_threads = 1\n" + ("kernel_mode = 2\n" if builtin_kernels else ""))
        _option(api, options, "runtime_options_string", "enable_profiling = true\n")
        api("LiteRtCreateCompiledModel", environment, model, options, ctypes.byref(compiled))
        profiler, signature = ctypes.c_void_p(), ctypes.c_void_p()
        api("LiteRtCompiledModelGetProfiler", compiled, ctypes.byref(profiler))
        if not profiler.value:
            raise RuntimeError("LiteRT gave the compiled model no profiler")
        api("LiteRtGetModelSignature", model, ctypes.c_size_t(0), ctypes.byref(signature))
        tensors = {}
        for kind in ("Input", "Output"):
            count = ctypes.c_size_t()
            api(f"LiteRtGetNumSignature{kind}s", signature, ctypes.byref(count))
            tensors[kind] = (ctypes.c_void_p * count.value)(
                *[_zero_buffer(api, environment, compiled, signature, kind, i, buffers, batch_size)
                  for i in range(count.value)])
        arguments = (compiled, ctypes.c_size_t(0), ctypes.c_size_t(len(tensors["Input"])), tensors["Input"],
                     ctypes.c_size_t(len(tensors["Output"])), tensors["Output"])
        for _ in range(warmup):
            api("LiteRtRunCompiledModel", *arguments)
        api("LiteRtResetProfiler", profiler)
        api("LiteRtStartProfiler", profiler)
        for _ in range(runs):
            api("LiteRtRunCompiledModel", *arguments)
        api("LiteRtStopProfiler", profiler)
        events = _events(api, profiler)
    finally:
        for buffer in buffers:
            api.destroy("LiteRtDestroyTensorBuffer", buffer)
        for name, handle in (("LiteRtDestroyCompiledModel", compiled), ("LiteRtDestroyOptions", options),
                             ("LiteRtDestroyModel", model), ("LiteRtDestroyEnvironment", environment)):
            api.destroy(name, handle)
    totals: dict[int, int] = {}
    invoke = 0
    for kind, tag, elapsed, node in events:
        if kind == _OPERATOR_EVENT:
            totals[node] = totals.get(node, 0) + elapsed
        elif kind == _DEFAULT_EVENT and tag == "Invoke":
            invoke += elapsed
    return {"nodes": sorted((node, total / runs) for node, total in totals.items()), "invoke": invoke / runs,
            "xnnpack": _per_operator([(tag, elapsed) for kind, tag, elapsed, _ in events if kind == _XNNPACK_EVENT],
                                     runs)}


def _per_operator(events: list[tuple[str, int]], runs: int) -> list[tuple[str, float]]:
    """``(name, mean microseconds)`` per XNNPACK operator from ``runs`` runs' events, each run listing every
    operator once in the same order."""
    per_run = len(events) // runs
    if per_run * runs != len(events) or any(events[k][0] != events[k % per_run][0] for k in range(len(events))):
        raise RuntimeError(f"{len(events)} XNNPACK operator events over {runs} runs do not repeat one run's order")
    return [(events[k][0], sum(elapsed for _, elapsed in events[k::per_run]) / runs) for k in range(per_run)]


def _zero_buffer(api: _Api, environment, compiled, signature, kind: str, index: int, buffers: list,
                 batch_size: int):
    """A zeroed tensor buffer for one signature input or output, its dynamic dims taken as ``batch_size``
    (an input is resized to that first; a buffer for a resized tensor is sized by hand, as the compiled
    model's requirements stay those of the stored shape)."""
    tensor, buffer = ctypes.c_void_p(), ctypes.c_void_p()
    api(f"LiteRtGetSignature{kind}TensorByIndex", signature, ctypes.c_size_t(index), ctypes.byref(tensor))
    tensor_type = ctypes.create_string_buffer(_TENSOR_TYPE_BYTES)
    api("LiteRtGetRankedTensorType", tensor, tensor_type)
    rank = struct.unpack_from("<I", tensor_type, 4)[0] & 0x7F
    dims, resized = [], False
    for dim in range(min(rank, 8)):
        if struct.unpack_from("<i", tensor_type, 8 + 4 * dim)[0] < 0:
            struct.pack_into("<i", tensor_type, 8 + 4 * dim, batch_size)
            resized = batch_size != 1
        dims.append(struct.unpack_from("<i", tensor_type, 8 + 4 * dim)[0])
    if kind == "Input" and resized:
        api("LiteRtCompiledModelResizeInputTensor", compiled, ctypes.c_size_t(0), ctypes.c_size_t(index),
            (ctypes.c_int * len(dims))(*dims), ctypes.c_size_t(len(dims)))
    if resized or (kind == "Output" and batch_size != 1):
        size = _MAX_ELEMENT_BYTES * max(1, int(np.prod(dims)))
        api("LiteRtCreateManagedTensorBuffer", environment, _HOST_MEMORY, tensor_type, ctypes.c_size_t(size),
            ctypes.byref(buffer))
    else:
        requirements = ctypes.c_void_p()
        api(f"LiteRtGetCompiledModel{kind}BufferRequirements", compiled, ctypes.c_size_t(0), ctypes.c_size_t(index),
            ctypes.byref(requirements))
        api("LiteRtCreateManagedTensorBufferFromRequirements", environment, tensor_type, requirements,
            ctypes.byref(buffer))
    buffers.append(buffer)
    api("LiteRtClearTensorBuffer", buffer)
    return buffer.value


def _events(api: _Api, profiler) -> list[tuple[int, str, int, int]]:
    """``(event type, tag, elapsed microseconds, node index)`` of every recorded event."""
    count = ctypes.c_int()
    api("LiteRtGetNumProfilerEvents", profiler, ctypes.byref(count))
    raw = ctypes.create_string_buffer(_EVENT.size * max(count.value, 1))
    if count.value:
        api("LiteRtGetProfilerEvents", profiler, count, raw)
    events = []
    for k in range(count.value):
        tag, kind, _, elapsed, node = _EVENT.unpack_from(raw.raw, k * _EVENT.size)
        events.append((kind, ctypes.string_at(tag).decode(errors="replace") if tag else "", elapsed, node))
    return events
