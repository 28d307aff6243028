"""``compress()``: rewrite a Keras model with low-rank layers."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

import keras
import numpy as np

from tfafm.compression.arguments import check_budget
from tfafm.compression.budget import (best_of, compare_on, labelled, sample_agreement, smallest_within_budget,
                                      too_few_to_choose)
from tfafm.compression.calibration import calibrate
from tfafm.compression.check import check_input_layers, failures_named, run_checked
from tfafm.compression import first_order as first_orders, rare_ids
from tfafm.graph import require_graph_model, resolve_names
from tfafm.compression.ranks import CRITERIA, cost_models, energy_kept, ranks_for_energy, ranks_for_ratio
from tfafm.compression.report import CompressionReport, LayerReport, SkippedLayer, estimated_file_bytes
from tfafm.compression.rewrite import rebuild
from tfafm.compression.samples import generated_rows, sample_rows
from tfafm.compression.targets import Target, adapter_for, find_targets
from tfafm.errors import UserError
from tfafm.linalg.factorize import column_mean, factor, gram, weight_spectrum, weighted_bases
from tfafm.linalg.statistics import Statistics
from tfafm.metrics import SIGNIFICANT_Z
from tfafm_choices import METHOD, METHODS

KINDS = {"embeddings": ("embedding",), "dense": ("dense", "einsum", "attention", "cross", "custom")}


def _as_names(value, option: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise UserError(f"{option} must be a name or a list of names, got {value!r}.") from None
    if not all(isinstance(n, str) for n in names):
        raise UserError(f"{option} must contain names (strings), got {value!r}.")
    return names


def _select(model, targets: list[Target], include, exclude) -> list[Target]:
    include = _as_names(include, "include")
    unknown = sorted(set(include) - set(KINDS))
    if unknown:
        raise UserError(f"include has unknown kind(s) {unknown}; expected some of {sorted(KINDS)}.")
    kinds = {k for token in include for k in KINDS[token]}
    excluded_names = set()
    for name in _as_names(exclude, "exclude"):
        if any(name == t.name for t in targets):
            excluded_names.add(name)
        else:
            layer = resolve_names(model, [name], "exclude")[name]
            excluded_names.update(t.name for t in targets if t.layer is layer)
    chosen = [t for t in targets if t.kind in kinds and t.name not in excluded_names]
    if not chosen:
        raise UserError(
            f"Model {model.name!r} has nothing compressible (include={include}, exclude="
            f"{_as_names(exclude, 'exclude')}): no Dense, Embedding, EinsumDense, MultiHeadAttention, "
            "FeatureCross or tfafm.CompressibleLayer matrix where a low rank saves parameters."
        )
    return chosen


def _explicit_ranks(model, ranks: Mapping[str, int], targets: list[Target],
                    skipped: Sequence[SkippedLayer]) -> dict[str, int]:
    by_name = {t.name: t for t in targets}
    resolved = {}
    for name, rank in ranks.items():
        if name in by_name:
            target = by_name[name]
        else:
            layer = resolve_names(model, [name], "ranks")[name]
            matches = [t for t in targets if t.layer is layer]
            if len(matches) != 1:
                names = [t.name for t in matches]
                reasons = [s.reason for s in skipped if s.name == name or s.name.startswith(f"{name}/")]
                why = f" ({'; '.join(reasons)})" if reasons else " (or is excluded)"
                raise UserError(f"ranks names layer {name!r}, which is not compressible{why}"
                                if not matches else f"ranks: layer {name!r} has several matrices {names}; "
                                "give a rank per matrix name.")
            target = matches[0]
        limit = min(target.input_dim, target.output_dim)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= limit:
            raise UserError(f"Layer {target.name!r}: rank must be an integer in [1, {limit}], got {rank!r}.")
        resolved[target.name] = int(rank)
    return resolved


def _fisher(target: Target, statistics, criterion: str) -> np.ndarray | None:
    """The mean Fisher information of the predictions with respect to the matrix's outputs, under ``criterion="loss"``."""
    if criterion != "loss":
        return None
    stats = statistics[target.name]
    return stats.fisher / stats.count


def _spectrum(target: Target, method: str, statistics, criterion: str = "variance") -> np.ndarray:
    """Per rank, what a matrix's next direction keeps: its variance, or with ``criterion="loss"``
    what dropping it costs the predictions (:func:`~tfafm.linalg.factorize.weighted_bases`)."""
    fisher = _fisher(target, statistics, criterion)
    if method == "afm":
        stats = statistics[target.name]
        return weighted_bases(stats.covariance, fisher)[0] if fisher is not None else stats.principal(target.name)[0]
    kernel, _ = adapter_for(target.layer).weights(target.layer, target.matrix)
    if fisher is not None:
        centre = column_mean(kernel) if target.lookups else None
        return weighted_bases(gram(kernel, centre), fisher)[0]
    return weight_spectrum(kernel, lookups=target.lookups)


def check_inner_activation(inner_activation, option: str = "inner_activation") -> None:
    """Raises ``UserError`` (naming ``option``) unless ``inner_activation`` is None or a Keras activation."""
    if inner_activation is None:
        return
    try:
        keras.activations.get(inner_activation)
    except (ValueError, TypeError):
        raise UserError(f"{option}: {inner_activation!r} is not a Keras activation (e.g. relu, gelu, tanh).") from None


def compress(
    model: keras.Model,
    calibration_data=None,
    method: str = METHOD,
    ranks: Mapping[str, int] | None = None,
    energy: float | None = None,
    target_ratio: float | None = None,
    max_auc_drop: float | None = None,
    validation_data=None,
    inner_activation=None,
    include: Iterable[str] | str = ("embeddings", "dense"),
    exclude: Iterable[str] | str = (),
    statistics: Statistics | None = None,
    calibration_steps: int | None = None,
    progress: bool = True,
    min_calibration_rows: int | None = None,
    objective: str = "both",
    quantization: str | None = None,
    criterion: str | None = None,
    first_order: str = "codes",
    id_coverage: float = rare_ids.DEFAULT_COVERAGE,
) -> tuple[keras.Model, CompressionReport]:
    """Replaces a model's compressible matrices by low-rank factors.

    Works on ``keras.Sequential`` and functional models, with operations on
    tensors (``x * 2.0``, ``keras.ops``), nested and shared layers, several
    inputs and outputs. Compressed: ``Dense``, ``Embedding`` (``mask_zero``
    and Keras' id semantics kept), ``EinsumDense``, the projections of
    ``MultiHeadAttention``, keras_rs ``FeatureCross``, and any layer
    implementing :class:`~tfafm.layers.CompressibleLayer`. Quantized layers,
    layers with weight constraints or LoRA are left as they are; the report
    lists every layer left alone with the reason. Every other layer keeps its
    whole state (weights, an adapted lookup's vocabulary, assets), as a
    ``.keras`` round trip would. Subclassed models cannot be rewritten (build
    the low-rank layers yourself with ``from_dense`` / ``from_embedding``).

    Before it is returned, the compressed model is run on sample rows (the
    first rows of ``calibration_data``, else rows generated inside each
    input's valid range): a model that fails to run is never handed back (a
    :class:`~tfafm.errors.UserError` names the layer), and the report records
    how closely its predictions follow the original's on those rows.

    The compressed model is not compiled, like a freshly built model (so it
    holds and saves no optimizer state): ``compile`` it to fine-tune.

    Args:
        model: a trained, built model; it is not modified.
        calibration_data: data for :func:`tfafm.calibrate` (AFM only, unless
            ``statistics`` is given).
        method: ``"afm"`` (output-feature PCA), ``"svd"`` (weights) or
            ``"auto"`` (default): with ``target_ratio`` or ``max_auc_drop`` and
            ``validation_data`` that has 0/1 labels, both are allocated at the
            ratio (AFM as ``"afm"`` would compress, SVD from the weights, or
            with the given ``criterion``), built and evaluated, and SVD is kept
            where its validation AUC is higher beyond noise (paired DeLong
            ``z >= 1.645``) and its LogLoss no higher (under ``max_auc_drop``,
            at each ratio the search tries); otherwise AFM. ``report.method`` says which
            was kept and the report's notes give the AUC of each. AFM usually
            wins, but not on every model and data set, and only held-out labels
            tell.
        ranks: explicit ``{name: rank}``; only these matrices are factored.
            Names are layer names (qualified ``outer/inner`` when not unique)
            or, for layers with several matrices, ``layer/matrix``.
        energy: keep this fraction of each matrix's output variance (under
            ``criterion="loss"``, of its variance weighted by the Fisher
            information, what the report's ``variance_kept`` counts too).
        target_ratio: shrink the model's LiteRT file under ``quantization``
            (as :func:`tfafm.compression.report.estimated_file_bytes` counts
            it: every weight, not only the compressible matrices) and, with
            ``objective`` latency, the compressible matrices' reads by this
            factor, with ranks allocated globally by
            variance bought per byte; a matrix is factored only well below
            break-even (``tfafm.compression.ranks.BREAK_EVEN``), otherwise it
            stays whole and the budget goes elsewhere.
        max_auc_drop: instead of a ratio, the largest AUC loss allowed on
            ``validation_data`` (labels needed): returns the smallest model,
            in the bytes of ``quantization``, whose AUC (every output with
            labels) stays within ``max_auc_drop`` of the original's, found by
            a search over ``target_ratio`` that reuses one calibration (at
            most :data:`tfafm.compression.budget.MAX_EVALUATIONS`
            evaluations); the report lists the ratios tried.
        validation_data: held-out rows on which the original and the
            compressed model are both evaluated (AUC and LogLoss per output
            with labels, and how closely the predictions agree); the result
            is in ``report.accuracy``. A ``tf.data.Dataset`` of ``(features,
            labels)`` or feature batches, or a ``(features, labels)`` pair.
        inner_activation: activation between the factors of ``Dense`` layers
            (needs fine-tuning).
        include: kinds to target: ``"embeddings"`` and/or ``"dense"`` (every
            other matrix kind).
        exclude: layer or matrix names never to factor.
        statistics: precomputed calibration statistics.
        calibration_steps: calibrate on at most this many batches.
        progress: show calibration progress.
        min_calibration_rows: see :func:`tfafm.calibrate`.
        objective: what ``target_ratio`` shrinks: ``"both"`` (default: the
            file shrinks by ``target_ratio``, and the bytes read per batch-1
            request by as much of it as costs the predictions next to
            nothing, :data:`~tfafm.compression.ranks.LATENCY_LOSS_SHARE`), ``"params"`` (bytes stored, the file size
            only) or ``"latency"`` (bytes read per batch-1 request plus a
            fixed cost per op only: MLP matrices are read whole, a table one
            row per lookup, so tables mostly stay whole).
        quantization: the LiteRT quantization the model will be exported with
            (``None``, ``"float16"``, ``"dynamic"``, ``"int8"``), so costs are
            counted in its bytes (under ``"dynamic"``, factors of fewer than
            1024 elements stay float32).
        criterion: what the factors keep (default: ``"loss"`` for AFM,
            ``"variance"`` for SVD, which then needs no data). ``"variance"`` (AFM as published):
            each matrix keeps the directions of most output variance, and a
            budget goes to each matrix by its share of its own variance (all
            tables as one). ``"loss"``: what the predictions see; each
            matrix keeps the directions whose loss would cost the
            predictions most (output variance weighted by the Fisher
            information of the predictions with respect to the outputs,
            :func:`~tfafm.linalg.factorize.weighted_bases`), and a budget
            goes where it avoids the most of that loss, in one currency for
            all matrices. Needs calibration data, or statistics from
            :func:`tfafm.calibrate` with its default ``fisher=True``; for SVD
            too (``criterion="variance"`` gives SVD as published, from the
            weights alone).
        first_order: ``"codes"`` (default) or ``"keep"``. A first-order term
            (tfafm's ``LinearTerms``: one weight per field and id, as in DeepFM,
            Wide&Deep, NFM, xDeepFM, FiBiNET) whose fields' ids each feed one
            embedding is, under ``"codes"``, read from those embeddings' outputs
            by one ``Dense(1)`` fitted on the ids of ``calibration_data``
            (:mod:`tfafm.compression.first_order`) wherever that costs the
            predictions less than keeping its table (which, at one value per id,
            would take bytes from the codes). Needs AFM with
            ``criterion="loss"``, ``target_ratio`` or ``max_auc_drop``, and
            ``calibration_data`` (also with ``statistics``); the report's notes
            say what was chosen and how much of the term's variance the fit
            keeps. ``"keep"``: the table stays as it is.
        id_coverage: with ``target_ratio`` or ``max_auc_drop`` (AFM, ``criterion="loss"``,
            ``calibration_data``): a share ``c`` prunes the rows of rare ids. In each field
            behind tfafm's id guard (a :class:`~tfafm.models.layers.ClipToVocabulary`), the
            most frequent ids covering ``c`` of the field's calibration lookups keep their
            rows; every other id reads row 0, which becomes their lookup-weighted mean
            (:mod:`tfafm.compression.rare_ids`). ``1`` keeps every row. ``"auto"`` (default):
            with ``validation_data`` that has 0/1 labels, the model is compressed with every
            row and at each coverage of :data:`~tfafm.compression.rare_ids.AUTO_LEVELS` and
            the one with the highest validation AUC is kept (under ``max_auc_drop``, at each
            ratio the search tries); without labels, every row is kept. Pruning helps where
            rare ids' rows are mostly noise and hurts where they carry signal, which only
            held-out labels tell apart. The ratio is counted against the original model; the
            report's notes give the rows kept and the AUC of each coverage tried.

    Returns:
        ``(compressed_model, report)``. Automatic rank choices never factor a
        matrix where the factors would not save parameters (such as a final
        ``Dense(1)``); explicit ``ranks`` are used as given.

    Example:

    >>> import numpy as np, keras, tfafm
    >>> x = np.random.default_rng(0).normal(size=(512, 32)).astype("float32")
    >>> inputs = keras.Input((32,), name="x")
    >>> hidden = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    >>> small, report = tfafm.compress(model, x, target_ratio=4, progress=False)
    >>> small.count_params() < model.count_params()
    True
    >>> [row.name for row in report.layers]
    ['hidden']
    """
    check_budget(ranks, energy, target_ratio, calibration_steps, min_calibration_rows, max_auc_drop,
                 validation_data)
    require_graph_model(model)
    if method not in METHODS:
        raise UserError(f"Unknown compression method {method!r}; expected one of {METHODS}.")
    weigh_svd = method == "auto"  # weight SVD built beside AFM and chosen on the validation AUC
    asked_method, method = method, "afm" if weigh_svd else method
    svd_criterion = criterion or "variance"
    chosen_options = [name for name, value in (("ranks", ranks), ("energy", energy), ("target_ratio", target_ratio),
                                               ("max_auc_drop", max_auc_drop)) if value is not None]
    if len(chosen_options) != 1:
        raise UserError("Give exactly one of ranks, energy, target_ratio or max_auc_drop (got "
                        f"{chosen_options or 'none'}).")
    check_inner_activation(inner_activation)
    if criterion is None:
        criterion = "loss" if method == "afm" else "variance"
    if criterion not in CRITERIA:
        raise UserError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    if first_order not in first_orders.CHOICES:
        raise UserError(f"first_order must be one of {first_orders.CHOICES}, got {first_order!r}.")
    rare_ids.check_coverage(id_coverage)
    costs = cost_models(objective, quantization)
    searched = target_ratio is not None or max_auc_drop is not None
    budgeted = method == "afm" and criterion == "loss" and searched
    all_targets, skipped = find_targets(model)
    targets = _select(model, all_targets, include, exclude)
    if ranks is not None:
        ranks = _explicit_ranks(model, ranks, targets, skipped)
        targets = [t for t in targets if t.name in ranks]

    by_loss = criterion == "loss"
    if method == "afm" or by_loss:
        needs = f"method={asked_method!r}" + (" with criterion='loss'" if by_loss else "")
        if statistics is None:
            if calibration_data is None:
                raise UserError(f"{needs} needs calibration_data (or precomputed statistics).")
            statistics = calibrate(model, calibration_data, layers=[t.name for t in targets],
                                   calibration_steps=calibration_steps, progress=progress,
                                   min_calibration_rows=min_calibration_rows, fisher=by_loss)
        missing = [t.name for t in targets if t.name not in statistics]
        if missing:
            raise UserError(f"statistics have no entry for layer(s) {missing}.")
        for target in targets:
            statistics[target.name].check(target.name)
        without = [t.name for t in targets if statistics[t.name].fisher is None]
        if by_loss and without:
            raise UserError(f"criterion='loss' needs the Fisher information of every matrix; the statistics of "
                            f"{without[:3]} have none: calibrate(..., fisher=True).")
    rows = sample_rows(model, calibration_data) if calibration_data is not None else generated_rows(model)
    reference = run_checked(model, rows, f"Model {model.name!r}")
    # The original's validation predictions, only where candidates are to be compared on them.
    choosing = searched and validation_data is not None and (
        weigh_svd or (budgeted and id_coverage == "auto" and calibration_data is not None
                      and bool(rare_ids.find_fields(model))))
    validation = labelled(model, validation_data) if choosing else None
    variants, choice_notes = [(model, None)], []
    too_few = too_few_to_choose(validation[1]) if validation is not None else None
    if too_few is not None:  # the defaults, not a choice made by noise
        choice_notes.append(f"{too_few}: AFM{', every row kept' * (id_coverage == 'auto')}, without weighing "
                            "the alternatives")
        validation, weigh_svd = None, False
        id_coverage = 1.0 if id_coverage == "auto" else id_coverage
    if budgeted and calibration_data is not None:
        variants, choice_note = _variants(model, calibration_data, calibration_steps, id_coverage, validation,
                                          rows, reference)
        choice_notes += [choice_note] if choice_note else []
    names = {t.name for t in targets}
    plans = []
    for variant, pruning in variants:
        variant_targets = targets if pruning is None else [t for t in find_targets(variant)[0] if t.name in names]
        linear = None
        if first_order == "codes" and budgeted and calibration_data is not None:
            found = first_orders.find_plan(variant)
            if found is not None:
                linear = (found, first_orders.count_ids(variant, found, calibration_data, calibration_steps))
        plans.append(_Plan(variant, variant_targets, skipped, method, statistics, inner_activation, costs,
                           criterion, linear, model, pruning))
    widest = plans[-1]  # the most rows pruned: the farthest reach
    if weigh_svd and searched and validation is not None:
        # On the rows AFM keeps where id_coverage is a number (pruned as asked), else on every row.
        base = plans[0] if id_coverage != "auto" else None
        plans.append(_Plan(base.model if base else model, base.targets if base else targets, skipped, "svd",
                           statistics, inner_activation, costs, svd_criterion, original=model,
                           pruning=base.pruning if base else None, challenger=True))
    elif weigh_svd and searched:
        choice_notes.append("method: AFM; method='auto' weighs weight SVD beside it on validation_data with 0/1 "
                            "labels of both classes, and none was given")
    plan, search, candidate = plans[0], None, None
    if energy is not None:
        ranks = ranks_for_energy(plan.by_name, plan.spectra, energy)
    elif target_ratio is not None and len(plans) > 1:
        candidate = best_of(plans, target_ratio, validation_data, *validation, quantization)
        if not candidate.reachable:
            widest.ranks_for_ratio(target_ratio)  # out of reach even with the most rows pruned: says why
        ranks = candidate.ranks
    elif target_ratio is not None:
        ranks = plan.ranks_for_ratio(target_ratio)
    elif max_auc_drop is not None:
        search = smallest_within_budget(plans, validation_data, max_auc_drop, quantization, validation)
        ranks = search.chosen.ranks
        candidate = search.chosen
    plan = getattr(ranks, "plan", plan)

    compressed, report = plan.build(ranks)
    check_input_layers(plan.model, plan.copies, rows)
    if getattr(ranks, "first_order", None) is not None:
        first_orders.check(plan.model, compressed, plan.linear[0], ranks.first_order, rows)
    checked = run_checked(compressed, rows, "The compressed model")
    accuracy = {"check": sample_agreement(reference, checked, len(next(iter(rows.values()))),
                                          "calibration data" if calibration_data is not None else "generated inputs")}
    if candidate is not None:
        accuracy["validation"] = candidate.validation
    elif validation_data is not None:
        accuracy["validation"] = compare_on(model, compressed, validation_data)
    if search is not None:
        accuracy["budget"] = search.summary()
    notes = report.notes
    if candidate is not None and candidate.variants:
        notes += (_choice_note(plans, candidate),)
    else:
        notes += tuple(choice_notes)
    return compressed, dataclasses.replace(report, accuracy=accuracy, quantization=quantization,
                                           criterion=plan.criterion, notes=notes)


def _choice_note(plans, candidate) -> str:
    """What was chosen between ``plans`` on the validation AUC at the candidate's ratio, and the drop of each
    (AFM's variants named by their id_coverage where there are several, else ``afm``; SVD ``svd``)."""
    several_coverages = sum(plan.method == "afm" for plan in plans) > 1
    drops = ", ".join(f"{label if several_coverages or label == 'svd' else 'afm'} "
                      f"{'out of reach' if drop is None else f'{drop:+.4f}'}" for label, drop in candidate.variants)
    if not any(plan.method == "svd" for plan in plans):
        return f"rows of rare ids: id_coverage chosen on the validation AUC at this ratio (AUC drop: {drops})"
    chosen = candidate.ranks.plan
    if chosen.method == "svd" and all(drop is None for label, drop in candidate.variants if label != "svd"):
        return f"method: SVD, the only one to reach this ratio (AUC drop: {drops})"
    return (f"method: {chosen.method.upper()}{'' if chosen.pruning is None else f' (id_coverage {chosen.pruning.coverage:g})'}, "
            f"chosen on the validation AUC at this ratio between AFM{' at each id_coverage' * several_coverages} "
            f"and weight SVD, SVD only where its AUC is higher beyond noise (paired DeLong z >= {SIGNIFICANT_Z}) "
            f"and its LogLoss no higher (AUC drop: {drops})")


def _variants(model, calibration_data, steps: int | None, id_coverage, validation, rows, reference):
    """The models to allocate ranks in: ``(model, None)`` and, per coverage of ``id_coverage`` below 1
    that prunes something, ``(pruned model, Pruning)`` (:mod:`tfafm.compression.rare_ids`); and a note
    when ``"auto"`` could not choose (it needs ``validation``, the original's validation predictions
    and labels). Each pruned model is checked against the original on the sample ``rows`` whose ids
    all kept their rows (:func:`~tfafm.compression.rare_ids.check`; ``reference``: the original's
    outputs there)."""
    coverages = [c for c in rare_ids.levels(id_coverage) if c < 1.0]
    if not coverages or not rare_ids.find_fields(model):
        return [(model, None)], None
    if id_coverage == "auto" and validation is None:
        return [(model, None)], ("rows of rare ids all kept: id_coverage='auto' chooses how many to prune on "
                                 "validation_data with 0/1 labels of both classes, and none was given (or give "
                                 "id_coverage=0.95)")
    with failures_named(f"Counting the ids of model {model.name!r} in the calibration data fails"):
        counted = rare_ids.count(model, calibration_data, steps)
    variants = [] if id_coverage != "auto" else [(model, None)]
    for coverage in coverages:
        with failures_named(f"Pruning the rows of rare ids of model {model.name!r} fails"):
            pruned, pruning = rare_ids.prune(model, counted, coverage)
        if pruning is not None:
            rare_ids.check(model, pruned, counted, pruning, rows, reference)
            variants.append((pruned, pruning))
    return variants or [(model, None)], None


class Allocation(dict):
    """Ranks by matrix name (as a dict), and the first-order term they were allocated with:
    ``first_order`` the fit reading it from the embeddings (None: its table is kept), ``note``
    what was weighed; ``plan`` the :class:`_Plan` that allocated them (and builds the model)."""

    def __init__(self, ranks: Mapping[str, int], first_order=None, note: str | None = None, plan=None):
        super().__init__(ranks)
        self.first_order, self.note, self.plan = first_order, note, plan


class _Plan:
    """One calibration's worth of compression: the targets, their spectra and how to build
    the compressed model and its report at any ranks (the budget search builds several).
    ``linear``: a first-order term that may be read from the embeddings, with its id counts.
    ``model`` is the model compressed: ``original`` itself, or ``original`` with the rows of rare ids
    pruned (``pruning``); sizes, ratios and the budget's reference predictions are the original's."""

    def __init__(self, model, targets: list[Target], skipped, method: str, statistics, inner_activation, costs,
                 criterion: str = "variance", linear=None, original=None, pruning=None, challenger: bool = False):
        self.original = original if original is not None else model
        self.challenger = challenger  # chosen over the plans before it only when better beyond noise (best_of)
        self.pruning = pruning
        # Its name among the variants: its id_coverage (AFM), or "svd".
        self.label = "svd" if method == "svd" else f"{pruning.coverage:g}" if pruning is not None else "1"
        self.model, self.targets, self.skipped = model, targets, skipped
        self.method, self.statistics, self.inner_activation, self.costs = method, statistics, inner_activation, costs
        self.criterion, self.linear = criterion, linear
        self.spectra = {t.name: _spectrum(t, method, statistics, criterion) for t in targets}
        self.by_name = {t.name: t for t in targets}
        self.file_bytes = estimated_file_bytes(self.original, costs[0].quantization)
        # What pruning took off the original's file (rows of tables, whole or candidates): the budget spends it.
        self.pruned_bytes = self.file_bytes - (estimated_file_bytes(model, costs[0].quantization)
                                               if model is not self.original else self.file_bytes)
        self.params_before = {t.name: t.params() for t in find_targets(self.original)[0]}
        self.copies: list = []  # (original, copy) layers re-created by the last build()

    def ranks_for_ratio(self, target_ratio: float) -> Allocation:
        """Ranks shrinking the model's file (and, with a latency cost, the candidates' reads) by
        ``target_ratio``; with a first-order term that may be read from the embeddings, the
        allocation with or without its table that costs the predictions less."""
        def allocate(freed: float = 0.0) -> dict[str, int]:
            return ranks_for_ratio(self.by_name, self.spectra, target_ratio, self.costs, self.file_bytes,
                                   self.criterion, freed_bytes=freed + self.pruned_bytes)

        if self.linear is None:
            return Allocation(allocate(), plan=self)
        plan, counts = self.linear
        try:
            kept = allocate()
        except UserError:
            kept = None
        folded = allocate(plan.freed_bytes(self.costs[0].quantization))  # out of reach: its error names the reach
        fit = first_orders.fit(plan, counts, lambda layer, rows: self._factors_on(layer, rows, folded))
        name = plan.linear.name
        if kept is not None and self._lost(kept) <= self._lost(folded) + fit.loss:
            return Allocation(kept, None, f"first-order weights of {name!r} kept whole: reading them from the "
                              f"fields' embeddings (keeping {fit.kept:.1%} of their variance) would cost the "
                              "predictions more than the bytes they free buy the codes", self)
        return Allocation(folded, fit, f"first-order weights of {name!r} ({sum(plan.linear.vocabulary_sizes):,} "
                          f"values) read from the fields' embeddings by one Dense(1) fitted "
                          f"{'jointly across fields' if fit.joint else 'field by field'} on {counts.rows:,} "
                          f"calibration rows, keeping {fit.kept:.1%} of their variance"
                          + (f" on {fit.held_out:,} held-out ones" if fit.held_out else " (predicted)"), self)

    def _lost(self, ranks: Mapping[str, int]) -> float:
        """What ``ranks`` cost the predictions, by the spectra (the loss criterion's currency)."""
        return sum(float(np.sum(self.spectra[name][rank:])) for name, rank in ranks.items())

    def _factors_on(self, layer, rows: np.ndarray, ranks: Mapping[str, int]):
        """The factors of embedding ``layer`` at ``ranks``, computed on ``rows`` of its table (None: left whole)."""
        target = next((t for t in self.targets if t.layer is layer and t.name in ranks), None)
        if target is None:
            return None
        return factor(target.name, rows, None, ranks[target.name], self.statistics[target.name], self.method,
                      lookups=True, fisher=_fisher(target, self.statistics, self.criterion))

    def build(self, ranks: Mapping[str, int]) -> tuple[keras.Model, CompressionReport]:
        """The compressed model at ``ranks`` (an :class:`Allocation` may read a first-order term from
        the embeddings) and its report."""
        replacements = {}
        for layer_targets in _by_layer([t for t in self.targets if t.name in ranks]):
            layer = layer_targets[0].layer
            adapter = adapter_for(layer)
            factors = {}
            for target in layer_targets:
                kernel, bias = adapter.weights(layer, target.matrix)
                stats = self.statistics.get(target.name) if self.statistics is not None else None
                factors[target.matrix] = factor(target.name, kernel, bias, ranks[target.name], stats, self.method,
                                                lookups=target.lookups,
                                                fisher=_fisher(target, self.statistics, self.criterion))
                del kernel
            replacements[id(layer)] = adapter.factored(layer, factors, inner_activation=self.inner_activation)
        fit = getattr(ranks, "first_order", None)
        hook = first_orders.rewire(self.linear[0], fit) if fit is not None else None
        with failures_named(f"Rebuilding model {self.model.name!r} with its layers re-created from their configs fails"):
            compressed, shared, self.copies = rebuild(self.model, replacements, hook)
        rows = []
        for target in self.targets:
            rank = ranks.get(target.name)
            rows.append(LayerReport(
                name=target.name, kind=target.kind, input_dim=target.input_dim, output_dim=target.output_dim,
                rank=rank, params_before=self.params_before.get(target.name, target.params()),
                params_after=target.params(rank) if rank else target.params(),
                variance_kept=energy_kept(self.spectra[target.name], rank) if rank else None,
            ))
        notes = tuple(f"layer {name!r} could not be re-created from its config and is shared with the original "
                      "model (give it a get_config)" for name in shared)
        if self.pruning is not None:
            notes += (self.pruning.note(),)
        if getattr(ranks, "note", None):
            notes += (ranks.note,)
        report = CompressionReport(self.method, tuple(rows), self.original.count_params(), compressed.count_params(),
                                   skipped=tuple(self.skipped), notes=notes)
        return compressed, report


def _by_layer(targets: list[Target]) -> list[list[Target]]:
    groups: dict[int, list[Target]] = {}
    for target in targets:
        groups.setdefault(id(target.layer), []).append(target)
    return list(groups.values())
