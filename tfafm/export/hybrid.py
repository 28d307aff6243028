"""Dense layers whose dynamic-range int8 inputs would lose precision are split by input block.

LiteRT's dynamic-range ``FULLY_CONNECTED`` quantizes each row of its input
with one int8 scale spanning the row (:mod:`tfafm.linalg.int8`). A Dense over
the concatenation of blocks of very different magnitudes -- FiBiNET's
bilinear products (about 1e-4) beside raw dense features (about 1) -- loses
the small block: a FiBiNET trained on 50,000 synthetic Criteo-like rows
exported with mean |file - keras| 0.0125 and AUC 0.6109 against Keras'
0.6175 on 20,000 held-out rows; split, 0.0003 and 0.61747. Computing such a Dense block by block
(:class:`~tfafm.layers.blockwise.BlockwiseDense`, one matmul and one input
scale per block of the concatenation) keeps each block's precision; in float
it is the same function. A compressed model's first
:class:`~tfafm.layers.LowRankDense` reads the same concatenations (after
fusion: the rows of all fields beside raw dense features); its first factor
is split the same way (:class:`~tfafm.layers.blockwise.BlockwiseLowRankDense`).

:func:`tfafm.export.litert` calls this only for a dynamic-range file that
disagrees with its Keras model, and converts again. A Dense is split where it
pays: on the rows the export is checked on, the simulated int8 error of its
output (relative to the output's spread) exceeds :data:`ERROR_LIMIT` whole;
block boundaries (among those of the concatenation) are added one at a time,
the best first, while each at least halves the error, and the split is kept
if it lowers the error at least :data:`GAIN` times. So a first deep layer
over per-field embeddings and dense features is split where the magnitudes
change (embeddings | dense features), not once per field.
"""

from __future__ import annotations

from typing import Mapping

import keras
import numpy as np

from tfafm.compression.report import DYNAMIC_MIN_ELEMENTS
from tfafm.compression.rewrite import rebuild
from tfafm.graph import call_sources, model_inputs
from tfafm.layers.blockwise import BlockwiseDense, BlockwiseLowRankDense
from tfafm.layers.low_rank import LowRankDense
from tfafm.linalg.int8 import hybrid_matmul_error

ERROR_LIMIT = 0.01
GAIN = 3.0


def _concatenated_widths(producer) -> list[int] | None:
    """The widths of what ``producer`` concatenates along the last axis, or None."""
    if not isinstance(producer, keras.layers.Concatenate):
        return None
    shapes = [tuple(tensor.shape) for tensor in producer.input]
    if producer.axis not in (-1, len(shapes[0]) - 1):
        return None
    widths = [shape[-1] for shape in shapes]
    return widths if len(widths) > 1 and None not in widths else None


def coarsest_blocks(x: np.ndarray, kernel: np.ndarray, widths: list[int]) -> tuple[list[int], float, float]:
    """The fewest blocks (merging consecutive ``widths``) that bring the simulated dynamic-int8 error
    of ``x @ kernel`` down, greedily (see the module docstring): ``(blocks, error whole, error split)``."""
    edges = np.cumsum(widths)[:-1].tolist()
    total = int(sum(widths))
    chosen: list[int] = []

    def error(cuts):
        bounds = [0, *sorted(cuts), total]
        return hybrid_matmul_error(x, kernel, np.diff(bounds).tolist())

    whole = current = error([])
    while current > ERROR_LIMIT:
        candidates = [(error(chosen + [edge]), edge) for edge in edges if edge not in chosen]
        if not candidates or min(candidates)[0] > current / 2:
            break
        current, edge = min(candidates)
        chosen.append(edge)
    return np.diff([0, *sorted(chosen), total]).tolist(), whole, current


def _first_matmul(layer) -> np.ndarray | None:
    """The kernel a plain Dense or :class:`LowRankDense` multiplies its input by, or None."""
    if type(layer) is keras.layers.Dense:
        return layer.kernel.numpy()
    if type(layer) is LowRankDense:
        return layer.down_kernel.numpy()
    return None


def _blockwise(layer, blocks: list[int]):
    """``layer`` (Dense or LowRankDense) computed over ``blocks``, with its weights."""
    config = layer.get_config()
    if isinstance(layer, LowRankDense):
        config = {key: value for key, value in config.items() if key not in ("units", "rank")}
        split = BlockwiseLowRankDense(layer.units, layer.rank, blocks, **config)
    else:
        split = BlockwiseDense(layer.units, blocks, **{key: value for key, value in config.items() if key != "units"})
    split.build(layer.input.shape)
    split.set_weights(layer.get_weights())
    return split


def split_coarse_inputs(model: keras.Model, rows: Mapping[str, np.ndarray]) -> tuple[keras.Model, list[str]]:
    """``model`` with each top-level Dense (or first factor of a LowRankDense) over a concatenation that
    dynamic-range int8 would make coarse computed block by block (see the module docstring), and a note
    per split layer; ``model`` itself when none is."""
    sources = call_sources(model)
    by_name = {layer.name: layer for layer in model.layers}
    replacements, notes = {}, []
    for layer in model.layers:
        kernel = _first_matmul(layer)
        if kernel is None or kernel.size < DYNAMIC_MIN_ELEMENTS:
            continue
        source = sources.get(layer.name, [])
        widths = _concatenated_widths(by_name.get(source[0][0])) if len(source) == 1 else None
        if widths is None:
            continue
        features = keras.Model(model.inputs, layer.input)(model_inputs(model, rows))
        x = np.asarray(features, dtype=np.float64).reshape(-1, sum(widths))
        blocks, whole, split = coarsest_blocks(x, kernel, widths)
        if len(blocks) > 1 and whole > ERROR_LIMIT and whole >= GAIN * split:
            replacements[id(layer)] = _blockwise(layer, blocks)
            notes.append(f"{layer.name}: computed in {len(blocks)} blocks {blocks} for dynamic int8 "
                         f"(simulated error {whole:.3f} -> {split:.3f} of its output's spread)")
    if not replacements:
        return model, []
    return rebuild(model, replacements)[0], notes
