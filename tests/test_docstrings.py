"""The examples in the public docstrings run and print what they say (doctest)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "tfafm.compression.api",
    "tfafm.compression.calibration",
    "tfafm.compression.fusion",
    "tfafm.compression.inspect",
    "tfafm.data.keyed",
    "tfafm.data.sources",
    "tfafm.export.litert_export",
    "tfafm.export.verify",
    "tfafm.layers.blockwise",
    "tfafm.layers.low_rank",
    "tfafm.linalg.int8",
    "tfafm.metrics",
    "tfafm.models",
    "tfafm.runs",
    "tfafm.training",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see the output above)"
