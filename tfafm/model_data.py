"""The user's data for the user's model: files keyed by the model's input names.

:func:`keyed_for` reads what each input of a Keras model needs off the model
itself (:func:`tfafm.compression.samples.input_domains`: dtype, shape, the
size of the table its ids index) and opens a ``parquet:`` / ``csv:`` /
``tfrecord:`` spec for it (:mod:`tfafm.data.keyed`): no vocabulary is fitted,
ids go in as they are, strings go to the model's own lookup layers.
"""

from __future__ import annotations

import keras

from tfafm.graph import output_names
from tfafm.compression.samples import input_domains
from tfafm.data.keyed import InputColumn, KeyedData, keyed_data

VALIDATION_EVERY = 10  # without separate validation data, every 10th row is held out


def input_columns(model: keras.Model) -> list[InputColumn]:
    """What each model input needs from the data."""
    return [InputColumn(d.name, "string" if d.dtype == "string" else d.dtype, d.shape, d.high)
            for d in input_domains(model).values()]


def keyed_for(model: keras.Model, spec: str, batch_size: int = 1024, labels_required: bool = False) -> KeyedData:
    """``spec`` opened for ``model`` (see :func:`tfafm.data.keyed.keyed_data`)."""
    return keyed_data(spec, input_columns(model), output_names(model), batch_size=batch_size,
                      labels_required=labels_required)
