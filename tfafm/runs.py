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
import zipfile
import zlib
from typing import Any, Callable, Optional, Sequence, TypeVar

import keras

from tfafm.config import TrainConfig
from tfafm.data import DataBundle, Preprocessor, load_data
from tfafm.errors import MissingFileError, UserError
from tfafm.io_utils import atomic_path
from tfafm.schema import Schema

T = TypeVar("T")

MODEL_FILE = "model.keras"
SCHEMA_FILE = "schema.json"
PREPROCESSOR_FILE = "preprocessor.json"
INFO_FILE = "run.json"


@dataclasses.dataclass
class Run:
    """A loaded run directory."""

    path: str
    model: keras.Model
    schema: Optional[Schema]
    preprocessor: Optional[Preprocessor]
    info: dict[str, Any]

    @property
    def config(self) -> TrainConfig:
        """The training config of a run tfafm trained (default settings for any other model)."""
        return TrainConfig.from_dict(self.info.get("config", {}), source=os.path.join(self.path, INFO_FILE))

    @property
    def reads_keyed_data(self) -> bool:
        """Whether the model takes its data as it is, keyed by input names
        (:mod:`tfafm.data.keyed`): a plain ``.keras`` file, or a run without a tfafm
        preprocessor that was not trained on synthetic data. Runs trained by tfafm on
        real data read it through their saved preprocessor instead."""
        if self.preprocessor is not None:
            return False
        return not str(self.info.get("data", "")).startswith("synthetic")

    def load_data(self, spec: str, skip_bad_lines: bool = False, evaluation_only: bool = True) -> DataBundle:
        """Loads ``spec`` encoded as this run's training data was.

        ``evaluation_only`` puts every real-data row in ``validation``; with
        False the run's train/validation split is kept (for compression and
        fine-tuning). Synthetic data always uses the run's generator settings.
        """
        if self.info.get("kind") == "imported":
            raise UserError(
                f"Run {self.path} was imported from Keras 2: its inputs are the original model's features "
                "(encoded by raw_features.json), which tfafm's data readers do not produce. Compress or "
                "evaluate it from Python with your own data (tfafm.compress(model, data, ...))."
            )
        trained_on = self.info.get("data", "")
        kind = spec.partition(":")[0]
        if (kind == "synthetic") != (trained_on.partition(":")[0] == "synthetic"):
            raise UserError(
                f"Run {self.path} was trained on {trained_on!r}; data {spec!r} is encoded differently. "
                "Use data of the same kind."
            )
        options = self.config.data_options()
        if kind == "synthetic":
            return load_data(spec, **options)
        return load_data(spec, preprocessor=self.preprocessor, evaluation_only=evaluation_only,
                         skip_bad_lines=skip_bad_lines, **options)


def save_run(path: str, model: keras.Model, schema: Optional[Schema],
             preprocessor: Optional[Preprocessor], info: dict[str, Any],
             extra_files: Optional[dict[str, str]] = None, overwrite: bool = False,
             extra_writers: Sequence[Callable[[str], None]] = ()) -> None:
    """Writes a run directory atomically (a crash leaves any previous run intact).

    ``extra_files`` maps file names to text written beside the model (reports);
    each of ``extra_writers`` is called with the folder being written (plots).
    An existing directory at ``path`` is replaced only if it is empty or a
    tfafm run, unless ``overwrite`` (see :mod:`tfafm.io_utils`).
    """
    with atomic_path(path, kind="run", overwrite=overwrite) as tmp:
        os.makedirs(tmp)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        model.save(os.path.join(tmp, MODEL_FILE))
        if schema is not None:
            schema.save(os.path.join(tmp, SCHEMA_FILE))
        if preprocessor is not None:
            preprocessor.save(os.path.join(tmp, PREPROCESSOR_FILE))
        with open(os.path.join(tmp, INFO_FILE), "w") as f:
            json.dump(info, f, indent=2)
        for write in extra_writers:
            write(tmp)


def load_json_file(path: str, load: Callable[[str], T]) -> T:
    """``load(path)`` for a JSON file; a missing file or bad JSON is a :class:`UserError` naming ``path``."""
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: no such file")
    try:
        return load(path)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start})") from None


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_model_file(path: str) -> keras.Model:
    """Loads a ``.keras`` file; a missing, truncated or corrupt file is a :class:`UserError` naming it."""
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a Keras model file (not a zip archive: truncated or corrupt?)")
    with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
            raise UserError(f"{path}: not a Keras model file (no config.json in the archive)")
    try:
        return keras.models.load_model(path)
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise UserError(f"{path}: corrupt Keras model file ({error})") from None


def load_source(path: str) -> Run:
    """A run directory (:func:`load_run`) or a plain Keras model file (``.keras``) as a :class:`Run`
    (no schema, no preprocessor; ``info["kind"] == "keras"``).

    Raises:
        MissingFileError: nothing at ``path``.
        UserError: ``path`` is neither, or is damaged (the message names the file).
    """
    if os.path.isdir(path):
        return load_run(path)
    if not os.path.exists(path):
        raise MissingFileError(f"{path}: no such file or directory (expected a run directory or a .keras file)")
    if not path.endswith(".keras"):
        raise UserError(f"{path}: expected a run directory or a Keras model file (.keras)")
    return Run(path=path, model=load_model_file(path), schema=None, preprocessor=None,
               info={"kind": "keras", "source": os.path.abspath(path)})


def load_run(path: str) -> Run:
    """Loads a run directory written by :func:`save_run` (or by hand: ``model.keras`` is the one
    file a run needs; without ``preprocessor.json`` its model reads data keyed by its input
    names, see :attr:`Run.reads_keyed_data`).

    Raises:
        MissingFileError: ``path`` is not a run directory.
        UserError: one of its files is malformed (the message names it).
    """
    model_path = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(model_path):
        raise MissingFileError(f"No tfafm run at {path!r} (expected {model_path}).")
    info_path = os.path.join(path, INFO_FILE)
    info = load_json_file(info_path, _read_json) if os.path.exists(info_path) else {}
    if not isinstance(info, dict) or not isinstance(info.get("config", {}), dict):
        raise UserError(f"{info_path}: expected an object whose \"config\" is an object (the training config).")
    preprocessor_path = os.path.join(path, PREPROCESSOR_FILE)
    preprocessor = None
    if os.path.exists(preprocessor_path):
        preprocessor = load_json_file(preprocessor_path, Preprocessor.load)
    schema_path = os.path.join(path, SCHEMA_FILE)
    run = Run(
        path=path,
        model=load_model_file(model_path),
        schema=load_json_file(schema_path, Schema.load) if os.path.exists(schema_path) else None,
        preprocessor=preprocessor,
        info=info,
    )
    if "config" in info:
        run.config  # noqa: B018  (checks the saved config now, before any work)
    return run
