"""Run directories: a trained (or compressed) model with everything needed to reuse it.

Layout of ``run/``::

    model.keras         the Keras model
    schema.json         its input features
    preprocessor.json   vocabularies and dense transform (real data only)
    run.json            config, data spec, metrics, compression summary
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import keras

from tfafm.config import TrainConfig
from tfafm.data import DataBundle, Preprocessor, load_data
from tfafm.io_utils import atomic_path
from tfafm.schema import Schema

MODEL_FILE = "model.keras"
SCHEMA_FILE = "schema.json"
PREPROCESSOR_FILE = "preprocessor.json"
INFO_FILE = "run.json"


@dataclasses.dataclass
class Run:
    """A loaded run directory."""

    path: str
    model: keras.Model
    schema: Schema
    preprocessor: Optional[Preprocessor]
    info: dict[str, Any]

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.info["config"], source=os.path.join(self.path, INFO_FILE))

    def load_data(self, spec: str, skip_bad_lines: bool = False, evaluation_only: bool = True) -> DataBundle:
        """Loads ``spec`` encoded as this run's training data was.

        ``evaluation_only`` puts every real-data row in ``validation``; with
        False the run's train/validation split is kept (for compression and
        fine-tuning). Synthetic data always uses the run's generator settings.
        """
        trained_on = self.info.get("data", "")
        kind = spec.partition(":")[0]
        if (kind == "synthetic") != (trained_on.partition(":")[0] == "synthetic"):
            raise ValueError(
                f"Run {self.path} was trained on {trained_on!r}; data {spec!r} is encoded differently. "
                "Use data of the same kind."
            )
        options = self.config.data_options()
        if kind == "synthetic":
            return load_data(spec, **options)
        return load_data(spec, preprocessor=self.preprocessor, evaluation_only=evaluation_only,
                         skip_bad_lines=skip_bad_lines, **options)


def save_run(path: str, model: keras.Model, schema: Schema,
             preprocessor: Optional[Preprocessor], info: dict[str, Any],
             extra_files: Optional[dict[str, str]] = None) -> None:
    """Writes a run directory atomically (a crash leaves any previous run intact).

    ``extra_files`` maps file names to text written beside the model (reports).
    """
    with atomic_path(path) as tmp:
        os.makedirs(tmp)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        model.save(os.path.join(tmp, MODEL_FILE))
        schema.save(os.path.join(tmp, SCHEMA_FILE))
        if preprocessor is not None:
            preprocessor.save(os.path.join(tmp, PREPROCESSOR_FILE))
        with open(os.path.join(tmp, INFO_FILE), "w") as f:
            json.dump(info, f, indent=2)


def load_run(path: str) -> Run:
    """Loads a run directory written by :func:`save_run`."""
    model_path = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"No tfafm run at {path!r} (expected {model_path}).")
    with open(os.path.join(path, INFO_FILE)) as f:
        info = json.load(f)
    preprocessor_path = os.path.join(path, PREPROCESSOR_FILE)
    preprocessor = Preprocessor.load(preprocessor_path) if os.path.exists(preprocessor_path) else None
    return Run(
        path=path,
        model=keras.models.load_model(model_path),
        schema=Schema.load(os.path.join(path, SCHEMA_FILE)),
        preprocessor=preprocessor,
        info=info,
    )
