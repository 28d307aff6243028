"""What compression did, per layer and in total, as Markdown or JSON."""

from __future__ import annotations

import dataclasses
import json


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
            "totals": {
                "params_before": self.params_before,
                "params_after": self.params_after,
                "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after,
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
            f"# Compression report ({self.method})",
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
        return "\n".join(lines) + "\n"
