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
import re
import zipfile
import zlib
from typing import Any, Callable, Optional, Sequence, TypeVar

import keras

from tfafm.config import TrainConfig
from tfafm.data import DataBundle, Preprocessor, load_data
from tfafm.errors import MissingFileError, UserError
from tfafm.io_utils import atomic_path
from tfafm.layers import LowRankEmbedding
from tfafm.schema import Schema, SparseFeature

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

    Example:

    >>> import os, tempfile, keras, tfafm
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    >>> path = os.path.join(tempfile.mkdtemp(), "run")
    >>> tfafm.save_run(path, model, schema=None, preprocessor=None, info={"note": "hand-made"})
    >>> tfafm.load_run(path).model.count_params()
    5
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
    """``load(path)`` for a JSON file; a missing file, bad JSON or content ``load`` rejects is a
    :class:`UserError` naming ``path``."""
    if not os.path.exists(path) or os.path.isdir(path):  # a pipe is read once, like a file
        raise MissingFileError(f"{path}: no such file")
    try:
        return load(path)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}:{error.colno}: not valid JSON: {error.msg}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        detail = f"no {error}" if isinstance(error, KeyError) else _first_line(error)
        raise UserError(f"{path}: malformed ({type(error).__name__}: {detail})") from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


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
    except UserError:
        raise
    except Exception as error:  # a damaged member (config, weights): whatever Keras or h5py raise for it
        unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", str(error))
        if unknown:
            raise UserError(f"{path}: the model uses {unknown.group(1)!r}, which is not registered in this process: "
                            "import the module that defines it (with @keras.saving.register_keras_serializable) "
                            "first; on the command line, --import MODULE") from None
        raise UserError(f"{path}: damaged Keras model file ({type(error).__name__}: {_keras_reason(error)})") from None


def _keras_reason(error: BaseException) -> str:
    """The first line of a Keras loading error, with the example reason Keras gives on its next line when the
    first only counts the objects that failed (cut before any variable's values)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "could not be loaded" in lines[0]:
        return f"{lines[0]} {lines[1].split(' Target variable:')[0]}"
    return _first_line(error)


def check_schema_matches_model(schema: Schema, model: keras.Model, schema_path: str, model_path: str) -> None:
    """Raises a :class:`UserError` unless ``schema`` describes ``model``'s inputs.

    Checked: the same feature names as the model's inputs, an integer input for
    every sparse feature and a float one for every dense feature, and each
    sparse feature's ``vocabulary_size`` against the tables reading it (the
    size tfafm's id guard was built with; at most an ``Embedding``'s rows).
    """
    inputs = _named_inputs(model)
    mismatch = f"{schema_path} does not match {model_path}"
    lacking = [name for name in inputs if name not in schema.names]
    extra = [name for name in schema.names if name not in inputs]
    if lacking or extra:
        parts = ([f"the model takes input(s) the schema lacks: {', '.join(lacking)}"] if lacking else []) + \
            ([f"the schema has feature(s) the model lacks: {', '.join(extra)}"] if extra else [])
        raise UserError(f"{mismatch}: {'; '.join(parts)}.")
    for feature in schema.features:
        dtype = str(inputs[feature.name].dtype)
        sparse = isinstance(feature, SparseFeature)
        if ("int" in dtype) != sparse:
            raise UserError(f"{mismatch}: feature {feature.name} is {'sparse' if sparse else 'dense'} in the schema "
                            f"but the model's input is {dtype}.")
    for name, size, layer, exact in _table_sizes(model, inputs):
        feature = schema[name]
        if not isinstance(feature, SparseFeature):
            continue
        if feature.vocabulary_size > size or (exact and feature.vocabulary_size != size):
            raise UserError(f"{mismatch}: feature {name} has vocabulary_size {feature.vocabulary_size} in the "
                            f"schema, but layer {layer!r} of the model was built for {size} ids.")


def _named_inputs(model: keras.Model) -> dict[str, Any]:
    """The model's input tensors by name (their dict keys when the model takes a dict)."""
    structure = model.input if not isinstance(model, keras.Sequential) else None
    if isinstance(structure, dict):
        return dict(structure)
    return {tensor.name: tensor for tensor in model.inputs}


def _table_sizes(model: keras.Model, inputs: dict[str, Any]):
    """``(feature, size, layer name, exact)`` for each id guard or embedding table reading a model
    input directly: tfafm's guard (its ``source_sizes``: the vocabularies before any rows of rare ids
    were pruned) must equal the feature's vocabulary, an embedding (``input_dim``) must hold at least
    that many rows."""
    by_tensor = {id(tensor): name for name, tensor in inputs.items()}
    for layer in model.layers:
        sizes = getattr(layer, "source_sizes", getattr(layer, "vocabulary_sizes", None))
        rows = layer.input_dim if isinstance(layer, (keras.layers.Embedding, LowRankEmbedding)) else None
        if sizes is None and rows is None:
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            tensors = keras.tree.flatten(node.arguments.args) if node.arguments else []
            for position, tensor in enumerate(tensors):
                name = by_tensor.get(id(tensor))
                if name is None:
                    continue
                if sizes is not None and position < len(sizes):
                    yield name, int(sizes[position]), layer.name, True
                elif sizes is None:
                    yield name, int(rows), layer.name, False


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
    check_run_files(run)
    return run


def check_run_files(run: Run) -> None:
    """Raises a :class:`UserError` naming the files when a run's files disagree: ``schema.json`` with
    ``model.keras``'s inputs (:func:`check_schema_matches_model`), ``preprocessor.json`` with
    ``schema.json`` (the same features and vocabulary sizes). A run without a schema has nothing to check."""
    if run.schema is None:
        return
    schema_path, model_path = os.path.join(run.path, SCHEMA_FILE), os.path.join(run.path, MODEL_FILE)
    check_schema_matches_model(run.schema, run.model, schema_path, model_path)
    if run.preprocessor is None:
        return

    def described(features) -> set:
        return {(f.name, getattr(f, "vocabulary_size", None)) for f in features}

    if described(run.preprocessor.schema().features) != described(run.schema.features):
        raise UserError(f"{os.path.join(run.path, PREPROCESSOR_FILE)} does not match {schema_path}: the "
                        "preprocessor encodes other features or vocabulary sizes than the schema lists.")
