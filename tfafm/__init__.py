"""tfafm: make Keras click-through-rate models small and fast with low-rank compression.

Main entry points: :func:`calibrate`, :func:`compress`, :func:`fuse`, the
layers :class:`LowRankDense` / :class:`LowRankEmbedding`, the model zoo
(:mod:`tfafm.models`), data (:mod:`tfafm.data`) and exports (:mod:`tfafm.export`).

Importing tfafm registers its Keras layers (so ``.keras`` files that use
them load with plain ``keras.models.load_model``); the rest of the API is
imported on first use. Importing it changes nothing else in the process (no
environment variables, streams or logging); the ``tfafm`` command line, not
the library, quiets TensorFlow's start-up notes.
"""

import importlib as _importlib

from tfafm import layers, models  # noqa: F401  (registers every tfafm layer and keras_rs)

__version__ = "0.2.0"

_EXPORTS = {
    "calibrate": "tfafm.compression.calibration",
    "compress": "tfafm.compression.api",
    "fuse": "tfafm.compression.fusion",
    "CompressionReport": "tfafm.compression.report",
    "LayerReport": "tfafm.compression.report",
    "LayerStatistics": "tfafm.linalg.statistics",
    "Statistics": "tfafm.linalg.statistics",
    "LowRankDense": "tfafm.layers.low_rank",
    "LowRankEinsumDense": "tfafm.layers.low_rank",
    "LowRankEmbedding": "tfafm.layers.low_rank",
    "LowRankMultiHeadAttention": "tfafm.layers.attention",
    "CompressibleLayer": "tfafm.layers.protocol",
    "Matrix": "tfafm.layers.protocol",
    "Factors": "tfafm.linalg.factorize",
    "FusionReport": "tfafm.compression.fusion",
    "UserError": "tfafm.errors",
    "DenseFeature": "tfafm.schema",
    "Schema": "tfafm.schema",
    "SparseFeature": "tfafm.schema",
    "evaluate": "tfafm.metrics",
    "load_data": "tfafm.data",
    "load_run": "tfafm.runs",
    "save_run": "tfafm.runs",
    "train": "tfafm.training",
    "fine_tune": "tfafm.training",
    "TrainConfig": "tfafm.config",
}
_SUBMODULES = ("data", "export", "layers", "metrics", "models")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return _importlib.import_module(f"tfafm.{name}")
    raise AttributeError(f"module 'tfafm' has no attribute {name!r}")


def __dir__():
    return __all__
