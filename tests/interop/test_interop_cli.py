"""``tfafm import keras2``: a Keras 2 file -> a run directory that ``tfafm export`` and ``bench`` take as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from interop_checks import PARITY, litert_predict, max_difference
from keras2_models import movielens_dcn, split_rows

from tfafm_cli import main
from tfafm.interop import RawFeatureEncoder
from tfafm.schema import Schema


@pytest.fixture(scope="module")
def dcn_files(movielens, tmp_path_factory):
    """The tutorial DCN's ranking network saved as .h5, Keras 2 .keras and SavedModel, and held-out raw rows."""
    model = movielens_dcn(split_rows(movielens, 0, 20_000), projection_dim=8, steps=3)
    folder = tmp_path_factory.mktemp("dcn")
    files = {"h5": str(folder / "dcn.h5"), "keras": str(folder / "dcn.keras"),
             "saved_model": str(folder / "dcn_saved_model")}
    for path in files.values():
        model.ranking_model.save(path)
    raw = {k: v for k, v in split_rows(movielens, 90_000, 91_000).items() if k != "user_rating"}
    return model.ranking_model, files, raw


@pytest.mark.parametrize("kind", ["h5", "keras", "saved_model"])
def test_import_writes_a_run_that_export_and_bench_take(kind, dcn_files, tmp_path, capsys):
    original, files, raw = dcn_files
    run = tmp_path / "run"
    assert main(["import", "keras2", files[kind], "--out", str(run)]) == 0
    assert "largest difference from the original" in capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "imported" and info["parity"]["max_abs_difference"] < PARITY
    assert info["config"]["learning_rate"] > 0
    encoder = RawFeatureEncoder.load(str(run / info["raw_features"]))
    schema = Schema.load(str(run / "schema.json"))
    assert list(schema.names) == [f.name for f in encoder.features]
    inputs = encoder.encode(raw)
    expected = original.predict(raw, verbose=0)
    assert max_difference(keras.models.load_model(run / "model.keras").predict(inputs, verbose=0), expected) < PARITY

    if kind == "h5":
        exported = tmp_path / "dcn.tflite"
        assert main(["export", str(run), "--format", "litert", "--out", str(exported)]) == 0
        assert max_difference(litert_predict(str(exported), inputs), expected) < PARITY
        assert main(["bench", str(exported), "--batch-sizes", "1", "--threads", "1", "--iterations", "20",
                     "--max-seconds", "2"]) == 0  # the .tflite describes its own inputs
        assert "dcn.tflite" in capsys.readouterr().out


def test_import_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["import", "keras2", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "run")]) == 2
    assert "No Keras 2 model at" in capsys.readouterr().err
    keras3_file = tmp_path / "k3.keras"
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(keras3_file)
    assert main(["import", "keras2", str(keras3_file), "--out", str(tmp_path / "run")]) == 2
    assert "not Keras 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_encoder_sample_covers_the_oov_and_mask_paths(dcn_files):
    _, files, _ = dcn_files
    from tfafm.interop import from_keras2

    encoder = from_keras2(files["h5"]).raw_feature_encoder
    ids = encoder.encode(encoder.sample(500, seed=1))
    assert all((column == 0).any() for column in ids.values())  # every lookup hit its OOV id
    assert all(np.unique(column).size > 5 for column in ids.values())


def test_import_reruns_itself_under_legacy_keras_when_tfrs_is_installed(dcn_files, tmp_path):
    # A `tfafm` process without TF_USE_LEGACY_KERAS runs Keras 3 and cannot load the TFRS Cross layer itself.
    _, files, _ = dcn_files
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "tfafm_cli", "import", "keras2", files["h5"], "--out",
                             str(tmp_path / "run"), "--quiet"], capture_output=True, text=True, env=env, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""  # the child hides TensorFlow's start-up notes as the parent does
    assert "Saved run to" in result.stdout
    assert json.loads((tmp_path / "run" / "run.json").read_text())["kind"] == "imported"


def test_import_compares_every_output_and_names_a_model_that_fails_on_sampled_rows(tmp_path, capsys):
    """Dict outputs, or outputs of different widths, ended the parity check in a TypeError / numpy ValueError
    traceback; a float input read by an Embedding in TensorFlow's InvalidArgumentError traceback."""
    import tf_keras as k2

    inputs = k2.Input((3,), name="x")
    hidden = k2.layers.Dense(4, activation="relu")(inputs)
    heads = {"ctr": k2.layers.Dense(1, activation="sigmoid", name="ctr_head")(hidden),
             "attributes": k2.layers.Dense(3, name="attribute_head")(hidden)}
    k2.Model(inputs, heads).save(tmp_path / "heads.keras")
    assert main(["import", "keras2", str(tmp_path / "heads.keras"), "--out", str(tmp_path / "heads"), "--quiet"]) == 0
    assert json.loads((tmp_path / "heads" / "run.json").read_text())["parity"]["max_abs_difference"] <= PARITY
    ids = k2.Input((1,), name="item")  # float32, the Keras 2 tutorials' default
    vectors = k2.layers.Flatten()(k2.layers.Embedding(300, 4)(ids))
    k2.Model(ids, k2.layers.Dense(1, activation="sigmoid")(vectors)).save(tmp_path / "ids.keras")
    capsys.readouterr()
    assert main(["import", "keras2", str(tmp_path / "ids.keras"), "--out", str(tmp_path / "ids"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "fails on 1000 rows sampled within its inputs' types: indices" in error and "dtype='int32'" in error
    assert len(error.splitlines()) == 1 and not (tmp_path / "ids").exists()
