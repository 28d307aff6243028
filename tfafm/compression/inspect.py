"""What ``compress`` would do to a model, before any data is at hand.

:func:`inspect_model` lists the model's layers and parameters, the matrices
compression would factor and the layers it would leave alone (with the
reason), and the file size to expect under each LiteRT quantization at a few
compression ratios. Without calibration data the ranks behind those sizes are
allocated on the weights' own spectra (weight SVD); AFM's ranks differ, its
budget does not: at ratio ``r`` the file is ``1/r`` of the original's either way.
"""

from __future__ import annotations

from typing import Any

import keras

from tfafm.graph import require_graph_model, walk
from tfafm.compression.ranks import CostModel, ranks_for_ratio
from tfafm.compression.report import estimated_file_bytes
from tfafm.compression.targets import adapter_for, find_targets
from tfafm.errors import UserError
from tfafm.linalg.factorize import weight_spectrum

RATIOS = (2, 4, 8, 16, 32, 64)
QUANTIZATIONS = (None, "float16", "dynamic", "int8")


def inspect_model(model: keras.Model, ratios=RATIOS) -> dict[str, Any]:
    """The model's layers, its compressible matrices and the expected file sizes (see the
    module docstring), as a JSON-ready dict.

    >>> import keras
    >>> inputs = keras.Input((64,), name="x")
    >>> hidden = keras.layers.Dense(256, activation="relu", name="hidden")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, name="out")(hidden))
    >>> inspection = inspect_model(model)
    >>> [t["name"] for t in inspection["compressible"]], inspection["left_alone"][0]["name"]
    (['hidden'], 'out')
    >>> sizes = inspection["expected_bytes"][0]
    >>> sizes["quantization"], sizes["original_bytes"], sizes["ratios"]["4"] < sizes["original_bytes"]
    ('float32', 69188, True)
    """
    require_graph_model(model)
    targets, skipped = find_targets(model)
    layers = [{"name": name, "class": type(layer).__name__, "params": int(layer.count_params()) if layer.built else 0}
              for name, layer in walk(model)]
    spectra = {}
    for target in targets:
        kernel, _ = adapter_for(target.layer).weights(target.layer, target.matrix)
        spectra[target.name] = weight_spectrum(kernel, lookups=target.lookups)
    by_name = {t.name: t for t in targets}
    sizes = []
    for quantization in QUANTIZATIONS:
        cost = CostModel("params", quantization)
        original = estimated_file_bytes(model, quantization)
        row = {"quantization": quantization or "float32", "original_bytes": original, "ratios": {}}
        for ratio in ratios:
            try:
                ranks = ranks_for_ratio(by_name, spectra, ratio, cost, original) if targets else None
            except UserError:
                ranks = None
            if ranks is None:
                row["ratios"][str(ratio)] = None
                continue
            saved = sum(cost.whole(by_name[name]) - cost.factored(by_name[name], rank) for name, rank in ranks.items())
            row["ratios"][str(ratio)] = original - saved
        sizes.append(row)
    return {
        "model": model.name,
        "params": int(model.count_params()),
        "layers": layers,
        "compressible": [{"name": t.name, "kind": t.kind, "shape": [t.input_dim, t.output_dim],
                          "params": t.params()} for t in targets],
        "left_alone": [{"name": s.name, "class": s.layer_class, "reason": s.reason} for s in skipped],
        "expected_bytes": sizes,
    }


def inspection_markdown(inspection: dict[str, Any]) -> str:
    """:func:`inspect_model`'s result as markdown tables."""
    lines = [f"# {inspection['model']}: {inspection['params']:,} parameters", "",
             "| layer | class | params |", "| --- | --- | ---: |"]
    lines += [f"| {layer['name']} | {layer['class']} | {layer['params']:,} |" for layer in inspection["layers"]]
    lines += ["", "## What compress would factor", "", "| matrix | kind | shape | params |", "| --- | --- | --- | ---: |"]
    lines += [f"| {t['name']} | {t['kind']} | {t['shape'][0]}x{t['shape'][1]} | {t['params']:,} |"
              for t in inspection["compressible"]] or ["| (none) | | | |"]
    if inspection["left_alone"]:
        lines += ["", "## Left as they are", "", "| layer | class | reason |", "| --- | --- | --- |"]
        lines += [f"| {s['name']} | {s['class']} | {s['reason']} |" for s in inspection["left_alone"]]
    ratios = list(inspection["expected_bytes"][0]["ratios"]) if inspection["expected_bytes"] else []
    lines += ["", "## Expected LiteRT file size (KiB, weights) at each compression ratio", "",
              "| quantization | original | " + " | ".join(f"{r}x" for r in ratios) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in ratios) + " |"]
    for row in inspection["expected_bytes"]:
        cells = ["out of reach" if row["ratios"][r] is None else f"{row['ratios'][r] / 1024:,.0f}" for r in ratios]
        lines.append(f"| {row['quantization']} | {row['original_bytes'] / 1024:,.0f} | " + " | ".join(cells) + " |")
    lines += ["", "Ranks behind these sizes come from the weights' spectra (no calibration data); AFM allocates "
              "other ranks within the same byte budget."]
    return "\n".join(lines) + "\n"
