"""``fuse()``: fold low-rank embedding projections into the Dense layers they feed.

A :class:`LowRankEmbedding` computes ``table[ids] @ P + mu``. Where that
output reaches a ``Dense`` (or :class:`LowRankDense`) only through
``Flatten`` / ``Reshape`` / ``Concatenate``, the affine map folds into the
Dense's kernel and bias: the fused model gathers ``k``-wide rows and feeds
them straight into a smaller first layer. Every other consumer (FM, cross,
attention, bilinear, ...) needs the ``d``-wide vectors: for those the fused
model keeps the projection as a plain ``Dense(d)`` computed once per
embedding and shared by all such consumers, and where a list of them feeds
one interaction (``StackFields`` of FM, CIN, attention; keras_rs
``DotInteraction``) the factored ones come from ONE matmul of their
concatenated codes by a block-diagonal ``(sum k_i, F d)`` matrix, and the
fields left whole are their rows as read, reshaped to ``(batch, F, d)``.

The tables themselves are read by ONE merged lookup: the in-range lookups
(low-rank or whole) behind a :class:`ClipToVocabulary` guard become one
:class:`MergedEmbedding` whose output is the fields' rows side by side;
consumers that take all of them read that output as it is, with no
per-field concatenation (a consumer linear in them takes its kernel rows in
the output's order, zero rows for columns it does not read). It reads whole
rows, one gather per width (the tables sorted by width, the guard stacking
the ids in that order): one index per field and row, where a gather of
single elements costs a batch of rows dearly (1.5x slower for DeepFM at
batch 256). The guard stays in front of it, so an out-of-range id still
reads row 0 of its own field. A :class:`LinearTerms` (the first-order
weights) reading the same guard joins it: each field's weight becomes one
more column of that field's rows, summed by a ``Dense(1)`` (instead of a
gather, a dequantization and a sum of its own). Each is stored multiplied
by a factor that brings its peak to that of the codes of its width (the
Dense divides it out), so an int8 file with one scale per width keeps them
as precise as their own int8 table would.

A plain ``Dense`` of one unit (a logit head; the first-order sum) becomes a
:class:`~tfafm.layers.DotProductDense`, a product and a sum where LiteRT's
XNNPACK would compute a whole tile of output columns for it; not for a
full-integer int8 file (``quantization="int8"``), whose product would be
rounded to int8 before the sum where a fully connected layer sums in int32.

The model is rebuilt with ``keras.models.clone_model``. Each embedding's
projection is applied right away and the result remembered as *segments*
(code tensor, projection, bias); a consumer that can fold reads the
segments, any other consumer simply uses the projected tensor (unused
projections are not part of the final model). Folding never fails: when a
:class:`LowRankDense` would receive an input narrower than its rank, its
two factors are merged into one ``Dense`` instead; the returned
:class:`FusionReport` says so.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import keras
import keras_rs
import numpy as np

from tfafm.graph import as_functional, call_counts, call_sources, clone, iter_layers, readers, require_graph_model
from tfafm.compression.report import DYNAMIC_MIN_ELEMENTS
from tfafm.compression.rewrite import copy_state
from tfafm.models.layers import (
    ClipToVocabulary,
    CodeFactorizationMachine,
    CodeProjections,
    FactorizationMachine,
    LinearTerms,
    StackFields,
)
from tfafm.layers.dot_product import DotProductDense
from tfafm.layers.lookup import InRangeEmbedding, MergedEmbedding
from tfafm.layers.low_rank import LowRankDense, LowRankEmbedding


@dataclasses.dataclass
class _Segment:
    """A slice of a concatenated vector: a raw tensor, or a code seen through a projection."""

    tensor: Any
    projection: np.ndarray | None = None  # (k, d)
    bias: np.ndarray | None = None  # (d,)

    @property
    def width(self) -> int:
        return self.tensor.shape[-1] if self.projection is None else self.projection.shape[1]


@dataclasses.dataclass
class FusionReport:
    """What :func:`fuse` did: embeddings folded into Dense layers, factor pairs merged, notes."""

    folded: list[str] = dataclasses.field(default_factory=list)
    merged: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    tables: list[str] = dataclasses.field(default_factory=list)  # embedding tables read by one MergedEmbedding


def _fold(kernel: np.ndarray, segments: list[_Segment], positions: list[int],
          width: int) -> tuple[np.ndarray, np.ndarray]:
    """Kernel rows and extra bias of a layer seen from the segments' own tensors, side by side in an input
    ``width`` wide where segment ``i``'s tensor starts at column ``positions[i]``."""
    rows, extra_bias, offset = np.zeros((width, kernel.shape[1])), np.zeros(kernel.shape[1]), 0
    for segment, position in zip(segments, positions):
        block = kernel[offset: offset + segment.width]
        offset += segment.width
        if segment.projection is not None:
            extra_bias += segment.bias @ block
            block = segment.projection @ block
        rows[position:position + len(block)] = block
    return rows, extra_bias


def _block_diagonal(blocks: list[np.ndarray]) -> np.ndarray:
    """The block-diagonal matrix of square ``blocks``."""
    size = sum(len(b) for b in blocks)
    result, start = np.zeros((size, size)), 0
    for block in blocks:
        result[start:start + len(block), start:start + len(block)] = block
        start += len(block)
    return result


def _mergeable(layer) -> bool:
    """Whether ``layer`` is a lookup of in-range ids that a :class:`MergedEmbedding` can take over."""
    if type(layer) is LowRankEmbedding:
        return layer.ids_in_range and not layer.mask_zero
    return (type(layer) is InRangeEmbedding and not layer.mask_zero and not layer.quantization_mode
            and not layer.lora_enabled)


def _merge_plan(model: keras.Model, calls: dict[int, int]) -> dict[str, list[tuple[int, Any]]]:
    """Per :class:`ClipToVocabulary` guard (called once, one tensor per field): ``(output index, lookup
    layer)`` of the lookups (called once, of one dtype policy) reading its guarded ids, when there are at
    least two of them."""
    layers = {layer.name: layer for layer in model.layers}
    plan: dict[str, list[tuple[int, Any]]] = {}
    for name, sources in call_sources(model).items():
        layer, guard = layers.get(name), layers.get(sources[0][0]) if len(sources) == 1 else None
        if (_mergeable(layer) and calls.get(id(layer)) == 1 and type(guard) is ClipToVocabulary
                and calls.get(id(guard)) == 1 and not guard.stacked):
            plan.setdefault(guard.name, []).append((sources[0][1], layer))
    plans = {}
    for guard, fields in plan.items():
        policy = fields[0][1].dtype_policy.name
        fields = sorted(((i, layer) for i, layer in fields if layer.dtype_policy.name == policy),
                        key=lambda field: field[0])  # two tables may read one field: never compare layers
        if len(fields) > 1:
            plans[guard] = fields
    return plans


def _linear_plan(model: keras.Model, calls: dict[int, int], plan: dict) -> dict[str, tuple[Any, list[int]]]:
    """Per planned guard: the :class:`LinearTerms` (called once, of the lookups' dtype policy) reading
    only that guard's outputs, each field's weights as many rows as the guard lets ids through, with
    the guard output index of each of its inputs."""
    layers = {layer.name: layer for layer in model.layers}
    linear = {}
    for name, sources in call_sources(model).items():
        layer = layers.get(name)
        if type(layer) is not LinearTerms or calls.get(id(layer)) != 1 or not sources:
            continue
        guard = sources[0][0]
        if guard not in plan or any(source != guard for source, _ in sources) or guard in linear:
            continue
        indices = [index for _, index in sources]
        sizes = layers[guard].vocabulary_sizes
        if (layer.vocabulary_sizes == [sizes[i] for i in indices]
                and layer.dtype_policy.name == plan[guard][0][1].dtype_policy.name):
            linear[guard] = (layer, indices)
    return linear


def _is_raw(segment: _Segment) -> bool:
    """Whether a field's "code" is the field itself (a table left whole: identity projection, no bias)."""
    projection = segment.projection
    return (projection.shape[0] == projection.shape[1] and np.array_equal(projection, np.eye(len(projection)))
            and not np.any(segment.bias))


def _fm_on_codes_pays(fields: list[_Segment], zero_bytes_limit: float) -> bool:
    """Whether an FM on the fields' codes stores at most ``zero_bytes_limit`` bytes of zeros: its
    ``(K, K_f)`` root (K the codes' total width, K_f that of the factored fields' codes; fields left
    whole need none) is block-diagonal over the factored codes, so with many factored fields it
    could add more to the file than the per-field projections it replaces."""
    ranks = [s.projection.shape[0] for s in fields]
    factored = [k for k, s in zip(ranks, fields) if not _is_raw(s)]
    return 4 * (sum(ranks) * sum(factored) - sum(k * k for k in factored)) <= zero_bytes_limit


def _plain_linear_dense(layer) -> bool:
    """Whether ``layer`` is a plain ``keras.layers.Dense`` without activation (nor quantization or LoRA)."""
    return (type(layer) is keras.layers.Dense and layer.get_config().get("activation") == "linear"
            and not layer.quantization_mode and not layer.lora_enabled)


_FOLDABLE = (keras.layers.Dense, DotProductDense, LowRankDense)


def _kind(layer) -> type:
    """The class whose call fuse knows ``layer`` computes: its own, or the one its class declares in a
    ``fuses_as`` attribute of its own (the export's static forms of Flatten and Dense), never inherited."""
    cls = type(layer)
    return cls.__dict__.get("fuses_as", cls)


def _fold_refusal(layer) -> str | None:
    """Why the embedding projections before ``layer`` cannot be folded into its kernel, or None."""
    if getattr(layer, "quantization_mode", None):
        return f"quantized ({layer.quantization_mode}): its kernel is not the float matrix a fold rewrites"
    if getattr(layer, "lora_enabled", False):
        return "LoRA is enabled on it"
    if _kind(layer) not in _FOLDABLE:
        return (f"a {type(layer).__name__}: fuse folds into {', '.join(c.__name__ for c in _FOLDABLE)} only, "
                "whose call it knows")
    return None


def _weights(layer) -> dict[str, np.ndarray]:
    return {w.path.split("/")[-1]: np.asarray(w.numpy(), dtype=np.float64) for w in layer.weights}


class _Fuser:
    SPARSE_LIMIT = 64 * 1024  # bytes of zeros a block-diagonal projection matrix may hold
    # The FM on codes (3 ops) replaces the per-field projections and the FM over d-wide fields (~14 ops):
    # its block-diagonal root may store zeros up to this share of the model's weights as well.
    FM_ZERO_SHARE = 1 / 32
    # The merged lookup reads whole rows, one gather per width: past this many widths, the narrowest are
    # padded with zeros to the next (3 ops per width; a 26-field DeepFM at target_ratio=4 has 6 to 9).
    MAX_RUNS = 8

    def __init__(self, model: keras.Model, quantization: str | None):
        # Full-integer int8 rounds a product to int8 before its sum: one-unit Dense layers stay fully connected.
        self.dot_products = quantization != "int8"
        self.calls = call_counts(model)
        self.fm_zero_limit = max(self.SPARSE_LIMIT, 4 * model.count_params() * self.FM_ZERO_SHARE)
        self.originals: dict[int, Any] = {}
        self.copies: list[tuple[Any, Any]] = []
        self.segments: dict[int, list[_Segment]] = {}
        self.tables: dict[int, tuple] = {}
        self.fields: dict[int, list[_Segment]] = {}  # stacked (batch, F, d) fields -> their code segments
        self.plan = _merge_plan(model, self.calls)
        self.guards = {id(layer) for layer in model.layers if layer.name in self.plan}  # not a nested namesake
        self.linear = _linear_plan(model, self.calls, self.plan)
        self.codes: dict[int, Any] = {}  # lookup layer -> its slice of a MergedEmbedding's output
        self.slices: dict[int, tuple[Any, int, int]] = {}  # such a slice -> (merged output, start, stop)
        self.runs: dict[tuple[int, int, int], Any] = {}  # (merged output, start, stop) -> the slice made for it
        self.pieces: dict[int, list] = {}  # output of a plain 2-D Concatenate -> its inputs
        self.joins: dict[tuple, Any] = {}  # the tensors joined by _join -> their concatenation
        self.linear_outputs: dict[int, tuple] = {}  # linear 2-D Dense output -> (input, kernel, bias, readers)
        self.readers = readers(model)
        self.report = FusionReport()
        self.names = {layer.name for layer in iter_layers(model)}
        self.given: set[str] = set()  # names of the layers this fusion made
        self.policy: Any = "float32"  # dtype policy of the layer being rewritten, for the layers made for it

    def _unique(self, name: str, replaces: Any = None) -> str:
        """The name of the layer a new one ``replaces`` where each of its calls is rewritten (so no model
        holds it any more; names are unique per model, and a nested model's keep theirs); else ``name`` or,
        where any layer of the model or of this fusion has it, ``name_1``, ``name_2``, ..."""
        if (replaces is not None and name == replaces.name
                and (self.calls.get(id(replaces)) == 1 or type(replaces) is LowRankEmbedding)):
            return name
        candidate, number = name, 0
        while candidate in self.given or candidate in self.names:
            number += 1
            candidate = f"{name}_{number}"
        self.given.add(candidate)
        return candidate

    # --------------------------------------------------------------- clone_model hooks

    def clone(self, layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer
        cls = layer.__class__
        if (type(layer) is keras.layers.Dense and layer.built and not layer.quantization_mode
                and not layer.lora_enabled):
            cls = self._dense_class(layer.units, layer.kernel.shape[0])
        copy = cls.from_config(layer.get_config())
        self.originals[id(copy)] = layer
        if type(layer) is not LowRankEmbedding:  # rebuilt by _embed
            self.copies.append((layer, copy))
        return copy

    def call(self, op, *args, **kwargs):
        original = self.originals.get(id(op), op)
        # Handlers match exact classes: a subclass (its own call, ids mapped otherwise) runs as it is.
        kind = _kind(original)
        self.policy = getattr(original, "dtype_policy", None) or "float32"
        if id(original) in self.guards and not kwargs:
            return self._guard(original, *args)
        if kind is LowRankEmbedding:
            return self._embed(original, *args, **kwargs)
        if id(original) in self.codes and not kwargs:
            return self.codes[id(original)]
        if kind is keras.layers.Concatenate:
            return self._concatenate(op, original, *args, **kwargs)
        if kind in (keras.layers.Flatten, keras.layers.Reshape):
            return self._flatten(op, original, *args, **kwargs)
        if kind in (StackFields, keras_rs.layers.DotInteraction) and not kwargs and len(args) == 1:
            return self._vector_list(op, original, list(args[0]))
        if (kind is FactorizationMachine and original.reduce_sum and id(args[0]) in self.fields
                and _fm_on_codes_pays(self.fields[id(args[0])], self.fm_zero_limit)):
            return self._factorization_machine(original, self.fields[id(args[0])])
        if isinstance(original, (keras.layers.Dense, LowRankDense)) and not kwargs and len(args) == 1:
            segments = self.segments.get(id(args[0]))
            if segments is not None and len(args[0].shape) == 2 and self.calls.get(id(original)) == 1:
                if self._foldable(original, segments):
                    return self._dense(original, segments)
        if kind is keras.layers.Add and not kwargs and len(args) == 1:
            total = self._sum_of_linear(original, list(args[0]))
            if total is not None:
                return total
        outputs = op(*args, **kwargs)
        if (_plain_linear_dense(original) and self.calls.get(id(original)) == 1 and not kwargs and len(args) == 1
                and len(args[0].shape) == 2):
            weights = _weights(original)
            self.linear_outputs[id(outputs)] = (args[0], weights["kernel"], weights.get("bias"),
                                                self.readers.get((original.name, 0), []))
        return outputs

    def _dense_class(self, units: int, inputs: int) -> type:
        """``keras.layers.Dense``, or :class:`DotProductDense` for one unit over fewer than
        ``DYNAMIC_MIN_ELEMENTS`` inputs (a kernel that dynamic-int8 files keep float32 either way), unless the
        file will be full-integer int8."""
        one_unit = self.dot_products and units == 1 and inputs < DYNAMIC_MIN_ELEMENTS
        return DotProductDense if one_unit else keras.layers.Dense

    def _foldable(self, layer, segments: list[_Segment]) -> bool:
        refusal = _fold_refusal(layer)
        if refusal is not None:
            self.report.notes.append(f"{layer.name}: not folded ({refusal})")
            return False
        width = sum(s.tensor.shape[-1] for s in segments)
        if isinstance(layer, LowRankDense) and layer.inner_activation is not None and width < layer.rank:
            self.report.notes.append(f"{layer.name}: not folded (its input would be {width} wide, below its "
                                     f"rank {layer.rank}, and it has an inner activation)")
            return False
        return True

    # --------------------------------------------------------------- handlers

    def _guard(self, guard: ClipToVocabulary, ids):
        """Runs the id guard, then all lookups planned behind it (and its first-order weights) as one
        :class:`MergedEmbedding` of whole rows, one gather per width. Each field's first-order weight is one
        more column of its own table's rows; the tables are read in the order of their widths, and the guard
        stacks the fields in that order (:meth:`_stacked_guard`); its per-field outputs, which it returns for
        any other reader, are split from them only where something reads them."""
        fields = self.plan[guard.name]
        layers = [layer for _, layer in fields]
        tables = [layer.embeddings.numpy() for layer in layers]
        sources = [i for i, _ in fields]
        linear, indices = self.linear.get(guard.name, (None, []))
        weights = ([linear.weights_table.numpy()[start:start + size]
                    for start, size in zip(linear.offsets, linear.vocabulary_sizes)] if linear is not None else [])
        joins: list[int | None] = []  # per first-order table: the table whose rows it joins, if any
        for source, w in zip(indices, weights):
            joins.append(next((t for t in range(len(layers)) if sources[t] == source and t not in joins
                               and len(tables[t]) == len(w)), None))
        standalone = iter(range(len(layers), len(layers) + joins.count(None)))
        place = [(next(standalone), 0) if t is None else (t, tables[t].shape[1] + joins[:j].count(t))
                 for j, t in enumerate(joins)]  # per first-order table: (stored table, its column there)
        table_sources = sources + [indices[j] for j, t in enumerate(joins) if t is None]
        widths = self._run_widths([t.shape[1] + joins.count(f) for f, t in enumerate(tables)]
                                  + [1] * joins.count(None), [len(t) for t in tables]
                                  + [len(w) for w, t in zip(weights, joins) if t is None])
        # Each first-order table is stored multiplied by a factor that brings its peak to that of the codes it
        # shares an int8 scale with (its width's run); its Dense divides it out.
        factors = []
        for (t, _), w in zip(place, weights):
            peak = max((float(np.max(np.abs(tables[f]))) for f in range(len(layers)) if widths[f] == widths[t]),
                       default=0.0)
            own = float(np.max(np.abs(w)))
            factor = peak / own if own > 0 and peak > 0 else 1.0
            factors.append(factor if np.isfinite(factor) else 1.0)
        arrays = []
        for t, width in enumerate(widths):
            parts = ([tables[t]] if t < len(layers) else []) + [
                factor * w for (stored, _), factor, w in zip(place, factors, weights) if stored == t]
            array = np.concatenate(parts, axis=1)
            arrays.append(np.pad(array, ((0, 0), (0, width - array.shape[1]))).astype(np.float32))
        order = sorted(range(len(widths)), key=widths.__getitem__)
        stacked_ids, guarded, position = self._stacked_guard(guard, ids, [table_sources[t] for t in order])
        merged = MergedEmbedding.from_tables([arrays[t] for t in order],
                                             sources=[position[table_sources[t]] for t in order], layout="rows",
                                             name=self._unique(f"{guard.name}_tables"), dtype=layers[0].dtype_policy)
        codes = merged(stacked_ids)
        linear_rows, start = [0] * len(weights), 0
        for t in order:
            if t < len(layers):
                code = codes[:, start:start + tables[t].shape[1]]
                self.codes[id(layers[t])] = code
                self.slices[id(code)] = (codes, start, start + tables[t].shape[1])
            for j, (stored, column) in enumerate(place):
                if stored == t:
                    linear_rows[j] = start + column
            start += widths[t]
        runs = len(set(widths))
        self.report.notes.append(f"{merged.name}: the tables of {len(layers)} fields"
                                 + (" and their first-order weights" if weights else "")
                                 + (" read by one gather of whole rows" if runs == 1 else
                                    f" read by {runs} gathers of whole rows, one per width"))
        self.report.tables.extend(layer.name for layer in layers)
        if linear is not None:
            kernel = np.zeros((codes.shape[-1], 1), dtype=np.float32)
            kernel[linear_rows, 0] = 1.0 / np.asarray(factors)
            terms = self._dense_class(1, codes.shape[-1])(1, use_bias=False, name=self._unique(linear.name, linear),
                                                     dtype=linear.dtype_policy)
            self.codes[id(linear)] = terms(codes)
            terms.set_weights([kernel])
            self.linear_outputs[id(self.codes[id(linear)])] = (codes, kernel.astype(np.float64), None,
                                                               self.readers.get((linear.name, 0), []))
            self.report.tables.append(linear.name)
        return guarded

    def _run_widths(self, widths: list[int], rows: list[int]) -> list[int]:
        """The stored width of each table (``widths[t]`` wide, ``rows[t]`` rows): its own, except that while
        there are more than ``MAX_RUNS`` widths, the tables of the width whose zero padding to the next wider
        one costs the fewest values are padded to it (each width costs about 3 ops)."""
        stored = list(widths)
        while len(set(stored)) > self.MAX_RUNS:
            distinct = sorted(set(stored))
            cost = {w: sum(r * (wider - w) for r, s in zip(rows, stored) if s == w)
                    for w, wider in zip(distinct, distinct[1:])}
            cheapest = min(cost, key=cost.get)
            wider = distinct[distinct.index(cheapest) + 1]
            stored = [wider if s == cheapest else s for s in stored]
        return stored

    def _stacked_guard(self, guard: ClipToVocabulary, ids, reads: list[int]):
        """The guard's ids as one ``(batch, fields)`` tensor, its per-field outputs (in field order) and the
        column of each field in that tensor. When the guard takes one input per field, the fields come in the
        order of ``reads`` (the fields the merged tables read, in their order), the others after them: the
        tables then read the ids as stacked, not through a reordering gather."""
        count = len(guard.vocabulary_sizes)
        order = list(range(count))
        if isinstance(ids, (list, tuple)) and len(ids) == count:
            order = list(dict.fromkeys(reads))
            order += [f for f in range(count) if f not in order]
        config = {**guard.get_config(), "stacked": True,
                  "vocabulary_sizes": [guard.vocabulary_sizes[f] for f in order]}
        if guard.pruned_from is not None:
            config["pruned_from"] = [guard.pruned_from[f] for f in order]
        stacked = ClipToVocabulary.from_config(config)([ids[f] for f in order] if order != list(range(count))
                                                       else ids)
        columns = keras.ops.unstack(stacked, num=count, axis=1)
        position = {field: column for column, field in enumerate(order)}
        return stacked, [columns[position[f]] for f in range(count)], position

    def _join(self, tensors: list, name: str):
        """``tensors`` side by side: runs of adjacent slices of one merged lookup are read as one slice (the
        whole lookup output when they cover it), anything else is concatenated (the inputs of a plain
        concatenation among them joining this one: one op, not two)."""
        runs: list[list] = []  # [tensor, merged output or None, start, stop]
        for tensor in (piece for x in tensors for piece in self.pieces.get(id(x), [x])):
            codes, start, stop = self.slices.get(id(tensor), (None, 0, 0))
            last = runs[-1] if runs else None
            if codes is not None and last and last[1] is codes and last[3] == start:
                last[0], last[3] = None, stop  # a longer slice, made below
            else:
                runs.append([tensor, codes, start, stop])
        parts = []
        for tensor, codes, start, stop in runs:
            if tensor is None:
                tensor = codes if (start, stop) == (0, codes.shape[-1]) else self._slice(codes, start, stop)
            parts.append(tensor)
        if len(parts) == 1:
            return parts[0]
        key = tuple(id(part) for part in parts)
        if key not in self.joins:  # one concatenation for every consumer of the same pieces
            self.joins[key] = keras.layers.Concatenate(name=self._unique(name), dtype=self.policy)(parts)
        return self.joins[key]

    def _join_segments(self, segments: list[_Segment], name: str, gaps: bool = False):
        """The segments' tensors side by side, for a consumer linear in them (its rows follow): slices of one
        merged lookup's output next to each other in that output's order, so that it reads each output whole
        or in one slice, then anything else in the segments' order. Returns the tensor and the column where
        each segment's tensor starts in it.

        With ``gaps`` (a consumer whose rows for unread columns can be zero), slices of a merged output that
        are not one run (codes between first-order columns, say) are read as the one slice that spans them
        (the whole output where they are at least half of it), each segment where it lies in it, when the
        columns read are at least half of that span: one slice at most, and no concatenation of pieces.
        """
        merged: dict[int, list[int]] = {}  # merged output -> the segments that are slices of it
        others = []
        for i, segment in enumerate(segments):
            codes, _, _ = self.slices.get(id(segment.tensor), (None, 0, 0))
            (others if codes is None else merged.setdefault(id(codes), [])).append(i)
        positions, tensors, column = [0] * len(segments), [], 0
        for members in merged.values():
            members.sort(key=lambda i: self.slices[id(segments[i].tensor)][1])
            spans = [self.slices[id(segments[i].tensor)] for i in members]
            codes, read = spans[0][0], sum(stop - start for _, start, stop in spans)
            first, last = spans[0][1], spans[-1][2]
            disjoint = all(a[2] <= b[1] for a, b in zip(spans, spans[1:]))
            if gaps and disjoint and 2 * read >= codes.shape[-1]:
                first, last = 0, codes.shape[-1]  # the whole output: no slice at all
            if gaps and disjoint and last - first > read and 2 * read >= last - first:
                for i, (_, start, _) in zip(members, spans):
                    positions[i] = column + start - first
                tensors.append(codes if (first, last) == (0, codes.shape[-1]) else self._slice(codes, first, last))
                column += last - first
                continue
            for i in members:
                positions[i] = column
                tensors.append(segments[i].tensor)
                column += segments[i].tensor.shape[-1]
        for i in others:
            positions[i] = column
            tensors.append(segments[i].tensor)
            column += segments[i].tensor.shape[-1]
        return self._join(tensors, name), positions

    def _slice(self, codes, start: int, stop: int):
        """``codes[:, start:stop]``, one op however many consumers read it."""
        key = (id(codes), start, stop)
        if key not in self.runs:
            self.runs[key] = codes[:, start:stop]
        return self.runs[key]

    def _embed(self, layer: LowRankEmbedding, ids, **kwargs):
        if id(layer) not in self.tables:  # built once per embedding, shared by all its calls
            table = None
            if id(layer) not in self.codes:  # not read by a MergedEmbedding
                table_class = InRangeEmbedding if layer.ids_in_range else keras.layers.Embedding
                table = table_class(layer.input_dim, layer.rank, mask_zero=layer.mask_zero,
                                    name=self._unique(layer.name, layer), dtype=layer.dtype_policy)
            projection = keras.layers.Dense(layer.output_dim, name=self._unique(f"{layer.name}_projection"),
                                            dtype=layer.dtype_policy)
            self.tables[id(layer)] = (table, projection)
        table, projection = self.tables[id(layer)]
        code = self.codes[id(layer)] if table is None else table(ids, **kwargs)
        vectors = projection(code)
        if table is not None:
            table.set_weights([layer.embeddings.numpy()])
        projection.set_weights([layer.projection.numpy(), layer.bias.numpy()])
        self.segments[id(vectors)] = [_Segment(code, layer.projection.numpy().astype(np.float64),
                                               layer.bias.numpy().astype(np.float64))]
        return vectors

    def _projected_code(self, vector) -> _Segment | None:
        segments = self.segments.get(id(vector))
        if segments and len(segments) == 1 and segments[0].projection is not None and len(vector.shape) == 2:
            return segments[0]
        return None

    def _joint_projection(self, segments: list[_Segment], name: str):
        """The full vector of ``segments`` from one matmul of their concatenated tensors.

        The matrix is block-diagonal (each code's projection, an identity
        block for raw tensors) when its zeros are few (at most
        ``SPARSE_LIMIT`` bytes). Otherwise each run of adjacent codes is
        projected on its own (recursively: one block-diagonal matmul of the
        run, or a :class:`CodeProjections`, one batched matmul storing only
        the projections, for codes of one width) and the raw tensors are
        placed between them, so the file never stores the zeros.
        """
        rows = [s.tensor.shape[-1] for s in segments]
        widths = [s.width for s in segments]
        zero_bytes = 4 * (sum(rows) * sum(widths) - sum(r * w for r, w in zip(rows, widths)))
        is_code = [s.projection is not None for s in segments]
        if zero_bytes > self.SPARSE_LIMIT:
            runs = [list(group) for _, group in itertools.groupby(range(len(segments)), key=is_code.__getitem__)]
            if len(runs) > 1:
                parts = []
                for number, run in enumerate(runs):
                    if is_code[run[0]]:
                        parts.append(self._joint_projection([segments[i] for i in run], f"{name}_{number}"))
                    else:
                        parts.extend(segments[i].tensor for i in run)
                return self._join(parts, f"{name}_vectors")
            codes = segments
            if all(is_code) and len({s.width for s in codes}) == 1 and len(codes) > 1:
                return keras.ops.reshape(self._fields(codes, name), (-1, len(codes) * codes[0].width))
        x, positions = self._join_segments(segments, f"{name}_codes", gaps=True)
        kernel = np.zeros((x.shape[-1], sum(widths)))
        bias, column = [], 0
        for segment, row, rows_, width in zip(segments, positions, rows, widths):
            block = np.eye(rows_) if segment.projection is None else segment.projection
            kernel[row:row + rows_, column:column + width] = block
            bias.append(np.zeros(width) if segment.bias is None else segment.bias)
            column += width
        joint = keras.layers.Dense(kernel.shape[1], name=self._unique(f"{name}_projections"), dtype=self.policy)
        outputs = joint(x)
        joint.set_weights([kernel.astype(np.float32), np.concatenate(bias).astype(np.float32)])
        return outputs

    def _fields(self, codes: list[_Segment], name: str):
        """``(batch, fields, d)`` of projected codes of one width, via :class:`CodeProjections`."""
        ranks = [s.projection.shape[0] for s in codes]
        width, dim = max(ranks), codes[0].width
        joined, starts = self._join_segments(codes, f"{name}_codes", gaps=True)
        index = [int(start + j) if j < rank else 0 for start, rank in zip(starts, ranks) for j in range(width)]
        projections = np.zeros((len(codes), width, dim))
        for f, segment in enumerate(codes):
            projections[f, :ranks[f]] = segment.projection
        layer = CodeProjections(index, len(codes), dim, name=self._unique(f"{name}_fields"), dtype=self.policy)
        outputs = layer(joined)
        layer.set_weights([projections.astype(np.float32), np.stack([s.bias for s in codes]).astype(np.float32)])
        return outputs

    def _one_matmul_pays(self, codes: list[_Segment]) -> bool:
        """Whether the block-diagonal matrix projecting ``codes`` at once stores few zeros (at most
        ``SPARSE_LIMIT`` bytes)."""
        rank_sum = sum(s.projection.shape[0] for s in codes)
        return 4 * rank_sum * codes[0].width * (len(codes) - 1) <= self.SPARSE_LIMIT

    def _projected_fields(self, codes: list[_Segment], name: str):
        """``(batch, fields, d)`` of projected codes: one block-diagonal matmul when its zeros are few,
        else a :class:`CodeProjections`."""
        if not self._one_matmul_pays(codes):
            return self._fields(codes, name)
        return keras.ops.reshape(self._joint_projection(codes, name), (-1, len(codes), codes[0].width))

    def _stacked_fields(self, segments: list[_Segment], name: str):
        """``(batch, fields, d)`` of the segments' vectors, all of width ``d``, in the segments' order.

        All at once by one block-diagonal matmul (identity blocks for the
        fields left whole) where it stores few zeros. Otherwise the fields
        left whole are their codes, reshaped as they lie side by side (no
        identity block, no per-column gather), the factored ones are
        projected at once (:meth:`_projected_fields`), and the two stacks are
        joined along the field axis and, where that order is not the
        segments', put back in order by one gather of whole d-wide rows.
        """
        width = segments[0].width
        raw = [i for i, s in enumerate(segments) if _is_raw(s)]
        factored = [i for i, s in enumerate(segments) if not _is_raw(s)]
        if not raw or not factored or self._one_matmul_pays(segments):
            return self._projected_fields(segments, name)
        whole, order = self._whole_fields([segments[i] for i in raw], f"{name}_whole")
        order = [raw[j] for j in order] + factored
        parts = [whole, self._projected_fields([segments[i] for i in factored], name)]
        fields = keras.layers.Concatenate(axis=1, name=self._unique(f"{name}_stacked"), dtype=self.policy)(parts)
        if order != sorted(order):
            fields = keras.ops.take(fields, np.argsort(order).astype(np.int32), axis=1)
        return fields

    def _whole_fields(self, segments: list[_Segment], name: str):
        """``(batch, n, d)`` of ``n`` fields left whole (raw segments of width ``d``) and the order of the
        segments in it. Slices of one merged output at one stride (rows holding a first-order weight
        after the ``d`` values, say) are read as one slice of rows, reshaped, and their first ``d`` columns
        taken: two or three ops instead of a slice per field and a concatenation."""
        width = segments[0].width
        spans = [self.slices.get(id(s.tensor), (None, 0, 0)) for s in segments]
        order = sorted(range(len(segments)), key=lambda i: spans[i][1])
        starts = [spans[i][1] for i in order]
        stride = starts[1] - starts[0] if len(starts) > 1 else width
        if (spans[0][0] is not None and all(sp[0] is spans[0][0] for sp in spans) and stride > width
                and starts == list(range(starts[0], starts[0] + stride * len(starts), stride))
                and starts[-1] + stride <= spans[0][0].shape[-1]):  # the last row's stride lies inside too
            codes, first, last = spans[0][0], starts[0], starts[0] + stride * len(starts)
            rows = codes if (first, last) == (0, codes.shape[-1]) else self._slice(codes, first, last)
            return keras.ops.reshape(rows, (-1, len(segments), stride))[:, :, :width], order
        joined, positions = self._join_segments(segments, name)
        return (keras.ops.reshape(joined, (-1, len(segments), width)),
                sorted(range(len(segments)), key=positions.__getitem__))

    def _vector_list(self, op, layer, vectors: list):
        """Computes the d-wide vectors of a list consumer (``StackFields``, ``DotInteraction``) that are
        projected codes all at once (see :meth:`_stacked_fields`)."""
        codes = [(i, self._projected_code(v)) for i, v in enumerate(vectors)]
        widths = {s.projection.shape[1] for _, s in codes if s is not None}
        if len(widths) == 1 and all(len(v.shape) == 2 and v.shape[-1] in widths for v in vectors):
            # Fields left whole join as identity "codes": all fields come stacked at once (and an FM can
            # run on codes).
            width = next(iter(widths))
            codes = [(i, s or _Segment(v, np.eye(width), np.zeros(width))) for (i, s), v in zip(codes, vectors)]
        codes = [(i, s) for i, s in codes if s is not None]
        if len(codes) < 2 or len(widths) != 1:
            return op(vectors)
        segments = [s for _, s in codes]
        fields = self._stacked_fields(segments, layer.name)
        self.report.notes.append(f"{layer.name}: {len(codes)} embedding projections computed at once")
        if isinstance(layer, StackFields) and len(codes) == len(vectors):
            self.fields[id(fields)] = segments
            return fields
        pieces = dict(zip((i for i, _ in codes), keras.ops.unstack(fields, axis=1)))
        return op([pieces.get(i, v) for i, v in enumerate(vectors)])

    def _factorization_machine(self, layer, fields: list[_Segment]):
        """FM over projected codes, without the d-wide field vectors (:class:`CodeFactorizationMachine`);
        fields left whole enter as raw columns, without a root."""
        projections = [s.projection for s in fields]
        raw = [_is_raw(s) for s in fields]
        codes, starts = self._join_segments(fields, f"{layer.name}_codes", gaps=True)
        on_codes = np.zeros((codes.shape[-1], projections[0].shape[1]))
        for projection, start in zip(projections, starts):
            on_codes[start:start + len(projection)] = projection
        factored = [(p, s, start) for p, s, start, is_raw in zip(projections, fields, starts, raw) if not is_raw]
        shifts = [np.linalg.lstsq(p.T, s.bias, rcond=None)[0] for p, s, _ in factored]  # h_f
        rest = sum(float(np.sum((s.bias - h @ p) ** 2)) for (p, s, _), h in zip(factored, shifts))
        blocks = [np.linalg.qr(p.T, mode="r").T for p, _, _ in factored]  # P P^T = R R^T
        root = np.zeros((codes.shape[-1], sum(len(b) for b in blocks)))
        column = 0
        for block, (_, _, start) in zip(blocks, factored):
            root[start:start + len(block), column:column + len(block)] = block
            column += len(block)
        shift = np.concatenate(shifts) @ _block_diagonal(blocks) if blocks else np.zeros(0)
        raw_columns = [int(c) for start, p, is_raw in zip(starts, projections, raw) if is_raw
                       for c in range(start, start + p.shape[0])]
        unread = codes.shape[-1] - sum(len(p) for p in projections)  # columns read beside the codes
        fm = CodeFactorizationMachine(projections[0].shape[1], raw_columns=raw_columns,
                                      root_width=root.shape[1] if unread else None,
                                      name=self._unique(layer.name, layer), dtype=layer.dtype_policy)
        outputs = fm(codes)
        fm.set_weights([np.concatenate([on_codes, root], axis=1).astype(np.float32),
                        np.concatenate([sum(s.bias for s in fields), shift]).astype(np.float32),
                        np.array([rest], dtype=np.float32)])
        self.report.notes.append(f"{layer.name}: FM computed on the {len(fields)} fields' codes"
                                 + (f" ({sum(raw)} of them left whole)" if any(raw) else ""))
        return outputs

    def _sum_of_linear(self, layer, tensors: list):
        """An ``Add`` of linear 2-D ``Dense`` outputs (DeepFM's first-order term: the weights read by the
        merged gather plus a ``Dense(1)`` of the dense features) as ONE ``Dense`` over their inputs side by
        side: one matmul (and a concatenation that joins the inputs' own pieces) instead of one matmul each
        and the sum. None unless every input is such an output, of one width, read by this ``Add`` only."""
        terms = [self.linear_outputs.get(id(tensor)) for tensor in tensors]
        if (len(terms) < 2 or any(term is None or term[3] != [layer.name] for term in terms)
                or len({t[1].shape[1] for t in terms}) != 1 or self.calls.get(id(layer)) != 1):
            return None
        x, positions = self._join_segments([_Segment(term[0]) for term in terms], f"{layer.name}_input", gaps=True)
        units = terms[0][1].shape[1]
        kernel, bias = np.zeros((x.shape[-1], units)), np.zeros(units)
        for (_, weights, term_bias, _), position in zip(terms, positions):
            kernel[position:position + len(weights)] = weights
            bias += 0.0 if term_bias is None else term_bias
        total = self._dense_class(units, x.shape[-1])(units, name=self._unique(layer.name, layer),
                                                      dtype=layer.dtype_policy)
        outputs = total(x)
        total.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        self.linear_outputs[id(outputs)] = (x, kernel, bias, self.readers.get((layer.name, 0), []))
        self.report.notes.append(f"{layer.name}: the sum of {len(terms)} linear Dense layers computed by one")
        return outputs

    def _concatenate(self, op, layer, inputs, **kwargs):
        if kwargs or layer.axis not in (-1, 1) or any(len(x.shape) != 2 for x in inputs):
            return op(inputs, **kwargs)
        if not any(id(x) in self.segments for x in inputs):
            outputs = op(inputs)
            self.pieces[id(outputs)] = list(inputs)
            return outputs
        segments = [s for x in inputs for s in self.segments.get(id(x), [_Segment(x)])]
        # Consumers that fold read the segments; any other gets the vector from one matmul.
        outputs = self._joint_projection(segments, layer.name)
        self.segments[id(outputs)] = segments
        return outputs

    def _flatten(self, op, layer, x, **kwargs):
        outputs = op(x, **kwargs)
        segments = self.segments.get(id(x))
        flattens = isinstance(layer, keras.layers.Flatten) or tuple(layer.target_shape) in (
            (int(np.prod(x.shape[1:])),), (-1,))
        if segments and flattens and all(d == 1 for s in segments for d in s.tensor.shape[1:-1]):
            self.segments[id(outputs)] = [
                dataclasses.replace(s, tensor=keras.layers.Reshape((s.tensor.shape[-1],), dtype=self.policy)(s.tensor))
                if len(s.tensor.shape) > 2 else s
                for s in segments
            ]
        return outputs

    def _dense(self, layer, segments: list[_Segment]):
        weights = _weights(layer)
        low_rank = isinstance(layer, LowRankDense)
        kernel_name, bias_name = ("down_kernel", "down_bias") if low_rank else ("kernel", "bias")
        x, positions = self._join_segments(segments, f"{layer.name}_input", gaps=True)
        new_kernel, extra_bias = _fold(weights[kernel_name], segments, positions, x.shape[-1])
        new_bias = weights.get(bias_name, 0.0) + extra_bias
        self.report.folded.append(layer.name)
        if low_rank and new_kernel.shape[0] < layer.rank:
            merged = self._dense_class(layer.units, x.shape[-1])(layer.units, activation=layer.activation,
                                                            name=self._unique(layer.name, layer),
                                                            dtype=layer.dtype_policy)
            outputs = merged(x)
            merged.set_weights([(new_kernel @ weights["up_kernel"]).astype(np.float32),
                                (new_bias @ weights["up_kernel"] + weights.get("up_bias", 0.0)).astype(np.float32)])
            self.report.merged.append(layer.name)
            self.report.notes.append(f"{layer.name}: folded input is {new_kernel.shape[0]} wide, below rank "
                                     f"{layer.rank}; its two factors were merged into one Dense")
            return outputs
        cls = self._dense_class(layer.units, x.shape[-1]) if type(layer) is keras.layers.Dense else layer.__class__
        fused = cls.from_config({**layer.get_config(), "use_bias": True, "name": self._unique(layer.name, layer)})
        outputs = fused(x)
        values = {"up_bias": np.zeros(layer.units), **weights, kernel_name: new_kernel, bias_name: new_bias}
        for weight in fused.weights:
            weight.assign(values[weight.path.split("/")[-1]].astype(np.float32))
        return outputs


def fuse(model: keras.Model, quantization: str | None = None) -> tuple[keras.Model, FusionReport]:
    """Returns ``(fused, report)``: a copy of ``model`` with low-rank embedding projections folded away.

    Outputs are unchanged up to float rounding; ``model`` is not modified.
    ``quantization`` is that of the file the fused model is for (as in
    :func:`tfafm.export.litert`): under ``"int8"`` (full integer) one-unit
    ``Dense`` layers stay fully connected (see the module docstring).
    The :class:`FusionReport` lists the folded layers, merged factor pairs
    and tables read by one gather. Like :func:`tfafm.compress`, it returns a
    pair.

    Example:

    >>> import numpy as np, keras, tfafm
    >>> ids = keras.Input((1,), dtype="int32", name="item")
    >>> table = tfafm.LowRankEmbedding(100, 16, rank=4, name="item_table")
    >>> hidden = keras.layers.Dense(8, name="hidden")(keras.layers.Flatten()(table(ids)))
    >>> model = keras.Model(ids, hidden)
    >>> fused, report = tfafm.fuse(model)
    >>> report.folded
    ['hidden']
    >>> x = np.array([[3], [7]], dtype="int32")
    >>> bool(np.allclose(fused(x), model(x), atol=1e-5))
    True
    """
    require_graph_model(model)
    model = as_functional(model)
    fuser = _Fuser(model, quantization)
    fused = clone(model, clone_function=fuser.clone, call_function=fuser.call, recursive=True)
    for original, copy in fuser.copies:
        copy_state(original, copy)
    return fused, fuser.report
