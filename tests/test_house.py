"""The package's shape: imports flow one way, the public names resolve, submodules are not shadowed."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower floors never import higher ones (imports inside one floor are fine, as long as they form no circle).
FLOORS = {
    "tfafm.errors": 0, "tfafm.io_utils": 0, "tfafm.jsonfile": 0, "tfafm.progress": 0, "tfafm.logs": 0,
    "tfafm.graph": 0, "tfafm.linalg": 0, "tfafm.schema": 0, "tfafm.config": 0, "tfafm.distribute": 0,
    "tfafm.metrics": 0, "tfafm_choices": 0,
    "tfafm.data": 1, "tfafm.layers": 1,
    "tfafm.models": 2, "tfafm.runs": 2,
    "tfafm.compression": 3, "tfafm.training": 3,
    "tfafm.export": 4, "tfafm.model_data": 4, "tfafm.interop": 4,
    "tfafm.pipeline": 5, "tfafm.demo": 5,
    "tfafm.cli": 6, "tfafm_cli": 6,
}


def _unit(module: str) -> str:
    """The floor-holding unit of a module: tfafm.<package or module>, or a top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "tfafm" and len(parts) > 1 else parts[0]


def _imports() -> dict[str, set[str]]:
    """{unit: units it imports}, from the source (imports inside functions included)."""
    files = [p for p in (ROOT / "tfafm").rglob("*.py")] + [ROOT / "tfafm_cli.py", ROOT / "tfafm_choices.py"]
    edges: dict[str, set[str]] = {}
    for path in files:
        relative = path.relative_to(ROOT).with_suffix("")
        module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        if module == "tfafm":
            continue  # the package front registers layers and resolves names lazily
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "tfafm" else [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] in ("tfafm", "tfafm_cli", "tfafm_choices") and _unit(name) != _unit(module):
                    edges.setdefault(_unit(module), set()).add(_unit(name))
    return edges


def test_every_unit_has_a_floor_and_no_import_goes_up():
    edges = _imports()
    units = set(edges) | {target for targets in edges.values() for target in targets}
    assert units <= set(FLOORS), f"units without a floor: {sorted(units - set(FLOORS))}"
    upward = sorted((source, target) for source, targets in edges.items() for target in targets
                    if FLOORS[target] > FLOORS[source])
    assert upward == []


def test_no_import_circle():
    edges = _imports()
    state: dict[str, str] = {}

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = "open"
        for target in sorted(edges.get(unit, ())):
            assert state.get(target) != "open", f"import circle: {' -> '.join(path + [target])}"
            if target not in state:
                visit(target, path + [target])
        state[unit] = "done"

    for unit in sorted(edges):
        if unit not in state:
            visit(unit, [unit])


@pytest.mark.parametrize("name", ["litert", "onnx", "saved_model"])
def test_export_functions_do_not_shadow_their_modules(name):
    import tfafm.export

    module = importlib.import_module(f"tfafm.export.{name}_export")
    function = getattr(tfafm.export, name)
    assert callable(function) and function.__module__ == module.__name__


def test_public_names_resolve_and_layers_holds_the_low_rank_layers():
    import tfafm

    for name in tfafm.__all__:
        assert getattr(tfafm, name) is not None, name
    assert sorted(tfafm.layers.__all__) == ["BlockwiseDense", "BlockwiseLowRankDense", "CompressibleLayer",
                                            "DotProductDense", "LowRankDense", "LowRankEinsumDense", "LowRankEmbedding",
                                            "LowRankMultiHeadAttention", "Matrix"]
    assert tfafm.models.layers.FactorizationMachine.__module__ == "tfafm.models.layers"
    assert {"compress", "calibrate", "fuse", "train", "save_run", "load_run"} <= set(tfafm.__all__)
