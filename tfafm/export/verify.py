"""Every exported file is loaded in its runtime and compared with its Keras model before it is
handed back.

:func:`verify_export` runs the file (LiteRT through its ``serving_default``
signature runner, ONNX in onnxruntime, a SavedModel through
``tf.saved_model.load``) on sample rows (the user's data when given, else rows
generated inside each input's valid range, :mod:`tfafm.compression.samples`)
and compares every output with the Keras model's. A file that does not load,
or whose outputs disagree beyond the tolerance of its quantization, is a
:class:`~tfafm.errors.UserError` naming the op and the layer at fault where
the runtime says which; the exports call it on the temporary file, so nothing
reaches the destination.

Tolerances (:data:`TOLERANCES`), on every output and row:

* float32: ``|file - keras| <= 1e-4 + 1e-4 |keras|`` (float16's below for a model with layers computing in
  float16 or bfloat16, a mixed-precision policy: the Keras outputs carry that rounding);
* float16 weights: ``<= 2e-2 + 2e-2 |keras|``;
* dynamic-range int8 (int8 weights, float activations): mean ``|file - keras|``
  at most ``0.01 (1 + mean |keras|)`` and, where the Keras outputs vary, a
  Spearman rank correlation of at least 0.99. Correct files stay far inside:
  on 86 files of the frontier benchmark (DeepFM and DCN-V2 on the Criteo,
  Avazu, Criteo-attribution samples and synthetic data, the original and AFM /
  SVD at 15x to 35x below float32) at most 0.0024 and at least 0.9987, on
  the test suite's at most 0.0008 and at least 0.9995, on the other zoo
  models a mean difference of at most 0.0037 (DLRM). A table written at 3x its int8 scale fails it;
* full-integer int8 (activations too, calibrated on representative data) is
  further from Keras wherever the rows leave the calibrated range: mean at
  most ``0.05 (1 + mean |keras|)`` and a rank correlation of at least 0.9
  (correct test-suite files reach 0.027 and 0.905 on generated rows).

Those are backstops for what the converter writes. The embedding tables tfafm
writes into the file itself (:class:`~tfafm.export.litert_export._TablePatch`)
are read back through LiteRT and compared with the layer's weights element by
element first, so a wrong scale or a damaged row is refused even where it
moves no output measurably.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import numpy as np

from tfafm.errors import UserError

FORMAT_NAMES = {"litert": "LiteRT", "onnx": "ONNX", "saved_model": "SavedModel"}


class Disagreement(UserError):
    """An exported file that runs but whose outputs disagree with its Keras model beyond tolerance."""


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How closely an exported file must follow its Keras model (see the module docstring)."""

    absolute: float | None = None
    relative: float = 0.0
    mean: float | None = None
    rank_correlation: float | None = None

    def violation(self, reference: np.ndarray, got: np.ndarray) -> str | None:
        """Why ``got`` is not close enough to ``reference``, or None.

        >>> TOLERANCES[None].violation(np.array([0.25, 0.5]), np.array([0.25, 0.50002])) is None
        True
        >>> TOLERANCES[None].violation(np.array([0.25, 0.5]), np.array([0.25, 0.6]))[:16]
        'max abs diff 0.1'
        """
        from tfafm.metrics import agreement

        reference = np.asarray(reference, dtype=np.float64).reshape(-1)
        got = np.asarray(got, dtype=np.float64).reshape(-1)
        if not np.isfinite(got).all():
            return "non-finite values (NaN or inf)"
        difference = np.abs(got - reference)
        if self.absolute is not None:
            allowed = self.absolute + self.relative * np.abs(reference)
            worst = int(np.argmax(difference - allowed))
            if difference[worst] > allowed[worst]:
                return (f"max abs diff {difference.max():.3g} (row {worst}: {got[worst]:.6g} vs {reference[worst]:.6g}; "
                        f"tolerance {self.absolute:g} + {self.relative:g} x |value|)")
            return None
        limit = self.mean * (1.0 + float(np.mean(np.abs(reference))))
        if difference.mean() > limit:
            return f"mean abs diff {difference.mean():.3g} (tolerance {limit:.3g})"
        varies = np.std(reference) > 1e-3 * (1.0 + float(np.mean(np.abs(reference))))
        if varies and self.rank_correlation is not None:
            correlation = agreement(reference, got)["rank_correlation"]
            if correlation < self.rank_correlation:
                return f"rank correlation {correlation:.3f} with the Keras outputs (at least {self.rank_correlation} needed)"
        return None


TOLERANCES: dict[str | None, Tolerance] = {
    None: Tolerance(absolute=1e-4, relative=1e-4),
    "float16": Tolerance(absolute=2e-2, relative=2e-2),
    "dynamic": Tolerance(mean=0.01, rank_correlation=0.99),
    "int8": Tolerance(mean=0.05, rank_correlation=0.9),
}

_QUANTIZATION_HINTS = {
    "dynamic": (" Dynamic-range int8 quantizes each row of a layer's inputs with one scale, which loses small "
                "values that sit beside large ones (for example embedding products concatenated with raw dense "
                "features); export with quantization 'float16' or None instead."),
}

_ORT_NODE = re.compile(r'In Node, \("([^"]*)", (\w+),')
_ORT_OP = re.compile(r"No Op registered for (\w+)")


def _layer_names(model) -> list[str]:
    from tfafm.graph import iter_layers

    return [layer.name for layer in iter_layers(model)]


def _where(node: str | None, op: str | None, model) -> str:
    """`` (op 'X' of layer 'y')`` for an error message, as far as known."""
    from tfafm.graph import layer_of_node

    parts = []
    if op:
        parts.append(f"op {op!r}")
    layer = layer_of_node(node, _layer_names(model)) if node else None
    if layer:
        parts.append(f"of layer {layer!r}")
    elif node:
        parts.append(f"at node {node!r}")
    return f" ({' '.join(parts)})" if parts else ""


_LOAD_PREFIX = re.compile(r"Load model from \S+ failed:\s*")


def _one_line(error: BaseException, limit: int = 300) -> str:
    """The error's message on one line, without the temporary path onnxruntime repeats."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    text = _LOAD_PREFIX.sub("", text)
    return text if len(text) <= limit else text[:limit] + "..."


def converter_error(converter: str, error: BaseException, model) -> UserError:
    """A one-line :class:`UserError` for a converter's failure on ``model``, naming the layer
    whose graph node the converter's message mentions."""
    from tfafm.graph import layer_of_node

    names = _layer_names(model)
    layer = next((found for token in re.findall(r"[\w./-]+", str(error))
                  if "/" in token and (found := layer_of_node(token, names))), None)
    where = f" at layer {layer!r}" if layer else ""
    return UserError(f"{converter} cannot convert model {model.name!r}{where}: {type(error).__name__}: "
                     f"{_one_line(error)}")


def _onnx_outputs(path: str, rows: Mapping[str, np.ndarray], model) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's Fail / InvalidGraph / InvalidArgument
        message = str(error)
        node = _ORT_NODE.search(message)
        op = node.group(2) if node else (_ORT_OP.search(message).group(1) if _ORT_OP.search(message) else None)
        culprit = _undefined_tensor_node(path) if "data type 0" in message else None
        where = _where(node.group(1) if node else culprit and culprit[0], op or (culprit and culprit[1]), model)
        raise UserError(f"onnxruntime cannot load the exported ONNX file{where}: {_one_line(error)}") from None
    dtypes = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32,
              "tensor(double)": np.float64, "tensor(string)": object, "tensor(bool)": bool}
    feed = {i.name: np.asarray(rows[i.name]).astype(dtypes.get(i.type, np.float32), copy=False)
            for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, feed)))
    except Exception as error:
        node = _ORT_NODE.search(str(error))
        where = _where(node.group(1) if node else None, node.group(2) if node else None, model)
        raise UserError(f"onnxruntime fails to run the exported ONNX file{where}: {_one_line(error)}") from None


def _undefined_tensor_node(path: str) -> tuple[str, str] | None:
    """``(node name, op type)`` of the first node reading a tensor of undefined type (0)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    undefined = {t.name for t in graph.initializer if t.data_type == 0}
    undefined |= {v.name for v in graph.value_info if v.type.tensor_type.elem_type == 0}
    for node in graph.node:
        typeless = any(a.type == onnx.AttributeProto.TENSOR and a.t.data_type == 0 for a in node.attribute)
        if typeless or undefined.intersection(node.input):
            return node.name, node.op_type
    return None


def _litert_outputs(path: str, rows: Mapping[str, np.ndarray], model) -> dict[str, np.ndarray]:
    from tfafm.export.litert_file import LiteRTRunner

    try:
        runner = LiteRTRunner(path)
    except Exception as error:
        raise UserError(f"LiteRT cannot load the exported file: {_one_line(error)}") from None
    try:
        return runner.outputs(rows)
    except Exception as error:
        raise UserError(f"LiteRT fails to run the exported file: {_one_line(error)}") from None


def _saved_model_outputs(path: str, rows: Mapping[str, np.ndarray], model) -> dict[str, np.ndarray]:
    import tensorflow as tf

    try:
        signature = tf.saved_model.load(path).signatures["serving_default"]
    except Exception as error:
        raise UserError(f"TensorFlow cannot load the exported SavedModel: {_one_line(error)}") from None
    specs = signature.structured_input_signature[1]
    try:
        outputs = signature(**{name: tf.constant(np.asarray(rows[name]), dtype=spec.dtype)
                               for name, spec in specs.items()})
    except Exception as error:
        node = re.search(r"Detected at node ([^\s]+)", str(error))
        where = _where(node.group(1) if node else None, None, model)
        raise UserError(f"The exported SavedModel fails to run{where}: {_one_line(error)}") from None
    return {name: value.numpy() for name, value in outputs.items()}


def _saved_model_session_outputs(path: str, rows: Mapping[str, np.ndarray], model) -> dict[str, np.ndarray]:
    """The SavedModel run as TF Serving runs it: loaded into a TF1 session by its signature's tensor names
    (the loader of ``saved_model_cli run``), which restores variables by the checkpoint's names only."""
    import tensorflow as tf

    from tfafm.logs import dropping

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        try:
            with dropping("tensorflow", "loader_impl) is deprecated"):  # the TF1 loader is what is checked
                meta_graph = tf.compat.v1.saved_model.load(session, ["serve"], path)
            signature = meta_graph.signature_def["serving_default"]
            feed = {info.name: np.asarray(rows[name]).astype(tf.as_dtype(info.dtype).as_numpy_dtype, copy=False)
                    for name, info in signature.inputs.items()}
            return session.run({name: info.name for name, info in signature.outputs.items()}, feed_dict=feed)
        except Exception as error:
            raise UserError("TensorFlow Serving's loader (a TF1 session, as `saved_model_cli run` loads it) cannot "
                            f"run the exported SavedModel: {_one_line(error)}") from None


_RUNNERS: dict[str, list[Callable[[str, Mapping[str, np.ndarray], Any], dict[str, np.ndarray]]]] = {
    "litert": [_litert_outputs], "onnx": [_onnx_outputs],
    "saved_model": [_saved_model_outputs, _saved_model_session_outputs],
}


def verification_rows(model, data=None, rows: int = 256) -> dict[str, np.ndarray]:
    """The rows an export is checked on: the first ``rows`` of ``data`` (anything
    :func:`tfafm.calibrate` takes), else rows generated inside each input's valid range."""
    from tfafm.compression.samples import generated_rows, sample_rows

    return sample_rows(model, data, rows) if data is not None else generated_rows(model, rows)


def _half_precision(model) -> str | None:
    """The half-precision compute dtype (``float16``, ``bfloat16``) of ``model``'s layers, if any computes in one
    (a mixed-precision policy): its outputs then carry that rounding, and float32 files are held to float16's
    tolerance."""
    from tfafm.graph import iter_layers

    dtypes = {getattr(layer, "compute_dtype", None) for layer in iter_layers(model)}
    return next((dtype for dtype in ("float16", "bfloat16") if dtype in dtypes), None)


def verify_rewrite(original, rewritten, rows: Mapping[str, np.ndarray], what: str) -> None:
    """Refuses a rewrite of ``original`` meant to compute the same function (``rewritten``, e.g. its fused
    form) whose outputs on ``rows`` differ beyond float32's tolerance (float16's for a model computing in
    half precision): checked in Keras before any conversion, so a rewrite bug is never hidden inside a
    quantized file's looser tolerance.

    Raises:
        UserError: naming ``what``, the output and the size of the difference.
    """
    from tfafm.compression.check import run_checked

    reference = run_checked(original, dict(rows), f"Model {original.name!r}")
    got = _by_name(list(reference), run_checked(rewritten, dict(rows), f"The {what} of model {original.name!r}"))
    tolerance = TOLERANCES["float16" if _half_precision(original) else None]
    for output, expected in reference.items():
        problem = tolerance.violation(expected, got[output])
        if problem:
            raise UserError(f"The {what} of model {original.name!r} disagrees with it on output {output!r}: "
                            f"{problem}. This is a tfafm bug: export without it (fuse=False, tfafm export "
                            "--no-fuse). Nothing was written.")


def _by_name(names: list[str], values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``values`` under ``names``: by name where they are the same names (a dict output, whose values Keras
    returns in the model's own key order where an interface lists them sorted), else in order (unnamed
    outputs, named by their layers in one model and by position in another)."""
    if set(values) == set(names):
        return {name: values[name] for name in names}
    return dict(zip(names, values.values()))


def verify_export(path: str, export_format: str, model, rows: Mapping[str, np.ndarray],
                  quantization: str | None = None) -> dict[str, dict[str, float]]:
    """Loads the exported file at ``path`` in its runtime, runs it on ``rows`` and compares
    every output with ``model``'s.

    Returns:
        ``{output name: agreement}`` (mean / max abs diff, rank correlation).

    Raises:
        UserError: the file does not load or run (naming the op and layer where
            the runtime says which) or lacks an output; :class:`Disagreement` (a
            ``UserError``) when it disagrees with the Keras model beyond
            :data:`TOLERANCES` ``[quantization]``.
    """
    from tfafm.compression.check import run_checked
    from tfafm.export.signature import interface
    from tfafm.metrics import agreement

    expected_names = list(interface(model, vocabularies=False).outputs)
    reference = _by_name(expected_names, run_checked(model, dict(rows), f"Model {model.name!r}"))
    name = FORMAT_NAMES[export_format]
    tolerance = TOLERANCES[quantization]
    half = _half_precision(model)
    if quantization is None and half:  # the Keras reference itself rounds to half precision
        tolerance = TOLERANCES["float16"]
    count = len(next(iter(rows.values())))
    for runner in _RUNNERS[export_format]:  # every runtime that loads the format
        got = runner(path, rows, model)
        missing = [output for output in expected_names if output not in got]
        if missing:
            raise UserError(f"The exported {name} file lacks output(s) {missing} (it has {sorted(got)}).")
        for output in expected_names:
            problem = tolerance.violation(reference[output], got[output])
            if problem:
                label = quantization or ("float32, against a model computing in " + half if half else "float32")
                raise Disagreement(f"The exported {name} file ({label}) disagrees with the Keras model {model.name!r} "
                                   f"on output {output!r} over {count} sample rows: {problem}. It was not written."
                                   + _QUANTIZATION_HINTS.get(quantization, ""))
    return {output: agreement(reference[output], got[output]) for output in expected_names}
