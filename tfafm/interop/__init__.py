"""Models from TensorFlow Recommenders (TFRS) and Keras 2 (``tf_keras``), converted to Keras 3.

``import tfafm`` never imports this package, and this package imports
``tf_keras`` / ``tensorflow_recommenders`` only when a conversion runs (install
them with ``pip install 'tfafm[interop]'``). TFRS needs Keras 2: set
``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported; ``import keras`` then
still gives Keras 3, so one process holds both.

* :func:`from_keras2` -- a Keras 2 Sequential / functional model (in memory,
  ``.h5``, ``.keras`` or SavedModel) -> a Keras 3 functional model.
* :func:`from_tfrs_ranking` -- ``tfrs.experimental.models.Ranking`` or a
  ``tfrs.Model`` with a Sequential / functional ranking network.
* :class:`RawFeatureEncoder` -- the preprocessing sidecar (``model.raw_feature_encoder``)
  holding the lookups lifted out of the graph; :func:`schema_of` its schema.
* :func:`import_keras2_run` -- writes a tfafm run directory (``tfafm import keras2``).
"""

import importlib as _importlib

_EXPORTS = {
    "from_keras2": "tfafm.interop.keras2",
    "load_keras2": "tfafm.interop.keras2",
    "from_tfrs_ranking": "tfafm.interop.tfrs",
    "FeatureEncoding": "tfafm.interop.sidecar",
    "RawFeatureEncoder": "tfafm.interop.sidecar",
    "schema_of": "tfafm.interop.graph",
    "SUPPORTED_LAYERS": "tfafm.interop.layers",
    "import_keras2_run": "tfafm.interop.command",
    "save_imported_run": "tfafm.interop.command",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tfafm.interop' has no attribute {name!r}")


def __dir__():
    return __all__
