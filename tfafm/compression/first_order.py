"""A first-order term read from the fields' embeddings (``compress(first_order="codes")``).

DeepFM, Wide&Deep, NFM, xDeepFM and FiBiNET add one weight per sparse field and
id to their logit (:class:`~tfafm.models.layers.LinearTerms`): a table as long as
all vocabularies together, which no factorisation shrinks and which, at one int8
byte per id beside a few bytes of codes, caps how small such a model can get. In a
trained model those weights are mostly a linear function of the same id's
embedding, so the term can be read from the fields' (compressed) embedding
outputs ``v_f``::

    sum_f w_f[id_f]  ~  concat_f(v_f) @ a + c

one ``Dense(1)`` on the concatenated embedding outputs instead of the table; a
fused export folds it into the codes (no table and no gather of its own).

``a`` and ``c`` are least-squares fits on the embeddings as compression leaves
them (their codes, for a factored table), two ways: field by field over the ids
of calibration data, each id weighted by how often it occurs there; and jointly
across fields over calibration rows, where one field's codes may correct
another's error (fields' ids correlate: on the Criteo sample, DeepFM at 8x,
the joint fit's error on held-out test rows is 0.66x the field-by-field one's,
6.3e-4 against 9.5e-4, for a term of variance 0.017). Of the two, the
one with the smaller error on held-out calibration rows is kept, and that
measured error ``e`` (added to the logit) is what the term costs the predictions,
``E[p (1 - p)] E[e^2]`` in the currency of ``criterion="loss"``: compression reads
the term from the embeddings only where that, plus what the freed bytes cost the
tables, is below what keeping the table costs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras
import numpy as np

from tfafm_choices import FIRST_ORDER as CHOICES
from tfafm.compression.id_counts import IdCounts, count_guarded_ids
from tfafm.compression.report import weight_bytes
from tfafm.errors import UserError
from tfafm.graph import call_counts, call_sources, model_inputs, pack_inputs
from tfafm.linalg.factorize import Factors
from tfafm.models.layers import ClipToVocabulary, LinearTerms

# Every HELD_OUT-th kept row measures the fits' errors, the others fit jointly.
HELD_OUT = 5
# Below this many held-out rows the error is the field-by-field fit's prediction, not a measurement.
MIN_HELD_OUT = 100
# The joint fit needs at least this many fitting rows per coefficient.
ROWS_PER_COEFFICIENT = 4
_CHUNK = 4096  # rows per block of the design matrix


@dataclasses.dataclass(frozen=True)
class FirstOrderPlan:
    """A :class:`LinearTerms` whose every field's ids also feed one embedding.

    Attributes:
        linear: the first-order layer.
        guard: the :class:`ClipToVocabulary` whose outputs it reads.
        embeddings: per input of ``linear`` (its field order), the embedding layer reading
            the same guarded ids.
    """

    linear: Any
    guard: Any
    embeddings: tuple

    @property
    def width(self) -> int:
        """Width of the concatenated embedding outputs the term is read from."""
        return sum(int(layer.output_dim) for layer in self.embeddings)

    def freed_bytes(self, quantization: str | None) -> int:
        """File bytes saved by reading the term from the embeddings: its table, less the Dense(1)."""
        table = weight_bytes((sum(self.linear.vocabulary_sizes), 1), quantization)
        dense = weight_bytes((self.width, 1), quantization) + weight_bytes((1,), quantization)
        return table - dense


@dataclasses.dataclass(frozen=True)
class FirstOrderFit:
    """``sum_f w_f[id_f] ~ concat_f(v_f) @ kernel + bias`` and what it misses.

    Attributes:
        kernel: ``(width, 1)`` float32.
        bias: ``(1,)`` float32.
        variance: the term's variance on calibration rows.
        residual: the mean squared error of the fit on ``held_out`` calibration rows it was not fitted
            on (with fewer than :data:`MIN_HELD_OUT` of them: the field-by-field fit's own prediction,
            fields taken as independent).
        loss: what that costs the predictions (``E[p (1 - p)] * residual``).
        joint: whether the fit is the joint one across fields (else field by field).
        held_out: the rows ``residual`` was measured on (0: predicted).
    """

    kernel: np.ndarray
    bias: np.ndarray
    variance: float
    residual: float
    loss: float
    joint: bool = False
    held_out: int = 0

    @property
    def kept(self) -> float:
        """Share of the term's variance the fit keeps."""
        return 1.0 - self.residual / self.variance if self.variance > 0 else 1.0


def find_plan(model: keras.Model) -> FirstOrderPlan | None:
    """The model's :class:`LinearTerms` read from its fields' embeddings, or None.

    Needs a functional single-output model in which the first-order layer is called
    once on outputs of one :class:`ClipToVocabulary` guard, and each of those guarded
    id tensors feeds exactly one ``keras.layers.Embedding`` (called once, no
    ``mask_zero``, not quantized) whose output is ``(batch, dim)``.
    """
    if isinstance(model, keras.Sequential) or len(model.outputs) != 1:
        return None
    calls, sources = call_counts(model), call_sources(model)
    layers = {layer.name: layer for layer in model.layers}
    readers: dict[tuple[str, int], list] = {}
    for name, inputs in sources.items():
        layer = layers.get(name)
        if len(inputs) == 1 and isinstance(layer, keras.layers.Embedding):
            readers.setdefault(inputs[0], []).append(layer)
    for name, inputs in sources.items():
        linear = layers.get(name)
        if type(linear) is not LinearTerms or calls.get(id(linear)) != 1 or not inputs:
            continue
        guard = layers.get(inputs[0][0])
        if (not isinstance(guard, ClipToVocabulary) or calls.get(id(guard)) != 1
                or any(source != guard.name for source, _ in inputs)
                or [guard.vocabulary_sizes[index] for _, index in inputs] != linear.vocabulary_sizes):
            continue
        embeddings = []
        for field, source in enumerate(inputs):
            found = readers.get(source, [])
            if len(found) != 1 or not _plain_lookup(found[0], calls, linear.vocabulary_sizes[field]):
                break
            embeddings.append(found[0])
        else:
            return FirstOrderPlan(linear, guard, tuple(embeddings))
    return None


def _plain_lookup(layer, calls: dict[int, int], vocabulary: int) -> bool:
    return (calls.get(id(layer)) == 1 and not layer.mask_zero and not layer.quantization_mode
            and layer.input_dim >= vocabulary and len(layer.output.shape) == 2)


def count_ids(model: keras.Model, plan: FirstOrderPlan, data, steps: int | None = None,
              batch_size: int = 1024) -> IdCounts:
    """Counts the guarded ids of each field of ``plan``'s first-order term over ``data`` (at most
    ``steps`` batches): :func:`~tfafm.compression.id_counts.count_guarded_ids`."""
    indices = [index for _, index in call_sources(model)[plan.linear.name]]
    return count_guarded_ids(model, plan.guard, indices, data, steps, batch_size)


@dataclasses.dataclass(frozen=True)
class _Field:
    """One field's codes for the ids seen in calibration, and its own least-squares fit on them."""

    offset: int  # of its weights in the first-order table
    position: np.ndarray  # id -> row of ``codes`` (-1: never seen)
    codes: np.ndarray  # (ids seen, k) float64
    up: np.ndarray  # (k, d): codes -> embedding outputs ``v = codes @ up + up_bias``
    up_bias: np.ndarray
    on_codes: np.ndarray  # (k,) the field-by-field fit, on the codes
    intercept: float
    variance: float
    residual: float


def fit(plan: FirstOrderPlan, counts: IdCounts,
        factors_of: Callable[[Any, np.ndarray], Factors | None]) -> FirstOrderFit:
    """Fits the term on the embeddings as compression leaves them: field by field and jointly
    across fields, keeping the one with the smaller error on held-out calibration rows.

    ``factors_of(embedding, rows)`` gives the factors of an embedding computed on
    ``rows`` of its table (its down factor then holds those rows' codes), or None
    for a table left whole.
    """
    weights = plan.linear.weights_table.numpy()[:, 0].astype(np.float64)
    fields = [_field(plan.linear.offsets[f], embedding, counts.counts[f], weights, factors_of)
              for f, embedding in enumerate(plan.embeddings)]
    solution = (np.concatenate([f.on_codes for f in fields]), sum(f.intercept for f in fields))
    variance, residual = sum(f.variance for f in fields), sum(f.residual for f in fields)
    joint, held_out = False, 0
    is_held_out = np.arange(len(counts.sample)) % HELD_OUT == 0
    if is_held_out.sum() >= MIN_HELD_OUT:
        held, fitting = counts.sample[is_held_out], counts.sample[~is_held_out]
        variance = float(np.var(_targets(fields, counts.sample, weights)))
        residual, held_out = _error(fields, held, weights, solution), len(held)
        if len(fitting) >= ROWS_PER_COEFFICIENT * (len(solution[0]) + 1):
            error = _error(fields, held, weights, _joint(fields, fitting, weights))
            if error < residual:
                solution, residual, joint = _joint(fields, counts.sample, weights), error, True
    kernels, bias, start = [], solution[1], 0
    for f in fields:
        on_codes = solution[0][start:start + len(f.on_codes)]
        start += len(f.on_codes)
        # v - up_bias = codes @ up, and ``up`` has independent rows: the kernel on v with up @ kernel = on_codes.
        kernels.append(np.linalg.lstsq(f.up, on_codes, rcond=None)[0])
        bias -= float(f.up_bias @ kernels[-1])
    kernel = np.concatenate(kernels)[:, None].astype(np.float32)
    return FirstOrderFit(kernel, np.array([bias], dtype=np.float32), variance, residual,
                         counts.fisher_weight * residual, joint, held_out)


def _field(offset: int, embedding, counts: np.ndarray, weights: np.ndarray, factors_of) -> _Field:
    ids = np.flatnonzero(counts)
    position = np.full(len(counts), -1)
    position[ids] = np.arange(len(ids))
    rows = embedding.embeddings.numpy()[ids].astype(np.float64)  # only the ids seen: no float64 table
    factors = factors_of(embedding, rows) if len(ids) else None
    if factors is None:
        codes, up, up_bias = rows, np.eye(rows.shape[1]), np.zeros(rows.shape[1])
    else:
        codes = factors.down.astype(np.float64)
        up, up_bias = factors.up.astype(np.float64), factors.up_bias.astype(np.float64)
    share = counts[ids] / counts[ids].sum() if len(ids) else ids.astype(np.float64)
    on_codes, intercept, variance, residual = _least_squares(codes, weights[offset + ids], share)
    return _Field(offset, position, codes, up, up_bias, on_codes, intercept, variance, residual)


def _least_squares(codes, targets, share) -> tuple[np.ndarray, float, float, float]:
    """Weighted least squares of ``targets`` on ``codes`` (rows weighted by ``share``, an intercept
    added): ``(kernel (k,), intercept, variance, residual)``."""
    if len(targets) == 0:
        return np.zeros(codes.shape[1]), 0.0, 0.0, 0.0
    code_mean, target_mean = share @ codes, float(share @ targets)
    centred, deviation = codes - code_mean, targets - target_mean
    gram = (centred * share[:, None]).T @ centred
    moment = (centred * share[:, None]).T @ deviation
    kernel = np.linalg.lstsq(gram, moment, rcond=1e-10)[0]
    missed = deviation - centred @ kernel
    return kernel, target_mean - float(code_mean @ kernel), float(share @ deviation ** 2), float(share @ missed ** 2)


def _blocks(fields: list[_Field], ids: np.ndarray, weights: np.ndarray):
    """``(codes of all fields side by side, first-order term)`` of the rows of ``ids``, block by block."""
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        yield (np.concatenate([f.codes[f.position[chunk[:, i]]] for i, f in enumerate(fields)], axis=1),
               _targets(fields, chunk, weights))


def _targets(fields: list[_Field], ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return sum(weights[f.offset + ids[:, i]] for i, f in enumerate(fields))


def _joint(fields: list[_Field], ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares of the term on all fields' codes over the rows of ``ids`` (an intercept added),
    from float64 moments accumulated block by block."""
    width = sum(len(f.on_codes) for f in fields)
    rows, code_sum, target_sum = 0, np.zeros(width), 0.0
    gram, moment = np.zeros((width, width)), np.zeros(width)
    for codes, targets in _blocks(fields, ids, weights):
        rows += len(targets)
        code_sum += codes.sum(axis=0)
        target_sum += float(targets.sum())
        gram += codes.T @ codes
        moment += codes.T @ targets
    code_mean, target_mean = code_sum / rows, target_sum / rows
    gram = gram / rows - np.outer(code_mean, code_mean)
    moment = moment / rows - code_mean * target_mean
    kernel = np.linalg.lstsq(gram, moment, rcond=1e-10)[0]
    return kernel, target_mean - float(code_mean @ kernel)


def _error(fields: list[_Field], ids: np.ndarray, weights: np.ndarray, solution) -> float:
    """Mean squared error of ``solution = (kernel on the codes, intercept)`` on the rows of ``ids``."""
    kernel, intercept = solution
    total = sum(float(np.sum((codes @ kernel + intercept - targets) ** 2))
                for codes, targets in _blocks(fields, ids, weights))
    return total / len(ids)


def rewire(plan: FirstOrderPlan, first_order: FirstOrderFit):
    """A ``call_hook`` for :func:`~tfafm.compression.rewrite.rebuild`: the first-order layer's call
    becomes ``Dense(1)`` on the concatenated outputs of the (re-created) embeddings of its fields."""
    fields = {id(layer): i for i, layer in enumerate(plan.embeddings)}
    outputs: dict[int, Any] = {}  # field -> its embedding's output in the new graph

    def hook(original, new, layer_for, *args, **kwargs):
        if id(original) in fields:
            field = fields[id(original)]
            if field not in outputs:
                outputs[field] = new(*args, **kwargs)
            return outputs[field]
        if original is not plan.linear:
            return None
        # Each field's embedding reads exactly these guarded ids: one the graph has not reached yet
        # is called here, and its own call later returns the same output.
        for field, ids in enumerate(args[0]):
            if field not in outputs:
                outputs[field] = layer_for(plan.embeddings[field])(ids)
        linear = plan.linear
        joined = keras.layers.Concatenate(name=f"{linear.name}_fields")([outputs[f] for f in range(len(fields))])
        dense = keras.layers.Dense(1, name=linear.name, dtype=linear.dtype_policy)
        result = dense(joined)
        dense.set_weights([first_order.kernel, first_order.bias])
        return result

    return hook


def check(model: keras.Model, compressed: keras.Model, plan: FirstOrderPlan, first_order: FirstOrderFit,
          rows: dict[str, np.ndarray]) -> float:
    """The mean squared difference, on ``rows``, between the original first-order term and what the
    compressed model reads in its place; returns it.

    Raises:
        UserError: it exceeds the term's own variance plus the fit's residual (worse than dropping the
            term's variation altogether, where an honest fit's error is near its residual): the term was
            wired or fitted wrongly, and the compressed model is not handed back.
    """
    terms = []
    for source, layer in ((model, plan.linear), (compressed, compressed.get_layer(plan.linear.name))):
        probe = keras.Model(source.input, layer.output)
        terms.append(np.asarray(probe(pack_inputs(source, model_inputs(source, rows)), training=False),
                                dtype=np.float64).reshape(-1))
    error = float(np.mean((terms[0] - terms[1]) ** 2))
    limit = first_order.variance + first_order.residual + 1e-8
    if not error <= limit:
        raise UserError(
            f"The first-order term {plan.linear.name!r} read from the fields' embeddings differs from the "
            f"original's by {error:.3g} (mean squared, {len(terms[0])} sample rows) where the fit's error was "
            f"{first_order.residual:.3g}; the compressed model was not returned. Compress with "
            "first_order='keep' (--first-order keep), and report this.")
    return error
