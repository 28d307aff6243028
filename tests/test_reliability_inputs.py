"""Bad input, round two: Parquet as it comes, special files, option bounds, full disks, Python API misuse.

The command-line cases follow tests/test_bad_inputs.py: ``tfafm`` in-process on a fresh directory, exit code 2,
exactly one line on stderr naming the file, column or option, no traceback, nothing written or changed.
The accepted cases check what is read; the API cases that the error comes before any calibration.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tfafm_cli import main

from test_bad_inputs import CRITEO_ROW, assert_refused, registry, snapshot

pytestmark = pytest.mark.slow

Case = Callable[[Path], tuple[list[str], str]]  # (the case's directory) -> (argv, regex of the error line)
CASES: dict[str, Case] = {}
case = registry(CASES)


def table(path: Path, **columns) -> str:
    """Writes a Parquet file of ``columns`` (a ``click`` label column first) and returns its path."""
    rows = len(next(iter(columns.values())))
    pq.write_table(pa.table({"click": [i % 2 for i in range(rows)], **columns}), path)
    return str(path)


def prepare(data: str) -> list[str]:
    return ["prepare", "--data", data, "--out", "cache", "--quiet"]


# ----------------------------------------------------------------------------- Parquet


@case("Parquet list column")
def _(tmp):
    path = table(tmp / "t.parquet", site=["a", "b"] * 10, tags=pa.array([[1, 2]] * 20))
    return prepare(f"parquet:{path}"), r"t\.parquet: column tags holds list<\w+: int64> values; tfafm reads one"


@case("Parquet struct column")
def _(tmp):
    path = table(tmp / "t.parquet", site=["a", "b"] * 10, where=pa.array([{"x": 1, "y": "a"}] * 20))
    return prepare(f"parquet:{path}"), r"t\.parquet: column where holds struct<x: int64, y: string> values"


@case("Parquet label column of text")
def _(tmp):
    pq.write_table(pa.table({"click": ["yes", "no"] * 10, "site": ["a", "b"] * 10}), tmp / "t.parquet")
    return prepare(f"parquet:{tmp / 't.parquet'}"), r"t\.parquet: column click: values that are not numbers"


@case("Parquet label column of lists")
def _(tmp):
    pq.write_table(pa.table({"click": pa.array([[1]] * 20), "site": ["a", "b"] * 10}), tmp / "t.parquet")
    return (prepare(f"parquet:{tmp / 't.parquet'}"),
            r"t\.parquet: column click is the label but holds list<\w+: int64> values, not numbers")


@case("Parquet column name that is no feature name")
def _(tmp):
    path = table(tmp / "t.parquet", **{"cat-1": ["a", "b"] * 10})
    return prepare(f"parquet:{path}"), r"t\.parquet: column 'cat-1' cannot be a feature name"


@case("Parquet columns differing only in case, for a built-in format")
def _(tmp):
    columns = {"Label": [0, 1] * 5, "LABEL": [1, 0] * 5, **{f"I{i}": [1] * 10 for i in range(1, 14)},
               **{f"C{i}": ["a"] * 10 for i in range(1, 27)}}
    pq.write_table(pa.table(columns), tmp / "c.parquet")
    return (prepare(f"criteo:{tmp / 'c.parquet'}"),
            r"c\.parquet: column label matches Label, LABEL, which differ only in case")


@case("Parquet with two columns of the same name")
def _(tmp):
    pq.write_table(pa.Table.from_arrays([pa.array([0, 1]), pa.array(["a", "b"]), pa.array(["c", "d"])],
                                        names=["click", "site", "site"]), tmp / "t.parquet")
    return prepare(f"parquet:{tmp / 't.parquet'}"), r"t\.parquet: the file has 2 columns named site"


@case("truncated Parquet file as parquet:")
def _(tmp):
    path = table(tmp / "t.parquet", site=["a", "b"] * 10)
    Path(path).write_bytes(Path(path).read_bytes()[:-30])
    return prepare(f"parquet:{path}"), r"t\.parquet: not a readable Parquet file \("


@case("Parquet without feature columns names the file")
def _(tmp):
    pq.write_table(pa.table({"click": [0, 1]}), tmp / "t.parquet")
    return prepare(f"parquet:{tmp / 't.parquet'}"), r"t\.parquet: no feature columns"


@case("Parquet column given two roles names the file")
def _(tmp):
    path = table(tmp / "t.parquet", site=["a", "b"] * 10, price=[1.0] * 20)
    return (prepare(f"parquet:{path}?dense=price&categorical=price,site"),
            r"t\.parquet: column\(s\) \['price'\] given more than one role")


# ----------------------------------------------------------------------------- text files and special files


@case("data from a FIFO")
def _(tmp):
    os.mkfifo(tmp / "pipe")
    return prepare(f"criteo:{tmp / 'pipe'}"), r"pipe: not a regular file \(a pipe, device or socket\)"


@case("tab-only line is a line of empty fields, not a blank one")
def _(tmp):
    (tmp / "c.txt").write_text(f"{CRITEO_ROW}\n" + "\t" * 39 + "\n")
    return prepare(f"criteo:{tmp / 'c.txt'}"), r"c\.txt:2: column label: expected a 0/1 label, got ''"


# ----------------------------------------------------------------------------- options


@case("--min-count beyond any count")
def _(tmp):
    (tmp / "c.txt").write_text(f"{CRITEO_ROW}\n" * 4)
    return (["prepare", "--data", f"criteo:{tmp / 'c.txt'}", "--out", "cache", "--min-count",
             "99999999999999999999999"],
            r"argument --min-count: expected a positive integer of at most 2147483647, got '9+'")


@case("negative seed")
def _(tmp):
    return ["train", "--seed", "-1"], r"argument --seed: expected an integer >= 0, got '-1'"


@case("seed beyond 2**32")
def _(tmp):
    return ["train", "--seed", str(2**32)], r"argument --seed: expected an integer >= 0 of at most 4294967295"


@case("synthetic rows beyond the bound")
def _(tmp):
    return ["train", "--data", "synthetic:99999999999999"], r"ROWS of synthetic:ROWS must be a positive integer of at"


@case("config with a huge min_count")
def _(tmp):
    (tmp / "c.yaml").write_text("min_count: 99999999999999999999999\n")
    return ["train", "--config", "c.yaml"], r"c\.yaml: min_count must be at most 2147483647, got 9+"


@case("--out name longer than the file system allows")
def _(tmp):
    name = "r" * 300
    return ["train", "--out", name], rf"refusing to write {name}: a name in it is 300 bytes long, more than the 255"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, expected = CASES[name](tmp_path)
    assert_refused(argv, expected, capsys, tmp_path)


# ----------------------------------------------------------------------------- accepted as they come


def fitted_vocabulary(values: list) -> list:
    """The vocabulary tfafm fits on the training rows (odd rows, at validation_fraction=0.5): most
    frequent first, ties in value order."""
    training = [v for i, v in enumerate(values) if i % 2]
    return sorted(set(training), key=lambda v: (-training.count(v), v))


def test_parquet_types_are_read_as_text_and_numbers(tmp_path):
    from tfafm.data import load_data

    site = ["x", "y", "z", "y", "w"] * 4
    raw = [s.encode() for s in site[:-1]] + [b"\xffw"]
    path = table(tmp_path / "t.parquet", a=site, A=["p", "q", "p", "r"] * 5,
                 big=pa.array(site, pa.large_string()), dict=pa.array(site).dictionary_encode(),
                 raw=pa.array(raw, pa.binary()), number=[7, 8, 9, 10] * 5, flag=[True, False, False, True] * 5,
                 price=pa.array(["1.5", "2"] * 10))
    bundle = load_data(f"parquet:{path}?dense=price", validation_fraction=0.5)
    vocabulary = bundle.preprocessor.vocabularies
    assert [f.name for f in bundle.schema.sparse] == ["a", "A", "big", "dict", "raw", "number", "flag"]
    assert vocabulary["a"] == vocabulary["big"] == vocabulary["dict"] == fitted_vocabulary(site)
    assert vocabulary["A"] == fitted_vocabulary(["p", "q", "p", "r"] * 5)
    assert vocabulary["raw"] == fitted_vocabulary(site[:-1] + ["\ufffdw"])
    assert vocabulary["number"] == fitted_vocabulary(["7", "8", "9", "10"] * 5)
    assert vocabulary["flag"] == fitted_vocabulary(["true", "false", "false", "true"] * 5)
    features, _ = next(iter(load_data(f"parquet:{path}?dense=price", preprocessor=bundle.preprocessor,
                                      batch_size=20).validation))
    np.testing.assert_allclose(np.sort(features["price"].numpy()[:, 0]), np.log1p([1.5] * 10 + [2.0] * 10),
                               rtol=1e-6)  # every row, training rows first


def test_invalid_utf8_in_binary_is_replaced_like_in_text_files(tmp_path):
    from tfafm.data import load_data

    path = table(tmp_path / "t.parquet", raw=pa.array([b"a\xff", b"b"] * 10, pa.binary()))
    bundle = load_data(f"parquet:{path}", validation_fraction=0.5)
    assert bundle.preprocessor.vocabularies["raw"] == ["b"]
    train_only = load_data(f"parquet:{path}", validation_fraction=0.1)
    assert train_only.preprocessor.vocabularies["raw"] == ["b", "a\ufffd"]  # 10 b, 8 a\xff in training


def test_whitespace_only_lines_are_blank(tmp_path):
    from tfafm.data import load_data
    from tfafm.data.formats import CRITEO
    from tfafm.data.prepare import count_data_lines

    path = tmp_path / "c.txt"
    path.write_text(f"   \n{CRITEO_ROW}\n \n{CRITEO_ROW}\n\n{CRITEO_ROW}\n  \r\n{CRITEO_ROW}\n")
    bundle = load_data(f"criteo:{path}", validation_fraction=0.5)
    assert (bundle.train_rows, bundle.validation_rows) == (2, 2)
    assert count_data_lines(str(path), CRITEO) == 4


def test_config_from_a_pipe_is_read(tmp_path):
    import threading

    from tfafm.config import TrainConfig

    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("epochs: 3\nmodel: dcn\n"))
    writer.start()
    config = TrainConfig.load(str(fifo))
    writer.join()
    assert (config.epochs, config.model) == (3, "dcn")


# ----------------------------------------------------------------------------- full disks


@pytest.fixture
def criteo_file(tmp_path) -> str:
    rows = [CRITEO_ROW.replace("68fd1e64", f"{i:08x}", 1) for i in range(50)]
    (tmp_path / "c.txt").write_text("\n".join(rows) + "\n")
    return str(tmp_path / "c.txt")


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _arrow_disk_full(*args, **kwargs):  # how pyarrow reports it: errno set, no file name
    raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")


class _TensorFlowLikeError(Exception):
    """Stands for tf.errors.ResourceExhaustedError, which names the cause only in its message."""


def _tensorflow_disk_full(*args, **kwargs):
    raise _TensorFlowLikeError("/x/train-00000-of-00001.tfrecord; No space left on device")


@pytest.mark.parametrize("target, replacement", [
    ("tfafm.data.prepare._spill", _arrow_disk_full),
    ("tfafm.data.cache.ShardWriter.write", _tensorflow_disk_full),
    ("tfafm.data.manifest.write_manifest", _disk_full),
])
def test_disk_full_during_prepare_names_out_and_leaves_nothing(target, replacement, tmp_path, monkeypatch, capsys,
                                                               criteo_file):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(target, replacement)
    if target.endswith("write_manifest"):
        monkeypatch.setattr("tfafm.data.prepare.write_manifest", replacement)
    before = snapshot(tmp_path)
    code = main(["prepare", "--data", f"criteo:{criteo_file}", "--out", "out/cache", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == ["tfafm prepare: error: cannot write out/cache: No space left on device"]
    assert snapshot(tmp_path) == before


def test_disk_full_while_keras_saves_names_out_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import keras

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(keras.Model, "save", _disk_full)
    (tmp_path.parent / f"{tmp_path.name}.yaml").write_text("hyperparams: {hidden_units: [8]}\n")
    code = main(["train", "--data", "synthetic:300", "--config", f"../{tmp_path.name}.yaml", "--embedding-dim", "2",
                 "--batch-size", "128", "--out", "run", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == ["tfafm train: error: cannot write run: No space left on device"]
    assert os.listdir(tmp_path) == []


def test_a_nested_destination_names_the_outer_output(tmp_path):
    from tfafm.errors import UserError
    from tfafm.io_utils import Destination, atomic_path

    with pytest.raises(UserError, match=r"^cannot write .*/run/report\.md: No space left on device$"):
        with Destination(str(tmp_path / "run"), "run").staged() as staged:
            os.makedirs(staged)
            with atomic_path(os.path.join(staged, "report.md")):
                _disk_full()
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- Python API


@pytest.fixture(scope="module")
def small_model():
    import tfafm
    from tfafm.data import SyntheticCriteo

    generator = SyntheticCriteo(seed=0, max_vocabulary=200, num_sparse=3, num_dense=2)
    model = tfafm.models.build("deepfm", generator.schema(embedding_dim=4), hidden_units=(8,))
    features, labels = next(generator.batches(512, batch_size=512))
    return model, features, labels


@pytest.mark.parametrize("arguments, message", [
    ({"target_ratio": float("nan")}, r"target_ratio must be a finite number greater than 1, e\.g\. 4, got nan"),
    ({"target_ratio": "4"}, r"target_ratio must be a finite number greater than 1, e\.g\. 4, got '4'"),
    ({"target_ratio": float("inf")}, r"target_ratio must be a finite number"),
    ({"energy": "0.9"}, r"energy must be a number in \(0, 1\], e\.g\. 0\.95, got '0\.9'"),
    ({"energy": float("nan")}, r"energy must be a number in \(0, 1\]"),
    ({"ranks": [("C1_embedding", 2)]}, r"ranks must be a non-empty mapping of layer names to ranks"),
    ({"ranks": {"C1_embedding": 2.5}}, r"ranks: the rank of 'C1_embedding' must be a positive integer, got 2\.5"),
    ({"target_ratio": 4, "calibration_steps": 0}, r"calibration_steps must be a positive integer, got 0"),
])
def test_compress_arguments_are_checked_before_calibration(small_model, monkeypatch, arguments, message):
    import tfafm
    from tfafm.errors import UserError

    model, features, _ = small_model
    monkeypatch.setattr("tfafm.compression.api.calibrate", lambda *a, **k: pytest.fail("calibrated first"))
    with pytest.raises(UserError, match=message):
        tfafm.compress(model, features, **arguments)


def test_infinite_calibration_data_needs_steps(small_model):
    import tensorflow as tf

    import tfafm
    from tfafm.errors import UserError

    model, features, labels = small_model
    repeated = tf.data.Dataset.from_tensor_slices((features, labels)).batch(64).repeat()
    with pytest.raises(UserError, match=r"infinite dataset .*give calibration_steps= to bound it"):
        tfafm.compress(model, repeated, target_ratio=1.25, progress=False)
    small, _ = tfafm.compress(model, repeated, target_ratio=1.25, calibration_steps=4, progress=False,
                              min_calibration_rows=0)
    assert small.count_params() < model.count_params()


def test_unequal_arrays_and_string_ids_are_named(small_model):
    import tfafm
    from tfafm.errors import UserError

    model, features, _ = small_model
    short = {**features, "I1": features["I1"][:100]}
    with pytest.raises(UserError, match=r"arrays of different lengths: '\w+' has \d+ rows, '\w+' has \d+"):
        tfafm.compress(model, short, target_ratio=1.25, progress=False)
    text = {**features, "C2": features["C2"].astype(str)}
    with pytest.raises(UserError, match=r"Feature 'C2' holds strings, but model 'deepfm' takes int32 there"):
        tfafm.compress(model, text, target_ratio=1.25, progress=False)


def test_string_features_reach_the_models_own_lookup():
    import keras
    import tensorflow as tf

    import tfafm

    keras.utils.set_random_seed(0)
    site = keras.Input(shape=(1,), dtype="string", name="site")
    price = keras.Input(shape=(1,), name="price")
    ids = keras.layers.StringLookup(vocabulary=[str(i) for i in range(50)])(site)
    vectors = keras.layers.Flatten()(keras.layers.Embedding(51, 16)(ids))
    hidden = keras.layers.Dense(64, activation="relu", name="dense")(keras.layers.Concatenate()([vectors, price]))
    model = keras.Model({"site": site, "price": price}, keras.layers.Dense(1, activation="sigmoid", name="click")(hidden))
    rng = np.random.default_rng(0)
    data = {"site": np.array([str(i % 60) for i in range(2000)])[:, None], "price": rng.random((2000, 1), "float32")}
    small, report = tfafm.compress(model, data, ranks={"dense": 17}, progress=False)
    assert [row.rank for row in report.layers if row.name == "dense"] == [17]
    tensors = {"site": tf.constant(data["site"]), "price": tf.constant(data["price"])}
    np.testing.assert_allclose(small(tensors), model(tensors), atol=1e-5)  # full rank of a 17-wide input: exact


# ----------------------------------------------------------------------------- --quiet


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_silences_absl_and_tensorflow_warnings(quiet, tmp_path, monkeypatch, caplog):
    """Keras, tf_keras and the converters warn through absl's and TensorFlow's loggers; --quiet keeps errors only."""
    import logging

    from absl import logging as absl_logging

    def noisy(args, out):
        absl_logging.warning("a converter note")
        logging.getLogger("tensorflow").warning("a TensorFlow note")
        absl_logging.error("an error")
        return 0

    monkeypatch.setitem(__import__("tfafm.cli").cli.COMMANDS, "eval", noisy)
    absl_level = logging.getLogger("absl").level
    with caplog.at_level(logging.INFO):
        assert main(["eval", str(tmp_path)] + (["--quiet"] if quiet else [])) == 0
    messages = [record.getMessage() for record in caplog.records]
    assert messages == (["an error"] if quiet else ["a converter note", "a TensorFlow note", "an error"])
    assert logging.getLogger("absl").level == absl_level  # restored when the command returned
