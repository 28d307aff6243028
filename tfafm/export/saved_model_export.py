"""Export to a TensorFlow SavedModel with a ``serving_default`` signature."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np


def saved_model(model, directory: str, verification_data=None) -> str:
    """Writes ``model`` as a SavedModel directory (atomically) and returns ``directory``.

    The ``serving_default`` signature takes one named input per model input
    (for tfafm's zoo: int32 ids of shape ``(None, 1)`` for sparse features,
    float32 ``(None, 1)`` for dense ones) and returns the named outputs
    (``{"prediction": (None, 1)}`` for a single-output model: what the model
    gives, probabilities, or logits where it ends without a sigmoid; tfafm's
    own metrics score the sigmoid of those).
    Load it with ``tf.saved_model.load(directory).signatures["serving_default"]``
    (no tfafm or Keras needed) or :class:`SavedModelRunner`.

    The written directory is loaded back and compared with ``model`` on
    ``verification_data`` (default: rows generated inside each input's valid
    range) before it replaces anything at ``directory``
    (:func:`tfafm.export.verify.verify_export`).
    """
    import tensorflow as tf

    from tfafm.export.signature import check_input_names
    from tfafm.export.verify import verification_rows, verify_export
    from tfafm.io_utils import atomic_path

    check_input_names(model, "saved_model")
    rows = verification_rows(model, verification_data)

    module = serving_module(model)
    with atomic_path(directory, kind="saved_model") as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        verify_export(tmp, "saved_model", model, rows)
    return directory


def serving_module(model):
    """The ``tf.Module`` saved: ``model``, its TensorFlow variables and its serving function. The
    variables are tracked by the module itself: through the Keras model only, the checkpoint names
    them in a way TF Serving's loader (a TF1 session) cannot restore."""
    import tensorflow as tf

    from tfafm.export.signature import serving_function

    module = tf.Module()
    module.model = model
    module.tf_variables = [variable.value for variable in model.variables]
    module.serve = serving_function(model)
    return module


def is_saved_model(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))


class SavedModelRunner:
    """Calls a SavedModel's ``serving_default`` signature on feature-dict batches."""

    def __init__(self, directory: str):
        import tensorflow as tf

        if not is_saved_model(directory):
            raise FileNotFoundError(f"No SavedModel at {directory}.")
        self._tf = tf
        self.loaded = tf.saved_model.load(directory)
        self.signature = self.loaded.signatures["serving_default"]
        _, specs = self.signature.structured_input_signature
        self.inputs = {name: (spec.dtype.as_numpy_dtype, tuple(spec.shape[1:])) for name, spec in specs.items()}
        outputs = sorted(self.signature.structured_outputs)
        self.output = "prediction" if "prediction" in outputs else outputs[0]

    @property
    def feature_names(self) -> list[str]:
        return list(self.inputs)

    def __call__(self, features: Mapping) -> np.ndarray:
        tensors = {
            name: self._tf.constant(np.asarray(features[name]).reshape(-1, *shape).astype(dtype, copy=False))
            for name, (dtype, shape) in self.inputs.items()
        }
        return self.signature(**tensors)[self.output].numpy()

    predict = __call__
