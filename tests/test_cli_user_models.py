"""The command line on the user's own model (a .keras file) and their own data (Parquet, CSV,
TFRecord keyed by the model's input names): eval, compress, export, bench, inspect; bad data is
one line and exit 2 before any work."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

import keras
from tfafm_cli import main

pytestmark = pytest.mark.slow

ROWS = 3000
ITEMS = [f"item{i}" for i in range(30)]


def _user_model():
    """Named inputs: int ids, a string through its own StringLookup, a float, a sequence; two outputs."""
    keras.utils.set_random_seed(0)
    user = keras.Input((1,), dtype="int32", name="user")
    item = keras.Input((1,), dtype="string", name="item")
    price = keras.Input((1,), name="price")
    history = keras.Input((5,), dtype="int32", name="history")
    lookup = keras.layers.StringLookup(vocabulary=ITEMS, name="item_lookup")
    vectors = [
        keras.layers.Flatten()(keras.layers.Embedding(200, 8, name="user_table")(user)),
        keras.layers.Flatten()(keras.layers.Embedding(len(ITEMS) + 1, 8, name="item_table")(lookup(item))),
        keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(60, 8, name="history_table")(history)),
        price,
    ]
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(keras.layers.Concatenate()(vectors))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden2")(hidden)
    click = keras.layers.Dense(1, activation="sigmoid", name="click")(hidden)
    buy = keras.layers.Dense(1, activation="sigmoid", name="buy")(hidden)
    return keras.Model({"user": user, "item": item, "price": price, "history": history}, [click, buy],
                       name="user_model")


def _table(rng, rows=ROWS):
    user = rng.integers(0, 200, rows)
    item = rng.integers(0, len(ITEMS), rows)
    price = rng.normal(size=rows)
    history = [list(rng.integers(1, 60, rng.integers(0, 8))) for _ in range(rows)]
    signal = np.sin(user) + 0.5 * (item % 3) + price
    click = (signal + rng.normal(size=rows) > 0.5).astype("int64")
    buy = (signal + rng.normal(size=rows) > 1.5).astype("int64")
    return pa.table({"user": user, "item": pa.array([ITEMS[i] for i in item]), "price": price,
                     "history": pa.array(history, pa.list_(pa.int64())), "click": click, "buy": buy, "extra": price})


def _features(table):
    history = np.zeros((table.num_rows, 5), "int32")
    for row, items in enumerate(table["history"].to_pylist()):
        history[row, :min(5, len(items))] = items[:5]
    return {"user": table["user"].to_numpy().astype("int32")[:, None],
            "item": np.array(table["item"].to_pylist(), dtype=object)[:, None],
            "price": table["price"].to_numpy().astype("float32")[:, None], "history": history}


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A trained user model saved as a .keras file and its data as Parquet, CSV and TFRecord."""
    root = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    table = _table(rng)
    model = _user_model()
    model.compile(keras.optimizers.Adam(0.01), ["binary_crossentropy", "binary_crossentropy"])
    features = _features(table)
    labels = (table["click"].to_numpy()[:, None].astype("float32"), table["buy"].to_numpy()[:, None].astype("float32"))
    model.fit(tf.data.Dataset.from_tensor_slices((features, labels)).batch(256), epochs=3, verbose=0)
    model.save(root / "my.keras")
    pq.write_table(table, root / "events.parquet", row_group_size=1000)
    flat = table.drop(["history"]).append_column(
        "history", pa.array(["|".join(map(str, h)) for h in table["history"].to_pylist()]))
    pacsv.write_csv(flat, root / "events.csv")
    with tf.io.TFRecordWriter(str(root / "events.tfrecord")) as writer:
        for row in table.to_pylist():
            feature = {
                "user": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["user"]])),
                "item": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["item"].encode()])),
                "price": tf.train.Feature(float_list=tf.train.FloatList(value=[row["price"]])),
                "history": tf.train.Feature(int64_list=tf.train.Int64List(value=row["history"])),
                "click": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["click"]])),
                "buy": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["buy"]])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    predictions = model.predict(tf.data.Dataset.from_tensor_slices(features).batch(512), verbose=0)
    expected = {"click": roc_auc_score(labels[0].ravel(), predictions[0].ravel()),
                "buy": roc_auc_score(labels[1].ravel(), predictions[1].ravel())}
    return root, expected


@pytest.mark.parametrize("source", ["parquet:{root}/events.parquet", "csv:{root}/events.csv",
                                    "tfrecord:{root}/events.tfrecord"])
def test_eval_of_a_keras_file_equals_sklearns_auc(user, source, capsys):
    root, expected = user
    data = source.format(root=root) + "?label=click,buy&pad=history"  # histories of 0-7 ids, padded or cut to 5
    assert main(["eval", str(root / "my.keras"), "--data", data, "--format", "json", "--quiet"]) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert set(models) == {"click", "buy"}
    for name in ("click", "buy"):
        assert models[name]["auc"] == pytest.approx(expected[name], abs=1e-6)
        assert models[name]["rows"] == ROWS


def test_compress_a_keras_file_then_export_and_bench_it(user, tmp_path, capsys):
    root, _ = user
    out = tmp_path / "small"
    data = f"parquet:{root}/events.parquet?label=click,buy&pad=history"
    assert main(["compress", str(root / "my.keras"), "--data", data, "--ratio", "2", "--finetune-epochs", "1",
                 "--out", str(out), "--quiet"]) == 0  # fine-tuned on the two outputs' predictions of the original
    printed = capsys.readouterr().out
    assert "## Accuracy on" in printed and "| click |" in printed and "| buy |" in printed
    assert "┃" not in printed and "━" not in printed  # markdown, not box drawing, when piped
    info = json.loads((out / "run.json").read_text())
    assert info["finetune_from"] == "teacher" and isinstance(info["stages"]["finetuned"]["kept"], bool)
    report = json.loads((out / "report.json").read_text())
    validation = report["accuracy"]["validation"]
    assert validation["rows"] == ROWS // 10  # every 10th row held out
    assert set(validation["outputs"]) == {"click", "buy"}
    # The report describes the weights saved, fine-tuned or not (it described the compressed ones).
    tuned = info["stages"]["finetuned"]
    assert validation["outputs"]["click"]["compressed"]["auc"] == pytest.approx(tuned["auc"], abs=1e-9)
    assert set(tuned["outputs"]) == {"click", "buy"}  # both heads compared
    assert any(note.startswith("fine-tuned 1 epoch(s) on the original model's predictions: ")
               for note in report["notes"])
    assert (out / "model.keras").is_file() and not (out / "schema.json").exists()
    model = keras.models.load_model(out / "model.keras")
    assert model.count_params() < keras.models.load_model(root / "my.keras").count_params()

    saved = tmp_path / "small.saved_model"
    assert main(["export", str(out), "--format", "saved_model", "--data", data, "--out", str(saved), "--quiet"]) == 0
    assert "checked against the Keras model on parquet:" in capsys.readouterr().out
    assert (saved / "saved_model.pb").is_file()
    # Without --data, the SavedModel is checked on the rows the run was compressed on (not generated ones).
    assert main(["export", str(out), "--format", "saved_model", "--out", str(tmp_path / "again.saved_model"),
                 "--quiet"]) == 0
    assert f"checked against the Keras model on {data}, the data it was compressed on" in capsys.readouterr().out
    # The StringLookup has no LiteRT builtin form and no ONNX form onnxruntime loads: refused in one
    # line naming it, nothing written.
    for export_format, name in (("litert", "small.tflite"), ("onnx", "small.onnx")):
        target = tmp_path / name
        assert main(["export", str(out), "--format", export_format, "--out", str(target), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert "item_lookup" in err and len(err.splitlines()) == 1 and not target.exists()
    assert main(["bench", str(root / "my.keras"), str(out), "--batch-sizes", "1", "--threads", "1",
                 "--iterations", "5", "--format", "json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(r["p50_ms"] > 0 for r in rows)
    # The SavedModel alone (no schema.json anywhere: keyed data) is fed the inputs of the run it was exported from.
    assert main(["bench", str(saved), "--batch-sizes", "1", "--threads", "1", "--iterations", "5", "--format", "json",
                 "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)[0]["p50_ms"] > 0


def test_inspect_lists_layers_targets_and_sizes(user, capsys):
    root, _ = user
    assert main(["inspect", str(root / "my.keras"), "--format", "json"]) == 0
    inspection = json.loads(capsys.readouterr().out)
    assert {t["name"] for t in inspection["compressible"]} >= {"user_table", "hidden"}
    assert "click" in {s["name"] for s in inspection["left_alone"]}
    sizes = {row["quantization"]: row for row in inspection["expected_bytes"]}
    assert sizes["dynamic"]["original_bytes"] < sizes["float32"]["original_bytes"]
    assert sizes["float32"]["ratios"]["2"] < sizes["float32"]["original_bytes"]
    assert main(["inspect", str(root / "my.keras")]) == 0
    assert "## What compress would factor" in capsys.readouterr().out


def test_a_run_records_its_data_by_absolute_paths(user, tmp_path, monkeypatch):
    """Runs recorded their data as given ('parquet:events.parquet'): what reads a run's data back (eval,
    compress, export of a trained run) from another directory read that directory's file of that name."""
    from tfafm.data.specs import absolute_spec

    root, _ = user
    monkeypatch.chdir(root)
    assert main(["compress", "my.keras", "--data", "parquet:events.parquet?label=click,buy&pad=history", "--ratio",
                 "1.5", "--out", str(tmp_path / "small"), "--quiet"]) == 0
    recorded = json.loads((tmp_path / "small" / "run.json").read_text())["data"]
    assert recorded == f"parquet:{root / 'events.parquet'}?label=click,buy&pad=history"
    assert absolute_spec("criteo:a.txt,b.txt") == f"criteo:{root / 'a.txt'},{root / 'b.txt'}"
    assert absolute_spec("cache:prepared") == f"cache:{root / 'prepared'}"


def test_an_output_over_its_own_csv_input_is_refused_even_with_overwrite(user, tmp_path, monkeypatch, capsys):
    """The input files of a csv: or tfrecord: spec were taken with their ?options as part of the path, so the
    guard that an output never replaces an input did not see them: --overwrite replaced the data file."""
    import shutil

    root, _ = user
    shutil.copy(root / "events.csv", tmp_path / "events.csv")
    before = (tmp_path / "events.csv").read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(["compress", str(root / "my.keras"), "--data", "csv:events.csv?label=click,buy&pad=history",
                 "--out", "events.csv", "--overwrite", "--quiet"]) == 2
    assert "input" in capsys.readouterr().err and (tmp_path / "events.csv").read_bytes() == before


def test_label_columns_named_as_the_outputs_pair_by_name_in_any_order(user, capsys):
    """``?label=buy,click`` for outputs (click, buy) scored click on the buy column (AUC 0.65 for 0.74)."""
    root, expected = user
    assert main(["eval", str(root / "my.keras"), "--data", f"parquet:{root}/events.parquet?label=buy,click&pad=history",
                 "--format", "json", "--quiet"]) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert {name: models[name]["auc"] for name in models} == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("data, message", [
    ("parquet:{root}/events.parquet?label=nope,buy&pad=history", r"no label column\(s\) \[.nope.\]"),
    ("parquet:{root}/events.parquet?label=click&pad=history", r"1 label column\(s\) \['click'\] for a model with 2 output"),
    ("parquet:{root}/events.parquet?label=extra,buy&pad=history", r"column extra: labels must be 0 or 1"),
    ("parquet:{root}/events.parquet?label=buy,extra&pad=history",
     r"label column 'buy' is given for output 'click', but the model has an output named 'buy'"),
    ("parquet:{root}/users_out_of_range.parquet?label=click,buy&pad=history",
     r"column user: id 250 is outside the table it indexes \(ids 0..199; largest id 250"),
    ("parquet:{root}/no_user.parquet?label=click,buy&pad=history", r"no column for model input\(s\) \['user'\]"),
    ("csv:{root}/string_user.csv?label=click,buy&pad=history", r"column user: holds strings, but model input 'user' takes int32"),
    ("csv:{root}/events.parquet?label=click,buy", r"not a readable CSV file"),
    # Lists of another length than the input's are never padded or cut unasked (a 0 is a real id).
    ("parquet:{root}/events.parquet?label=click,buy",
     r"events\.parquet: column history: row \d+: \d values, but model input 'history' takes 5 per row \(add "
     r"pad=history to the data spec"),
    ("parquet:{root}/events.parquet?label=click,buy&pad=price", r"pad names \['price'\], which take one value"),
    ("parquet:{root}/events.parquet?label=click,buy&pad=histroy", r"pad names \['histroy'\], which are not inputs"),
    ("parquet:{root}/null_history.parquet?label=click,buy&pad=history",
     r"column history: row 4: a missing value inside the list"),
    ("parquet:{root}/exact_history.parquet?label=click,buy", r"column history: row 3: a missing list"),
])
def test_bad_user_data_is_one_line_and_exit_2(user, data, message, tmp_path, capsys):
    root, _ = user
    table = pq.read_table(root / "events.parquet")
    users = table["user"].to_numpy().copy()
    users[7] = 250
    pq.write_table(table.set_column(0, "user", pa.array(users)), root / "users_out_of_range.parquet")
    pq.write_table(table.drop(["user"]), root / "no_user.parquet")
    history = table["history"].to_pylist()
    history[3] = [1, None, 2]
    pq.write_table(table.drop(["history"]).append_column("history", pa.array(history, pa.list_(pa.int64()))),
                   root / "null_history.parquet")
    exact = [(h + [1] * 5)[:5] for h in table["history"].to_pylist()]
    exact[2] = None
    pq.write_table(table.drop(["history"]).append_column("history", pa.array(exact, pa.list_(pa.int64()))),
                   root / "exact_history.parquet")
    text = pacsv.read_csv(root / "events.csv", convert_options=pacsv.ConvertOptions(column_types={"history": pa.string()}))
    pacsv.write_csv(text.set_column(0, "user", pa.array([f"u{u}" for u in text["user"].to_pylist()])),
                    root / "string_user.csv")
    out = tmp_path / "small"
    code = main(["compress", str(root / "my.keras"), "--data", data.format(root=root), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    import re

    assert re.search(message, err), err
    assert not out.exists()


def test_a_keras_file_without_data_is_told_to_pass_data(user, capsys):
    root, _ = user
    assert main(["eval", str(root / "my.keras"), "--quiet"]) == 2
    assert "pass --data" in capsys.readouterr().err


def _click_model(logits: bool, layer=None):
    """A one-output click model on the user's data: sigmoid or logits, optionally a custom layer inside."""
    keras.utils.set_random_seed(1)
    user = keras.Input((1,), dtype="int32", name="user")
    price = keras.Input((1,), name="price")
    vectors = keras.layers.Concatenate()([keras.layers.Flatten()(keras.layers.Embedding(200, 8, name="table")(user)),
                                          price if layer is None else layer(price)])
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(vectors)
    click = keras.layers.Dense(1, activation=None if logits else "sigmoid", name="click")(hidden)
    return keras.Model({"user": user, "price": price}, click, name="click_model")


def test_a_model_of_logits_is_scored_on_their_sigmoid(user, tmp_path, capsys):
    """A model ending in Dense(1) without sigmoid: eval printed AUC 0.68 where sklearn said 0.73 (its logits
    were clipped to [1e-7, 1 - 1e-7] first, every negative one tied), exit 0; compress's report too."""
    root, _ = user
    table = pq.read_table(root / "events.parquet")
    features = {"user": table["user"].to_numpy().astype("int32")[:, None],
                "price": table["price"].to_numpy().astype("float32")[:, None]}
    labels = table["click"].to_numpy().astype("float32")[:, None]
    model = _click_model(logits=True)
    model.compile(keras.optimizers.Adam(0.01), keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(features, labels, epochs=3, batch_size=256, verbose=0)
    model.save(tmp_path / "logits.keras")
    logits = model.predict(features, verbose=0).ravel()
    assert logits.min() < 0
    data = f"parquet:{root}/events.parquet?label=click"
    assert main(["eval", str(tmp_path / "logits.keras"), "--data", data, "--format", "json", "--quiet"]) == 0
    scored = json.loads(capsys.readouterr().out)["models"]["click"]
    assert scored["auc"] == pytest.approx(roc_auc_score(labels.ravel(), logits), abs=1e-6)
    probabilities = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected_logloss = -np.mean(labels.ravel() * np.log(probabilities) + (1 - labels.ravel()) * np.log(1 - probabilities))
    assert scored["logloss"] == pytest.approx(expected_logloss, rel=1e-4)


def test_a_custom_layer_loads_with_import_and_is_named_without_it(tmp_path, user, capsys):
    """A model with a layer registered in the user's own module: the CLI said "damaged Keras model file" and
    had no way to import the module."""
    module = tmp_path / "userlayers.py"
    module.write_text(
        "import keras\n\n"
        "@keras.saving.register_keras_serializable(package='userlayers')\n"
        "class Scale(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return 2.0 * x\n")
    import importlib.util

    spec = importlib.util.spec_from_file_location("userlayers", module)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    custom = _click_model(logits=False, layer=loaded.Scale())
    custom.save(tmp_path / "custom.keras")
    keras.saving.get_custom_objects().pop("userlayers>Scale")  # a fresh process: nothing registered
    root, _ = user
    table = pq.read_table(root / "events.parquet")
    predictions = custom.predict({"user": table["user"].to_numpy().astype("int32")[:, None],
                                  "price": table["price"].to_numpy().astype("float32")[:, None]}, verbose=0)
    args = ["eval", str(tmp_path / "custom.keras"), "--data", f"parquet:{root}/events.parquet?label=click", "--quiet"]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert "the model uses 'Scale', which is not registered in this process" in error and "--import MODULE" in error
    assert len(error.splitlines()) == 1
    assert main(args + ["--import", str(module), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"]["click"]["auc"] == pytest.approx(
        roc_auc_score(table["click"].to_numpy(), predictions.ravel()), abs=1e-6)
    assert main(args + ["--import", "no_such_user_module"]) == 2
    assert "--import no_such_user_module: No module named" in capsys.readouterr().err


def test_eval_names_the_data_it_cannot_score(user, tmp_path, capsys):
    """An empty file or labels of one class: "AUC needs both positive and negative labels in the evaluation
    data." named no file."""
    root, _ = user
    table = pq.read_table(root / "events.parquet")
    zeros = pa.array(np.zeros(table.num_rows, np.int64))
    pq.write_table(table.set_column(table.schema.get_field_index("click"), "click", zeros), tmp_path / "zeros.parquet")
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    for name, message in (("zeros", "AUC needs both positive and negative labels"), ("empty", "is empty")):
        spec = f"parquet:{tmp_path / name}.parquet?label=click,buy&pad=history"
        assert main(["eval", str(root / "my.keras"), "--data", spec, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"tfafm eval: error: {spec}: ") and message in err and len(err.splitlines()) == 1
