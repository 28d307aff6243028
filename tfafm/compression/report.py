"""What compression did, per layer and in total, and what it cost in accuracy, as Markdown or JSON."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

# LiteRT's dynamic-range quantizer leaves constants under this many elements in float32.
DYNAMIC_MIN_ELEMENTS = 1024
# An int8 matrix stores a float32 scale and an int64 zero point per output channel.
SCALE_BYTES = 12
# What a layer holding weights adds to a LiteRT file besides its weights: the flatbuffer
# records of its tensors (names, shapes), of its ops and of their outputs. Measured on
# DeepFM and DCN-V2 files: 715 to 905 bytes a layer.
LAYER_BYTES = 800


def weight_bytes(shape: tuple[int, ...], quantization: str | None = None) -> int:
    """The bytes one weight of ``shape`` takes in a LiteRT file under ``quantization``
    (``None``, ``"float16"``, ``"dynamic"``, ``"int8"``): float32 is 4 bytes a value,
    float16 2; dynamic int8 stores matrices of at least :data:`DYNAMIC_MIN_ELEMENTS`
    values in 1 byte and the rest in float32; full int8 stores every matrix in 1 byte
    and vectors (biases) in 4. An int8 matrix adds :data:`SCALE_BYTES` per output
    channel (its last axis; an embedding table has one scale, so this over-counts a
    table by a few hundred bytes)."""
    elements = int(np.prod(shape))
    matrix = len(shape) >= 2
    if quantization == "float16":
        return 2 * elements
    if matrix and (quantization == "int8" or quantization == "dynamic" and elements >= DYNAMIC_MIN_ELEMENTS):
        return elements + SCALE_BYTES * int(shape[-1])
    return 4 * elements


def estimated_file_bytes(model, quantization: str | None = None) -> int:
    """The bytes of ``model``'s LiteRT file under ``quantization``: its weights
    (:func:`weight_bytes`) and :data:`LAYER_BYTES` per layer holding weights. An
    estimate (within a few percent on the zoo's models), which the rank allocator
    shares: ``compress(target_ratio=r)`` aims at ``1/r`` of it."""
    layers = {weight.path.rsplit("/", 1)[0] for weight in model.weights}
    return sum(weight_bytes(tuple(weight.shape), quantization) for weight in model.weights) + LAYER_BYTES * len(layers)


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """One layer: its kind, the matrix it replaced, the rank chosen and what it saved."""

    name: str
    kind: str
    input_dim: int
    output_dim: int
    rank: int | None
    params_before: int
    params_after: int
    variance_kept: float | None

    @property
    def ratio(self) -> float:
        return self.params_before / max(self.params_after, 1)


@dataclasses.dataclass(frozen=True)
class SkippedLayer:
    """A layer (or one matrix of it) compression left as it is, and why."""

    name: str
    layer_class: str
    reason: str


@dataclasses.dataclass(frozen=True)
class CompressionReport:
    """Per-matrix rows, the layers left alone with the reason, and whole-model totals
    (``params_*`` equal ``model.count_params()``)."""

    method: str
    layers: tuple[LayerReport, ...]
    params_before: int
    params_after: int
    skipped: tuple[SkippedLayer, ...] = ()
    notes: tuple[str, ...] = ()
    bytes_per_param: int = 4
    accuracy: dict[str, Any] | None = None
    quantization: str | None = None
    criterion: str = "variance"

    @property
    def compressible_before(self) -> int:
        return sum(layer.params_before for layer in self.layers)

    @property
    def compressible_after(self) -> int:
        return sum(layer.params_after for layer in self.layers)

    @property
    def ratio(self) -> float:
        """Whole-model parameter ratio, before / after."""
        return self.params_before / max(self.params_after, 1)

    @property
    def compressible_ratio(self) -> float:
        """Parameter ratio over the layers compression could target."""
        return self.compressible_before / max(self.compressible_after, 1)

    @property
    def bytes_before(self) -> int:
        return self.params_before * self.bytes_per_param

    @property
    def bytes_after(self) -> int:
        return self.params_after * self.bytes_per_param

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "skipped": [dataclasses.asdict(layer) for layer in self.skipped],
            "notes": list(self.notes),
            "accuracy": self.accuracy,
            "quantization": self.quantization or "float32",
            "criterion": self.criterion,
            "totals": {
                "params_before": self.params_before,
                "params_after": self.params_after,
                "float32_bytes_before": self.bytes_before,  # params x 4, whatever the quantization
                "float32_bytes_after": self.bytes_after,
                "ratio": self.ratio,
                "compressible_params_before": self.compressible_before,
                "compressible_params_after": self.compressible_after,
                "compressible_ratio": self.compressible_ratio,
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [
            f"# Compression report ({self.method}, {self.criterion} criterion)",
            "",
            "| matrix | kind | shape | rank | params before | params after | ratio | variance kept |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for layer in self.layers:
            kept = "-" if layer.variance_kept is None else f"{layer.variance_kept:.3f}"
            rank = "-" if layer.rank is None else str(layer.rank)
            lines.append(
                f"| {layer.name} | {layer.kind} | {layer.input_dim}x{layer.output_dim} | {rank} | "
                f"{layer.params_before:,} | {layer.params_after:,} | {layer.ratio:.2f}x | {kept} |"
            )
        if self.skipped:
            lines += ["", "Left as they are:", "", "| layer | class | reason |", "| --- | --- | --- |"]
            lines += [f"| {s.name} | {s.layer_class} | {s.reason} |" for s in self.skipped]
        lines += [""] + [f"- note: {note}" for note in self.notes]
        lines += [
            f"- compressible layers: {self.compressible_before:,} -> {self.compressible_after:,} "
            f"params ({self.compressible_ratio:.2f}x)",
            f"- whole model: {self.params_before:,} -> {self.params_after:,} params "
            f"({self.ratio:.2f}x), {self.bytes_before / 2**20:.2f} MiB -> "
            f"{self.bytes_after / 2**20:.2f} MiB as float32",
        ]
        lines += _accuracy_markdown(self.accuracy or {})
        return "\n".join(lines) + "\n"


def _number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _accuracy_markdown(accuracy: dict[str, Any]) -> list[str]:
    """The accuracy sections of the report: validation metrics, the budget search, the check."""
    lines: list[str] = []
    validation = accuracy.get("validation")
    if validation:
        lines += ["", f"## Accuracy on {validation['rows']:,} validation rows", "",
                  "| output | AUC original | AUC compressed | AUC drop | LogLoss original | LogLoss compressed | "
                  "mean abs diff | max abs diff | rank correlation |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, row in validation["outputs"].items():
            before, after, agree = row["original"] or {}, row["compressed"] or {}, row["agreement"]
            lines.append(f"| {name} | {_number(before.get('auc'))} | {_number(after.get('auc'))} | "
                         f"{_number(row['auc_drop'])} | {_number(before.get('logloss'))} | "
                         f"{_number(after.get('logloss'))} | {agree['mean_abs_diff']:.2e} | "
                         f"{agree['max_abs_diff']:.2e} | {agree['rank_correlation']:.4f} |")
        unscored = [f"No AUC or LogLoss for output {name!r}: {row['unscored']}." for name, row in
                    validation["outputs"].items() if row.get("unscored")]
        lines += [""] + unscored if unscored else []
    budget = accuracy.get("budget")
    if budget:
        lines += ["", f"## Smallest model within max_auc_drop={budget['max_auc_drop']:g} "
                  f"({budget['quantization']} bytes)", "",
                  f"{budget['evaluations']} evaluations from one calibration; chosen: "
                  f"{budget['chosen_ratio']:.3g}x (estimated file {budget['original_file_bytes']:,} bytes "
                  "before).", "",
                  "AUC and LogLoss are those of the output with the largest AUC drop, which decides.", "",
                  "| ratio asked | params | estimated file bytes | output | AUC | LogLoss | AUC drop | within budget |",
                  "| ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
        for row in budget["frontier"]:
            if not row["reachable"]:
                lines.append(f"| {row['ratio']:.3g} | - | - | - | - | - | - | out of reach |")
                continue
            lines.append(f"| {row['ratio']:.3g} | {row['params']:,} | {row['file_bytes']:,} | {row['output']} | "
                         f"{_number(row['auc'])} | {_number(row['logloss'])} | {_number(row['auc_drop'])} | "
                         f"{'yes' if row['within_budget'] else 'no'} |")
    check = accuracy.get("check")
    if check:
        worst = min(check["outputs"].values(), key=lambda a: a["rank_correlation"])
        lines += ["", f"Checked on {check['rows']} rows of {check['source']}: the compressed model runs; its "
                  f"predictions follow the original's with mean abs diff {worst['mean_abs_diff']:.2e}, rank "
                  f"correlation {worst['rank_correlation']:.4f} (worst output)."]
    return lines


def plot_budget(budget: dict[str, Any], path: str) -> bool:
    """Draws the budget search (AUC against estimated file bytes, the chosen point marked) to
    a PNG at ``path``; False when matplotlib is not installed. Changes no global state of
    matplotlib (no pyplot)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    rows = sorted((r for r in budget["frontier"] if r["reachable"] and r["auc_drop"] is not None),
                  key=lambda r: r["file_bytes"])
    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    # The AUC change of the output that decides each row (outputs may differ from row to row).
    axes.plot([r["file_bytes"] / 2**20 for r in rows], [-r["auc_drop"] for r in rows], "o-", label="compressed")
    axes.plot([budget["original_file_bytes"] / 2**20], [0.0], "ks", label="original")
    axes.axhline(-budget["max_auc_drop"], color="grey", linestyle="--", label="AUC budget")
    chosen = next(r for r in rows if r["ratio"] == budget["chosen_ratio"])
    axes.plot([chosen["file_bytes"] / 2**20], [-chosen["auc_drop"]], "r*", markersize=14,
              label=f"chosen ({chosen['ratio']:.3g}x)")
    axes.set_xscale("log")
    axes.set_xlabel(f"estimated file MiB ({budget['quantization']})")
    axes.set_ylabel("validation AUC change (worst output)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True
