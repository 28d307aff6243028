"""``compress()``: rewrite a functional Keras model with low-rank layers."""

from __future__ import annotations

from typing import Iterable, Mapping

import keras
import keras_rs
import numpy as np

from tfafm.compression.calibration import calibrate
from tfafm.compression.factorize import check_method, factor_dense, weight_spectrum
from tfafm.compression.graph import Candidate, Rebuilder, compressible_layers, iter_layers, require_functional
from tfafm.compression.ranks import energy_kept, ranks_for_energy, ranks_for_ratio
from tfafm.compression.report import CompressionReport, LayerReport
from tfafm.compression.statistics import Statistics
from tfafm.layers.low_rank import LowRankDense, LowRankEmbedding

_KINDS = {"embeddings": ("embedding",), "dense": ("dense", "cross")}


def _select_candidates(model, include, exclude) -> dict[str, Candidate]:
    unknown_kinds = sorted(set(include) - set(_KINDS))
    if unknown_kinds:
        raise ValueError(f"include has unknown kind(s) {unknown_kinds}; expected some of {sorted(_KINDS)}.")
    all_names = {layer.name for layer in iter_layers(model)}
    unknown = sorted(set(exclude) - all_names)
    if unknown:
        raise ValueError(f"exclude names unknown layer(s) {unknown} of model {model.name!r}.")
    kinds = {k for token in include for k in _KINDS[token]}
    candidates = {
        n: c for n, c in compressible_layers(model).items() if c.kind in kinds and n not in set(exclude)
    }
    if not candidates:
        raise ValueError(
            f"Model {model.name!r} has nothing compressible (include={tuple(include)}, "
            f"exclude={tuple(exclude)}): no Dense, Embedding or FeatureCross layer where a low rank saves parameters."
        )
    return candidates


def _weight_matrix(layer) -> np.ndarray:
    if isinstance(layer, keras.layers.Embedding):
        return layer.embeddings.numpy()
    if isinstance(layer, keras_rs.layers.FeatureCross):
        return layer.dense.kernel.numpy()
    return layer.kernel.numpy()


def _spectra(model, candidates, method, statistics) -> dict[str, np.ndarray]:
    layers = {layer.name: layer for layer in iter_layers(model)}
    if method == "svd":
        return {n: weight_spectrum(_weight_matrix(layers[n])) for n in candidates}
    return {n: statistics[n].principal(n)[0] for n in candidates}


def _check_explicit_ranks(ranks: Mapping[str, int], candidates: Mapping[str, Candidate], model) -> dict:
    all_names = {layer.name for layer in iter_layers(model)}
    for name, rank in ranks.items():
        if name not in all_names:
            raise ValueError(f"ranks names unknown layer {name!r} of model {model.name!r}.")
        if name not in candidates:
            raise ValueError(f"ranks names layer {name!r}, which is not compressible (or is excluded).")
        limit = min(candidates[name].input_dim, candidates[name].output_dim)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= limit:
            raise ValueError(f"Layer {name!r}: rank must be an integer in [1, {limit}], got {rank!r}.")
    return {n: int(r) for n, r in ranks.items()}


def _low_rank_cross(layer, rank: int, stats, method: str):
    """A ``FeatureCross`` with ``projection_dim=rank`` mimicking ``layer``'s inner dense."""
    inner = layer.dense
    kernel = inner.kernel.numpy().astype(np.float64)
    bias = inner.bias.numpy().astype(np.float64) if inner.use_bias else None
    down, up, down_bias, up_bias = factor_dense(layer.name, kernel, bias, rank, stats, method)
    config = layer.get_config()
    config.update(projection_dim=rank, use_bias=True)
    new = keras_rs.layers.FeatureCross.from_config(config)
    new.build((None, kernel.shape[0]))
    new.down_proj_dense.build((None, kernel.shape[0]))
    new.dense.build((None, rank))
    new.down_proj_dense.kernel.assign(down.astype(np.float32))
    new.dense.kernel.assign(up.astype(np.float32))
    new.dense.bias.assign((up_bias + down_bias @ up).astype(np.float32))
    return new


def compress(
    model: keras.Model,
    calibration_data=None,
    method: str = "afm",
    ranks: Mapping[str, int] | None = None,
    energy: float | None = None,
    target_ratio: float | None = None,
    inner_activation=None,
    include: Iterable[str] = ("embeddings", "dense"),
    exclude: Iterable[str] = (),
    statistics: Statistics | None = None,
    calibration_steps: int | None = None,
    progress: bool = True,
) -> tuple[keras.Model, CompressionReport]:
    """Replaces ``Dense``, ``Embedding`` and ``FeatureCross`` layers by low-rank ones.

    Args:
        model: a trained functional model (nested functional models and shared
            layers are fine; subclassed models are not).
        calibration_data: data for :func:`tfafm.calibrate` (AFM only, unless
            ``statistics`` is given).
        method: ``"afm"`` (output-feature PCA) or ``"svd"`` (weights).
        ranks: explicit ``{layer_name: rank}``; only these layers are factored.
        energy: keep this fraction of each layer's output variance.
        target_ratio: shrink the compressible parameters by this factor, with
            ranks allocated globally by variance bought per parameter.
        inner_activation: activation between the factors of ``Dense`` layers
            (needs fine-tuning; not applied to embeddings or cross layers).
        include: kinds to target: ``"embeddings"`` and/or ``"dense"`` (which
            covers ``FeatureCross``).
        exclude: layer names never to factor.
        statistics: precomputed calibration statistics.
        calibration_steps: limit calibration to this many batches.
        progress: show a progress bar while calibrating.

    Returns:
        ``(compressed_model, report)``. Automatic rank choices never factor a
        layer where the factors would not save parameters, nor the final
        ``Dense(1)`` logit layer; explicit ``ranks`` are used as given.
    """
    require_functional(model)
    check_method(method)
    chosen = [option for option in ("ranks", "energy", "target_ratio")
              if {"ranks": ranks, "energy": energy, "target_ratio": target_ratio}[option] is not None]
    if len(chosen) != 1:
        raise ValueError(f"Give exactly one of ranks, energy or target_ratio (got {chosen or 'none'}).")
    candidates = _select_candidates(model, tuple(include), tuple(exclude))
    if ranks is not None:
        ranks = _check_explicit_ranks(ranks, candidates, model)
        candidates = {n: c for n, c in candidates.items() if n in ranks}

    if method == "afm" and statistics is None:
        if calibration_data is None:
            raise ValueError("method='afm' needs calibration_data (or precomputed statistics).")
        statistics = calibrate(model, calibration_data, layers=list(candidates),
                               steps=calibration_steps, progress=progress)
    if method == "afm":
        missing = [n for n in candidates if n not in statistics]
        if missing:
            raise ValueError(f"statistics have no entry for layer(s) {missing}.")
        for name in candidates:
            statistics[name].check(name)
    spectra = _spectra(model, candidates, method, statistics)
    if energy is not None:
        ranks = ranks_for_energy(candidates, spectra, energy)
    elif target_ratio is not None:
        ranks = ranks_for_ratio(candidates, spectra, target_ratio)

    def replace(layer, args, kwargs, rebuilder: Rebuilder):
        rank = ranks.get(layer.name)
        if rank is None or layer.name not in candidates:
            return NotImplemented
        stats = statistics.get(layer.name) if statistics is not None else None
        kind = candidates[layer.name].kind
        if kind == "embedding":
            factory = lambda: LowRankEmbedding.from_embedding(layer, rank, stats, method)  # noqa: E731
        elif kind == "dense":
            factory = lambda: LowRankDense.from_dense(  # noqa: E731
                layer, rank, stats, method, inner_activation=inner_activation)
        else:
            factory = lambda: _low_rank_cross(layer, rank, stats, method)  # noqa: E731
        return rebuilder.layer_for(layer, factory)(*args, **kwargs)

    compressed = Rebuilder(replace).rebuild(model)
    rows = []
    for name, candidate in candidates.items():
        rank = ranks.get(name)
        rows.append(LayerReport(
            name=name, kind=candidate.kind, input_dim=candidate.input_dim,
            output_dim=candidate.output_dim, rank=rank, params_before=candidate.params(),
            params_after=candidate.params(rank) if rank else candidate.params(),
            variance_kept=energy_kept(spectra[name], rank) if rank else None,
        ))
    report = CompressionReport(method, tuple(rows), model.count_params(), compressed.count_params())
    return compressed, report
