"""``.tflite`` files: signature and metadata, op lists, and a runner.

This module imports neither TensorFlow nor the rest of tfafm (numpy and
``ai_edge_litert`` only), so a serving process or a benchmark worker stays
light; :mod:`tfafm.export.bench` loads it by file path.

Every file tfafm writes has a ``serving_default`` SignatureDef (inputs named
after the model's inputs, outputs named ``prediction`` or after the model's
outputs), callable with ``Interpreter.get_signature_runner()`` on desktop or
``Interpreter.runSignature`` on Android, and a metadata entry
``tfafm_interface`` holding the JSON interface description (input names,
dtypes, shapes and vocabulary sizes; see :mod:`tfafm.export.signature`).
"""

from __future__ import annotations

import json
import os
from typing import Mapping, NamedTuple

import numpy as np

SIGNATURE_KEY = "serving_default"
METADATA_NAME = "tfafm_interface"


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:  # pragma: no cover - TF's copy
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def write_with_signature(flatbuffer: bytes, interface: Mapping, path: str, edit=None) -> None:
    """Writes ``flatbuffer`` to ``path`` with the ``serving_default`` SignatureDef and the
    ``tfafm_interface`` metadata added.

    ``interface`` is an interface dict (``inputs``: ``[{"name", ...}]``,
    ``outputs``: names). Subgraph inputs are matched by tensor name, else by
    the converter's order (sorted names); outputs follow the sorted output
    names, the order in which the converter flattens a dict of outputs.
    ``edit(model)``, if given, may change the unpacked model (the schema's
    object API) first. The file is written straight from the builder's
    buffer, without another copy.
    """
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    if edit is not None:
        edit(model)
    graph = model.subgraphs[0]
    names = [spec["name"] for spec in interface["inputs"]]
    tensor_names = {graph.tensors[i].name.decode(): i for i in graph.inputs}
    if set(names) <= set(tensor_names):
        inputs = [(name, tensor_names[name]) for name in names]
    else:
        inputs = list(zip(sorted(names), graph.inputs))
    outputs = list(zip(sorted(interface["outputs"]), graph.outputs))

    def tensor_map(name, index):
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name, int(index)
        return entry

    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE_KEY
    signature.subgraphIndex = 0
    signature.inputs = [tensor_map(n, i) for n, i in inputs]
    signature.outputs = [tensor_map(n, i) for n, i in outputs]
    model.signatureDefs = [signature]

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(dict(interface)).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()] + [entry]

    size = sum(0 if b.data is None else np.asarray(b.data).nbytes for b in model.buffers)
    builder = flatbuffers.Builder(size + len(flatbuffer) + (1 << 16))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with open(path, "wb") as f:
        f.write(memoryview(builder.Bytes)[builder.Head():])


def read_interface(path: str) -> dict | None:
    """The ``tfafm_interface`` metadata of a ``.tflite`` file as a dict, or None without it."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    model = _schema().Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            raw = model.Buffers(entry.Buffer()).DataAsNumpy()
            return json.loads(bytes(raw).decode())
    return None


def _interpreter(path: str, num_threads: int = 1, delegates: bool = True):
    """A LiteRT interpreter for ``path``; ``delegates=False`` keeps XNNPACK from taking over
    nodes, so that the node list (after ``allocate_tensors()`` too) is the file's op list."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # pragma: no cover - TF's deprecated copy
        from tensorflow.lite.python.interpreter import Interpreter, OpResolverType
    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(model_path=path, num_threads=num_threads, experimental_op_resolver_type=resolver)


def litert_ops(path: str) -> list[str]:
    """The operators a ``.tflite`` file runs, one entry per op (``GATHER``, ``FULLY_CONNECTED``, ...).

    Flex ops show up as ``"FlexXxx"`` and custom ops under their custom name;
    ``len()`` is the op count, ``set()`` the distinct ops.
    """
    return [detail["op_name"] for detail in _interpreter(path)._get_ops_details()]


def xnnpack_partition(path: str, num_threads: int = 1) -> tuple[list[str], list[str]]:
    """The ops of a ``.tflite`` file that LiteRT's default XNNPACK delegate takes over, and those
    left to LiteRT's own (reference or optimized) kernels, as this machine's interpreter
    partitions the graph.

    Returns ``(delegated, fallback)``, op names with one entry per op; together they are
    :func:`litert_ops`. A delegate node covers the ops between its input and output tensors.
    """
    interpreter = _interpreter(path, num_threads)
    interpreter.allocate_tensors()  # the default delegates apply here
    details = interpreter._get_ops_details()
    producer = {int(t): d["index"] for d in details if d["op_name"] != "DELEGATE" for t in d["outputs"]}
    by_index = {d["index"]: d for d in details}
    covered: set[int] = set()
    for delegate in (d for d in details if d["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in delegate["inputs"]}
        pending = [int(t) for t in delegate["outputs"]]
        while pending:
            tensor = pending.pop()
            node = producer.get(tensor)
            if tensor in boundary or node is None or node in covered:
                continue
            covered.add(node)
            pending.extend(int(t) for t in by_index[node]["inputs"] if t >= 0)
    ops = [d for d in details if d["op_name"] != "DELEGATE"]
    return ([d["op_name"] for d in ops if d["index"] in covered],
            [d["op_name"] for d in ops if d["index"] not in covered])


def builtin_op_names() -> frozenset[str]:
    """Names of the LiteRT builtin operators (``CUSTOM`` and ``DELEGATE`` excluded)."""
    names = {name for name in vars(_schema().BuiltinOperator) if name.isupper()}
    return frozenset(names - {"CUSTOM", "DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES"})


class TensorInfo(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]


def litert_tensor_types(path: str) -> list[TensorInfo]:
    """Every tensor of a ``.tflite`` file (weights included) with its dtype name and shape."""
    return [
        TensorInfo(d["name"], np.dtype(d["dtype"]).name, tuple(int(s) for s in d["shape"]))
        for d in _interpreter(path).get_tensor_details()
    ]


class LiteRTRunner:
    """Runs a ``.tflite`` exported by tfafm on feature-dict batches, through its signature.

    ``runner(features)`` maps input names to the signature's input tensors,
    resizes them when the batch size changes, and returns the first output
    (the probability, ``(batch, 1)``); :meth:`outputs` returns them all by name.
    """

    def __init__(self, path: str, num_threads: int = 1):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No LiteRT file at {path}.")
        self.path = path
        self.interpreter = _interpreter(path, num_threads=num_threads)
        signatures = self.interpreter.get_signature_list()
        if SIGNATURE_KEY not in signatures:
            raise ValueError(f"{path}: no {SIGNATURE_KEY!r} signature (not written by tfafm?).")
        runner = self.interpreter.get_signature_runner(SIGNATURE_KEY)
        self.inputs = runner.get_input_details()
        self.output_details = runner.get_output_details()
        self.output_names = list(signatures[SIGNATURE_KEY]["outputs"])
        self._batch = None

    @property
    def feature_names(self) -> list[str]:
        return list(self.inputs)

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            for detail in self.inputs.values():
                self.interpreter.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
            self.interpreter.allocate_tensors()
            self._batch = batch

    def set_inputs(self, features: Mapping) -> None:
        """Copies a feature batch into the interpreter's input tensors (resizing if needed)."""
        missing = [name for name in self.inputs if name not in features]
        if missing:
            raise ValueError(f"Features missing from the batch: {missing}.")
        batch = len(features[next(iter(self.inputs))])
        self._resize(batch)
        for name, detail in self.inputs.items():
            shape = (batch, *detail["shape"][1:])
            value = np.asarray(features[name]).reshape(shape).astype(detail["dtype"], copy=False)
            self.interpreter.set_tensor(detail["index"], value)

    def invoke(self) -> np.ndarray:
        """Runs the model on the inputs set last; returns the first output."""
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_details[self.output_names[0]]["index"])

    def outputs(self, features: Mapping) -> dict[str, np.ndarray]:
        """Every output, by signature name."""
        self.set_inputs(features)
        self.interpreter.invoke()
        return {name: self.interpreter.get_tensor(d["index"]) for name, d in self.output_details.items()}

    def __call__(self, features: Mapping) -> np.ndarray:
        self.set_inputs(features)
        return self.invoke()

    predict = __call__
