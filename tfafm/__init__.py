"""tfafm: make Keras click-through-rate models small and fast with low-rank compression."""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfafm import layers, models  # noqa: E402
from tfafm.schema import DenseFeature, Schema, SparseFeature  # noqa: E402

__version__ = "0.1.0"

__all__ = ["DenseFeature", "Schema", "SparseFeature", "layers", "models"]
