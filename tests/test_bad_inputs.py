"""Bad input never gives a traceback: one line naming the culprit on stderr, exit code 2, nothing written.

Every case runs ``tfafm`` in-process on a fresh directory and asserts: exit code
2; exactly one line on stderr (cases that fail only once the work has begun pass
``--quiet``, which drops the progress notes printed before) that names the file (with line and column where
there are some) or the option; no traceback; every file that existed before
(the case's own and a shared run) unchanged; nothing new left behind, temporary
folders included.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import keras
import numpy as np
import pytest

from tfafm_cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CRITEO_ROW = "\t".join(["1"] + ["3"] * 13 + ["68fd1e64"] * 26)
AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
                "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")
AVAZU_ROW = ("{i},{label},14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,"
             "ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79")


class Context(NamedTuple):
    tmp: Path  # the case's own directory (also the current directory)
    shared: Path  # a run, its LiteRT export and a criteo file, shared by all cases

    @property
    def run(self) -> str:
        return str(self.shared / "run")

    def copy_run(self) -> Path:
        return Path(shutil.copytree(self.run, self.tmp / "run"))

    def write(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)


Case = Callable[[Context], tuple[list[str], str]]
CASES: dict[str, Case] = {}


def registry(cases: dict) -> Callable[[str], Callable[[Callable], Callable]]:
    """``@case(name)``: a decorator that files the function it decorates in ``cases`` under ``name``."""
    def case(name: str) -> Callable[[Callable], Callable]:
        def register(build: Callable) -> Callable:
            cases[name] = build
            return build
        return register
    return case


def case(name: str) -> Callable[[Case], Case]:
    """Registers a case: a function of the context returning ``(argv, regex the error line must match)``."""
    def register(build: Case) -> Case:
        CASES[name] = build
        return build
    return register


def assert_refused(argv: list[str], expected: str, capsys, *roots: Path) -> str:
    """Runs ``tfafm argv`` in-process and asserts the user-error promise: exit code 2, exactly one line on
    stderr, matching ``expected``, no traceback, and nothing under ``roots`` changed. Returns the line."""
    before = [snapshot(root) for root in roots]
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert re.search(expected, lines[0]), lines[0]
    assert [snapshot(root) for root in roots] == before
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash (``"dir"`` for directories, ``"special"`` for pipes and the like,
    which reading would block on) of everything under ``root``."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else "special" if not p.is_file()
            else hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))}


# ----------------------------------------------------------------------------- options (no TensorFlow needed)

case("ratio below 1")(lambda c: (["compress", c.run, "--ratio", "0.5"],
                                 r"^tfafm compress: error: argument --ratio: expected a compression ratio greater "
                                 r"than 1, e\.g\. 4, got '0\.5'"))
case("ratio not a number")(lambda c: (["compress", c.run, "--ratio", "four"], r"argument --ratio: .* got 'four'"))
case("ratio and energy together")(lambda c: (["compress", c.run, "--ratio", "2", "--energy", "0.9"],
                                             r"argument --energy: not allowed with argument --ratio"))
case("objective with energy")(lambda c: (["compress", c.run, "--energy", "0.9", "--objective", "latency"],
                                         r"--objective and --quantization apply to --ratio and --max-auc-drop, "
                                         r"not --energy"))
case("energy above 1")(lambda c: (["compress", c.run, "--energy", "1.5"], r"argument --energy: expected a fraction"))
case("negative calibration steps")(lambda c: (["compress", c.run, "--calibration-steps", "-5"],
                                              r"argument --calibration-steps: expected a positive integer, got '-5'"))
case("negative finetune epochs")(lambda c: (["compress", c.run, "--finetune-epochs", "-1"],
                                            r"argument --finetune-epochs: expected an integer >= 0"))
case("zero epochs")(lambda c: (["train", "--epochs", "0"], r"^tfafm train: error: argument --epochs"))
case("learning rate nan")(lambda c: (["train", "--learning-rate", "nan"], r"argument --learning-rate: .*'nan'"))
case("fractional seed")(lambda c: (["train", "--seed", "1.5"], r"argument --seed: expected an integer"))
case("unknown data source")(lambda c: (["train", "--data", "foo:bar"], r"--data: unknown data source 'foo'"))
case("synthetic rows not a number")(lambda c: (["train", "--data", "synthetic:many"],
                                               r"--data: ROWS of synthetic:ROWS must be a positive integer"))
case("criteo without a path")(lambda c: (["train", "--data", "criteo:"], r"--data: criteo data needs a path"))
case("missing data file")(lambda c: (["train", "--data", "criteo:/does/not/exist.txt"],
                                     r"--data: /does/not/exist\.txt: no such file or directory"))
case("quantization with onnx")(lambda c: (["export", c.run, "--format", "onnx", "--quantization", "int8"],
                                      r"--quantization applies to --format litert only, not onnx"))
case("opset with litert")(lambda c: (["export", c.run, "--opset", "13"], r"--opset applies to --format onnx only"))
# It wrote a LiteRT file named model.onnx (exit 0), which `tfafm bench` then could not load as ONNX.
case("out of another format")(lambda c: (["export", c.run, "--format", "litert", "--out", "m.onnx"],
                                         r"--out m\.onnx names a onnx file \(\.onnx\), but --format is litert"))
case("ratio with max auc drop")(lambda c: (["compress", c.run, "--ratio", "4", "--max-auc-drop", "0.001"],
                                           r"argument --max-auc-drop: not allowed with argument --ratio"))
case("negative max auc drop")(lambda c: (["compress", c.run, "--max-auc-drop", "-0.1"],
                                         r"argument --max-auc-drop: expected an AUC drop in \[0, 1\)"))
case("zero iterations")(lambda c: (["bench", "m.tflite", "--iterations", "0"], r"argument --iterations"))
case("zero batch size")(lambda c: (["bench", "m.tflite", "--batch-sizes", "1", "0"], r"argument --batch-sizes"))
case("zero threads")(lambda c: (["bench", "m.tflite", "--threads", "0"], r"argument --threads"))
case("zero max seconds")(lambda c: (["bench", "m.tflite", "--max-seconds", "0"], r"argument --max-seconds"))
case("zero demo rows")(lambda c: (["demo", "--rows", "0"], r"^tfafm demo: error: argument --rows"))
case("unknown report format")(lambda c: (["eval", c.run, "--format", "xml"], r"argument --format: invalid choice"))
case("unknown command")(lambda c: (["compres", c.run], r"^tfafm: error: argument COMMAND: invalid choice: 'compres'"))


# ----------------------------------------------------------------------------- configs


@case("missing config file")
def _(c):
    return ["train", "--config", "nope.yaml"], r"Config file not found: nope\.yaml"


def _config_case(yaml_text: str, expected: str) -> Case:
    def build(c: Context) -> tuple[list[str], str]:
        c.write("bad.yaml", yaml_text)
        return ["train", "--config", "bad.yaml"], expected
    return build


for _name, _text, _expected in [
    ("config YAML syntax", "model: deepfm\nepochs: [1, 2\n", r"bad\.yaml:3:1: not valid YAML"),
    ("config unknown option", "model: deepfm\nepochz: 3\n", r"bad\.yaml: unknown option\(s\) \['epochz'\]"),
    ("config learning rate as text", "learning_rate: fast\n",
     r"bad\.yaml: learning_rate must be a positive number, got 'fast'"),
    ("config boolean epochs", "epochs: true\n", r"bad\.yaml: epochs must be a positive integer, got True"),
    ("config not a mapping", "- deepfm\n- dcn\n", r"bad\.yaml: expected a mapping of options"),
]:
    case(_name)(_config_case(_text, _expected))


@case("unknown model")
def _(c):
    return ["train", "--model", "nope"], r"Unknown model 'nope'; available: .*deepfm"


# ----------------------------------------------------------------------------- run directories


@case("missing run")
def _(c):
    return ["eval", "no/such/run"], r"no/such/run: no such file or directory \(expected a run directory or a \.keras"


@case("truncated model.keras")
def _(c):
    model = c.copy_run() / "model.keras"
    model.write_bytes(model.read_bytes()[:5000])
    return ["eval", "run"], r"run/model\.keras: not a Keras model file \(not a zip archive: truncated or corrupt\?\)"


@case("model.keras whose weights do not fit its config")
def _(c):
    """The reason Keras gives came on its second line and was cut: "A total of 2 objects could not be loaded.
    Example error message for object <Embedding ...>:" and nothing more."""
    import json
    import zipfile

    model = c.copy_run() / "model.keras"
    with zipfile.ZipFile(model) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = members["config.json"].decode()
    table = next(layer for layer in json.loads(config)["config"]["layers"] if "input_dim" in layer["config"])
    rows = table["config"]["input_dim"]
    members["config.json"] = config.replace(f'"input_dim": {rows},', f'"input_dim": {rows + 7},', 1).encode()
    with zipfile.ZipFile(model, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return ["eval", "run"], (r"run/model\.keras: damaged Keras model file \(ValueError: .*could not be loaded\. "
                             rf".*variable\.shape=\({rows + 7}, \d+\), Received: value\.shape=\({rows}, \d+\)\.\)$")


@case("model.keras with a bad CRC")
def _(c):
    import zipfile

    model = c.copy_run() / "model.keras"
    with zipfile.ZipFile(model) as archive:
        info = archive.getinfo("model.weights.h5")
    data = bytearray(model.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 200] ^= 0xFF
    model.write_bytes(bytes(data))
    return ["eval", "run"], r"run/model\.keras: corrupt Keras model file \(Bad CRC-32 for file 'model\.weights\.h5'\)"


@case("run.json not JSON")
def _(c):
    info = c.copy_run() / "run.json"
    info.write_text(info.read_text().replace('"data"', "'data'", 1))
    return ["eval", "run"], r"run/run\.json:\d+:\d+: not valid JSON: Expecting property name"


@case("run.json with a config that is not an object")
def _(c):
    info = c.copy_run() / "run.json"
    values = json.loads(info.read_text())
    values["config"] = 5
    info.write_text(json.dumps(values))
    return ["eval", "run"], r"run/run\.json: expected an object whose \"config\" is an object"


@case("run.json with a bad config value")
def _(c):
    info = c.copy_run() / "run.json"
    values = json.loads(info.read_text())
    values["config"]["batch_size"] = 0
    info.write_text(json.dumps(values))
    return ["eval", "run"], r"run/run\.json: batch_size must be a positive integer, got 0"


@case("preprocessor.json not JSON")
def _(c):
    (c.copy_run() / "preprocessor.json").write_text('{"version": 1,')
    return ["eval", "run"], r"run/preprocessor\.json:1:\d+: not valid JSON"


@case("schema.json not JSON")
def _(c):
    (c.copy_run() / "schema.json").write_text("")
    return ["eval", "run"], r"run/schema\.json:1:1: not valid JSON: Expecting value"


@case("eval on data of another kind")
def _(c):
    return (["eval", c.run, "--data", f"criteo:{c.shared / 'train.txt'}"],
            r"was trained on 'synthetic'.*encoded differently")


@case("unknown inner activation")
def _(c):
    return ["compress", c.run, "--inner-activation", "foo"], r"--inner-activation: 'foo' is not a Keras activation"


# ----------------------------------------------------------------------------- outputs


@case("compress onto its own run")
def _(c):
    run = c.copy_run()
    return ["compress", str(run), "--out", str(run), "--overwrite"], r"refusing to write .*run: .*lies inside the input"


@case("compress into its own run")
def _(c):
    c.copy_run()
    return ["compress", "run", "--out", "run/small"], r"refusing to write run/small: .*lies inside the input run"


def _export_over_user_file(existing: str, out: str, expected: str) -> Case:
    def build(c: Context) -> tuple[list[str], str]:
        c.write(existing, "user data")
        return ["export", c.run, "--out", out], expected
    return build


for _name, _existing, _out, _expected in [
    ("export over a foreign directory", "d/f", "d", r"refusing to write d: it is a directory that tfafm did not write"),
    ("export over an existing file", "m.tflite", "m.tflite",
     r"refusing to write m\.tflite: a file exists there \(--overwrite"),
    ("export below a regular file", "notes.txt", "notes.txt/m.tflite", r"notes\.txt/m\.tflite: .*notes\.txt is a file"),
]:
    case(_name)(_export_over_user_file(_existing, _out, _expected))


@case("saved_model over a tfafm run")
def _(c):
    c.copy_run()
    return (["export", c.run, "--format", "saved_model", "--out", "run"],
            r"refusing to write run: it is a tfafm run, not a saved_model")


@case("train into the current directory")
def _(c):
    return ["train", "--out", ".", "--overwrite"], r"refusing to write \.: it is or contains the current directory"


@case("train into a parent of the current directory")
def _(c):
    return ["train", "--out", "..", "--overwrite"], r"refusing to write \.\.: it is or contains the current directory"


@case("train over a foreign directory")
def _(c):
    c.write("out/keep.txt", "user data")
    return ["train", "--out", "out"], r"refusing to write out: it is a directory that tfafm did not write"


@case("train over a symbolic link")
def _(c):
    (c.tmp / "target").mkdir()
    (c.tmp / "link").symlink_to(c.tmp / "target")
    return ["train", "--out", "link"], r"refusing to write link: it is a symbolic link"


@case("train over the folder of its data")
def _(c):
    data = c.write("data/train.txt", CRITEO_ROW + "\n")
    return (["train", "--data", f"criteo:{data}", "--out", "data", "--overwrite"],
            r"refusing to write data: .*lies inside the input .*data/train\.txt")


@case("demo over a foreign directory")
def _(c):
    c.write("tfafm-demo/mine.md", "user data")
    return ["demo"], r"refusing to write tfafm-demo: it is a directory that tfafm did not write"


# ----------------------------------------------------------------------------- bench


@case("bench a missing file")
def _(c):
    return ["bench", "missing.tflite"], r"Cannot benchmark missing\.tflite: no such file or directory"


@case("bench a text file")
def _(c):
    c.write("notes.txt", "hello")
    return ["bench", "notes.txt"], r"Cannot benchmark 'notes\.txt': expected a \.tflite"


@case("bench without a schema")
def _(c):
    c.write("m.tflite", "garbage")
    return ["bench", "m.tflite"], r"m\.tflite: not a valid LiteRT file"


@case("bench an ONNX file without a schema")
def _(c):
    c.write("m.onnx", "garbage")
    return ["bench", "m.onnx"], r"No schema\.json next to m\.onnx; pass --schema"


@case("bench a schema that is not JSON")
def _(c):
    c.write("schema.json", "{")
    return ["bench", str(c.shared / "m.tflite"), "--schema", "schema.json"], r"schema\.json:1:2: not valid JSON"


@case("bench a garbage .tflite")
def _(c):
    c.write("m.tflite", "garbage " * 100)
    return (["bench", "m.tflite", "--schema", f"{c.run}/schema.json", "--threads", "1", "--batch-sizes", "1",
             "--quiet"],
            r"Cannot benchmark m\.tflite: cannot load it as a LiteRT model \(ValueError: ")


@case("bench with the wrong schema")
def _(c):
    schema = json.loads((c.shared / "run" / "schema.json").read_text())
    for feature in schema["features"]:
        feature["name"] = "other_" + feature["name"]
    c.write("schema.json", json.dumps(schema))
    return (["bench", str(c.shared / "m.tflite"), "--schema", "schema.json", "--threads", "1", "--batch-sizes", "1",
             "--quiet"],
            r"Cannot benchmark .*m\.tflite: it takes inputs the schema lacks: C1, ")


# ----------------------------------------------------------------------------- data files


@case("malformed criteo line")
def _(c):
    data = c.write("bad.txt", f"{CRITEO_ROW}\n{CRITEO_ROW}\nx\t1\t2\n")
    return ["train", "--data", f"criteo:{data}", "--out", "out", "--quiet"], r"bad\.txt:3: "


@case("malformed criteo line, output in new folders")
def _(c):
    data = c.write("bad.txt", f"{CRITEO_ROW}\nx\t1\n")
    return ["train", "--data", f"criteo:{data}", "--out", "new/folders/out", "--quiet"], r"bad\.txt:2: "


@case("400-digit integer in a criteo column")
def _(c):
    huge = CRITEO_ROW.replace("\t3\t", "\t" + "9" * 400 + "\t", 1)
    data = c.write("huge.txt", f"{CRITEO_ROW}\n{huge}\n")
    return ["train", "--data", f"criteo:{data}", "--out", "out", "--quiet"], r"huge\.txt:2: column I1"


def _truncated_gzip(c: Context) -> str:
    rows = "".join(f"{CRITEO_ROW}\n" for _ in range(3000)).encode()
    compressed = gzip.compress(rows)
    return c.write("cut.txt.gz", compressed[: len(compressed) // 2])


@case("truncated gzip")
def _(c):
    return ["train", "--data", f"criteo:{_truncated_gzip(c)}", "--out", "out", "--quiet"], r"cut\.txt\.gz"


@case("truncated gzip with --skip-bad-lines")
def _(c):
    return (["train", "--data", f"criteo:{_truncated_gzip(c)}", "--skip-bad-lines", "--out", "out", "--quiet"],
            r"cut\.txt\.gz")


# ----------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """An untrained tiny DeepFM saved as a run, its LiteRT export and a small Criteo file."""
    import tfafm
    from tfafm.config import TrainConfig
    from tfafm.data import load_data
    from tfafm.runs import save_run

    root = tmp_path_factory.mktemp("bad-inputs")
    config = TrainConfig(hyperparams={"hidden_units": [8]}, embedding_dim=4, batch_size=128,
                         synthetic_rows=500, synthetic_max_vocabulary=100)
    bundle = load_data("synthetic", **config.data_options())
    model = tfafm.models.build("deepfm", bundle.schema, **config.hyperparams)
    save_run(str(root / "run"), model, bundle.schema, None,
             {"kind": "trained", "data": "synthetic", "config": config.to_dict()})
    tfafm.export.litert(model, str(root / "m.tflite"))
    (root / "train.txt").write_text(f"{CRITEO_ROW}\n" * 20)
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, shared, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, expected = CASES[name](Context(tmp_path, shared))
    assert_refused(argv, expected, capsys, tmp_path, shared)

@pytest.mark.parametrize("kind, text", [
    ("criteo", f"\ufeff{CRITEO_ROW}\n{CRITEO_ROW}\n"),
    ("avazu", "\ufeff" + AVAZU_HEADER + "\n" + "".join(AVAZU_ROW.format(i=i, label=i % 2) + "\n" for i in range(20))),
])
def test_utf8_byte_order_mark_is_accepted(tmp_path, kind, text):
    from tfafm.data import load_data

    path = tmp_path / "bom.csv"
    path.write_text(text, encoding="utf-8")
    bundle = load_data(f"{kind}:{path}", validation_fraction=0.5, batch_size=8)
    assert bundle.train_rows + bundle.validation_rows == text.count("\n") - (kind == "avazu")


@pytest.mark.parametrize("option, value", [
    ("iterations", 0), ("batch_sizes", (1, 0)), ("threads", ()), ("warmup", -1), ("max_seconds", 0.0),
])
def test_benchmark_refuses_options_that_cannot_measure_before_starting_a_worker(shared, option, value):
    from tfafm.errors import UserError
    from tfafm.export.bench import benchmark

    with pytest.raises(UserError, match=f"benchmark: {option} must be"):
        benchmark([str(shared / "m.tflite")], json.loads((shared / "run" / "schema.json").read_text()),
                  **{option: value})


# ----------------------------------------------------------------------------- process-level promises


def test_help_and_argument_errors_answer_without_tensorflow():
    """``tfafm --help`` and an argument error, each in a fresh process, never import TensorFlow."""
    script = ("import sys, tfafm_cli; code = tfafm_cli.main(sys.argv[1:]); "
              "print('tensorflow' in sys.modules, file=sys.stderr); sys.exit(code)")
    for argv, code in ((["--help"], 0), (["compress", "run", "--ratio", "0.5"], 2), (["export", "--help"], 0)):
        process = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60,
                                 cwd=ROOT)
        assert process.returncode == code, process.stderr
        assert process.stderr.strip().splitlines()[-1] == "False", process.stderr
    assert "--overwrite" in process.stdout and "``" not in process.stdout


def run_cli_process(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``tfafm ARGV`` in a fresh process, without a TF_CPP_MIN_LOG_LEVEL of the user's (the CLI chooses it)."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "tfafm_cli", *argv], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=300, cwd=cwd)


def test_a_quiet_command_prints_no_tensorflow_notes(tmp_path):
    """Under --quiet stderr stays empty: TensorFlow's start-up notes are hidden, and so is the "failed call
    to cuInit" error line it prints on a machine without a GPU driver when a command first runs an op."""
    process = run_cli_process(["train", "--data", "synthetic:2000", "--epochs", "1", "--embedding-dim", "2", "--out",
                               str(tmp_path / "run"), "--quiet"], tmp_path)
    assert process.returncode == 0, process.stderr
    assert process.stderr == "" and "Saved run to" in process.stdout


def test_a_conversion_error_ends_in_one_line_naming_the_ops_of_the_model(tmp_path):
    """tfafm's line listed the lookup table's handle (tf.Placeholder) as an op of its own. (The converter's
    own dump of those ops stays above it: what C++ code prints is left on stderr, where a crash's reason
    would be.)"""
    text = keras.Input((1,), dtype="string", name="country")
    ids = keras.layers.StringLookup(vocabulary=["fr", "de"], name="country_lookup")(text)
    keras.Model(text, keras.layers.Dense(1)(keras.ops.cast(ids, "float32"))).save(tmp_path / "m.keras")
    process = run_cli_process(["export", "m.keras", "--out", "m.tflite", "--quiet"], tmp_path)
    assert process.returncode == 2 and process.stderr.splitlines()[-1:] == [
        "tfafm export: error: Model 'functional' needs TensorFlow op(s) outside the LiteRT builtins: "
        "'tf.LookupTableFindV2' (from layer 'country_lookup'). tfafm exports builtin ops only (no SELECT_TF_OPS / "
        "Flex delegate): do this preprocessing outside the model (e.g. hash strings to int32 ids beforehand)."]


def test_a_data_error_found_while_tensorflow_reads_the_file_is_one_line(tmp_path):
    """An id out of range in the second batch of a CSV file is found inside TensorFlow's reading of it:
    TensorFlow logged the Python traceback of that error as a native warning (and a finalizer note at
    exit) around tfafm's own line."""
    ids = keras.Input((1,), dtype="int64", name="user")
    keras.Model(ids, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(
        keras.layers.Embedding(100, 4)(ids)))).save(tmp_path / "m.keras")
    users = np.arange(3000) % 100
    users[2500] = 100
    (tmp_path / "rows.csv").write_text("user,click\n" + "".join(f"{u},{u % 2}\n" for u in users))
    process = run_cli_process(["eval", "m.keras", "--data", "csv:rows.csv?label=click", "--quiet"], tmp_path)
    assert process.returncode == 2 and process.stderr.splitlines() == [
        "tfafm eval: error: csv:rows.csv?label=click: rows.csv: column user: id 100 is outside the table it indexes "
        "(ids 0..99; largest id 100, smallest 0)"], process.stderr


def test_tensorflows_logger_writes_to_stderr_after_the_cli_loaded_it(tmp_path):
    """TensorFlow's log handler, made while the CLI hid native stderr, held a stream over a descriptor closed
    right after: its warnings failed ("Bad file descriptor"), or went into a file that took that number."""
    script = ("import os, sys, tfafm_cli; tfafm_cli._import_cli(); import tensorflow as tf\n"
              "f = open(sys.argv[1], 'w'); tf.get_logger().warning('a warning from TensorFlow'); f.close()")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    process = subprocess.run([sys.executable, "-c", script, str(tmp_path / "user.txt")], capture_output=True,
                             text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert process.returncode == 0, process.stderr
    assert "a warning from TensorFlow" in process.stderr and (tmp_path / "user.txt").read_text() == ""


def test_importing_tfafm_changes_nothing_in_the_process(tmp_path):
    script = ("import os, sys; before = dict(os.environ); import tfafm, keras; "
              "from tfafm.layers import LowRankDense; "
              "assert keras.saving.get_registered_object('tfafm>LowRankDense') is LowRankDense; "
              "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), dict(os.environ) == before, os.path.samefile("
              "'/proc/self/fd/2', sys.argv[1]))")
    err_file = tmp_path / "err.txt"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    with open(err_file, "w") as err:
        process = subprocess.run([sys.executable, "-c", script, str(err_file)], stdout=subprocess.PIPE,
                                 stderr=err, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert process.returncode == 0, err_file.read_text()
    assert process.stdout.split() == ["None", "True", "True"]
