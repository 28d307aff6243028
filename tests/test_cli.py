"""The tfafm command line: train, eval, compress, and its errors for bad input."""

import json
import os
from pathlib import Path

import pytest

from tfafm_cli import main

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = """model: deepfm
hyperparams: {hidden_units: [16]}
embedding_dim: 4
batch_size: 256
epochs: 2
synthetic_rows: 3000
synthetic_max_vocabulary: 500
"""


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(TINY)
    run = root / "run"
    assert main(["train", "--config", str(config), "--data", "synthetic", "--out", str(run), "--quiet"]) == 0
    return run


def test_train_writes_a_complete_run(trained_run, capsys):
    assert sorted(os.listdir(trained_run)) == [".tfafm-artifact.json", "model.keras", "run.json", "schema.json"]
    info = json.loads((trained_run / "run.json").read_text())
    assert info["config"]["model"] == "deepfm" and info["epochs_run"] >= 1
    assert 0.5 < info["metrics"]["auc"] <= 1.0
    assert info["metrics"]["rows"] == 300


def test_eval_reports_auc_and_logloss(trained_run, capsys):
    assert main(["eval", str(trained_run), "--data", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert "AUC" in out and "LogLoss" in out


def test_eval_defaults_to_the_runs_validation_split_and_prints_json(trained_run, capsys):
    assert main(["eval", str(trained_run), "--format", "json", "--quiet"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    saved = json.loads((trained_run / "run.json").read_text())["metrics"]
    (metrics,) = report["models"].values()
    assert metrics["rows"] == saved["rows"] and abs(metrics["auc"] - saved["auc"]) < 1e-6
    assert captured.err == ""


def test_eval_markdown_table_does_not_wrap(trained_run, capsys):
    long_name = trained_run.parent / ("a-run-with-a-rather-long-name-" * 4)
    long_name.symlink_to(trained_run)
    assert main(["eval", str(long_name), "--format", "md", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"**{long_name} on the validation split of synthetic**" in lines
    table = lines[lines.index("| model | AUC | LogLoss | rows |"):]
    assert len(table) == 3 and all(line.startswith("| ") and line.endswith(" |") for line in table)


def test_compress_writes_model_and_reports(trained_run, tmp_path, capsys):
    out = tmp_path / "small"
    # The ratio is the whole file's (this tiny run's per-layer records do not shrink), so its parameters shrink more.
    code = main(["compress", str(trained_run), "--ratio", "1.5", "--finetune-epochs", "1", "--out", str(out),
                 "--quiet"])
    assert code == 0
    assert {"model.keras", "report.md", "report.json", "run.json", "schema.json"} <= set(os.listdir(out))
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["ratio"] >= 1.5
    info = json.loads((out / "run.json").read_text())
    stages = info["stages"]
    assert info["finetune_from"] == "teacher"  # distillation from the original, the default
    assert set(stages) == {"original", "compressed", "finetuned"}
    assert isinstance(stages["finetuned"]["kept"], bool) and "gain_z" in stages["finetuned"]
    printed = capsys.readouterr().out
    assert "original" in printed and "finetuned" in printed and "deep_dense_0" in printed
    # Whether the fine-tuned weights were kept is a result: printed under --quiet too.
    assert f"Fine-tuning {'kept' if stages['finetuned']['kept'] else 'discarded'}" in printed
    # The finetuned row shows the weights fine-tuning gave (not the compressed ones kept instead of them).
    tuned = stages["finetuned"]["tuned"]
    label = "finetuned" if stages["finetuned"]["kept"] else "finetuned (discarded)"
    assert f"| {label} | {tuned['auc']:.4f} | {tuned['logloss']:.4f} |" in printed


def test_compress_objective_and_quantization_reach_the_allocator(trained_run, tmp_path):
    out = tmp_path / "int8"
    code = main(["compress", str(trained_run), "--quantization", "dynamic", "--ratio", "1.25", "--out", str(out),
                 "--quiet"])
    assert code == 0
    info = json.loads((out / "run.json").read_text())
    assert (info["objective"], info["quantization"]) == ("both", "dynamic")
    out = tmp_path / "fast"
    assert main(["compress", str(trained_run), "--objective", "latency", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["objective"] == "latency"
    layers = json.loads((out / "report.json").read_text())["layers"]
    # The run's MLP is too small for a factored layer (two ops) to cost less per request than a whole one.
    assert all(row["rank"] is None for row in layers if row["kind"] == "dense")
    assert any(row["rank"] is not None for row in layers if row["kind"] == "embedding")


def test_compress_first_order_option_reaches_compress(trained_run, tmp_path, capsys):
    # The tiny run's first-order table is a large part of its int8 file: 1.5x is reachable only by reading
    # it from the embeddings (the default); --first-order keep keeps it and names the reach.
    out = tmp_path / "codes"
    assert main(["compress", str(trained_run), "--ratio", "1.5", "--quantization", "dynamic", "--out", str(out),
                 "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["first_order"] == "codes"
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert any(note.startswith("first-order weights of 'linear_terms'") for note in notes)
    capsys.readouterr()
    assert main(["compress", str(trained_run), "--ratio", "1.5", "--quantization", "dynamic", "--first-order",
                 "keep", "--id-coverage", "1", "--out", str(tmp_path / "keep"), "--quiet"]) == 2
    assert "out of reach" in capsys.readouterr().err and not (tmp_path / "keep").exists()


def test_compress_id_coverage_option_reaches_compress(trained_run, tmp_path, capsys):
    out = tmp_path / "auto"  # the run's validation split has labels: the coverage is chosen there
    assert main(["compress", str(trained_run), "--ratio", "1.5", "--quantization", "dynamic", "--out", str(out),
                 "--quiet"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["id_coverage"] == "auto" and info["method_option"] == "auto"
    notes = json.loads((out / "report.json").read_text())["notes"]
    (note,) = [note for note in notes if "chosen on the validation AUC at this ratio between AFM at each id_coverage "
               "and weight SVD, SVD only where its AUC is higher beyond noise" in note and "(AUC drop: 1 " in note]
    assert note.startswith(f"method: {info['method'].upper()}") and ", svd " in note  # --method auto: SVD weighed
    out = tmp_path / "pruned"
    assert main(["compress", str(trained_run), "--ratio", "1.5", "--quantization", "dynamic", "--id-coverage",
                 "0.95", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["id_coverage"] == 0.95
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert any(note.startswith("rare ids: ") and "95.0% of its calibration lookups" in note for note in notes)
    # The pruned run still matches its schema (ids past the kept rows are valid input) and exports, verified.
    assert main(["eval", str(out), "--quiet"]) == 0
    assert main(["export", str(out), "--quantization", "dynamic", "--out", str(tmp_path / "pruned.tflite"),
                 "--quiet"]) == 0
    out = tmp_path / "whole"
    assert main(["compress", str(trained_run), "--ratio", "1.5", "--quantization", "dynamic", "--id-coverage", "1",
                 "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["id_coverage"] == 1.0
    assert not any(note.startswith("rare ids") for note in json.loads((out / "report.json").read_text())["notes"])
    capsys.readouterr()
    assert main(["compress", str(trained_run), "--id-coverage", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "expected auto or a fraction in (0, 1]" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "nope"], "Unknown model 'nope'"),
    (["train", "--data", "foo:bar"], "unknown data source 'foo'"),
    (["train", "--data", "criteo:/does/not/exist.txt"], "/does/not/exist.txt"),
    (["eval", "/no/such/run", "--data", "synthetic"], "/no/such/run: no such file or directory"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_config_option_is_named(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model: deepfm\nepochz: 3\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown option(s) ['epochz']" in capsys.readouterr().err


def test_malformed_criteo_file_names_file_and_line(tmp_path, capsys):
    good = "\t".join(["1"] + ["3"] * 13 + ["68fd1e64"] * 26)
    path = tmp_path / "bad.txt"
    path.write_text(good + "\n" + good + "\nx\t1\t2\n")
    out = tmp_path / "run"
    assert main(["train", "--data", f"criteo:{path}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.txt:3" in err and not out.exists()


@pytest.mark.skipif(not (SHARED / "criteo").is_dir(), reason="shared Criteo sample not present")
def test_train_and_eval_on_the_real_criteo_sample(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("epochs: 2", "epochs: 1"))
    run = tmp_path / "run"
    train_file = SHARED / "criteo" / "wide-resdnn" / "train.csv.gz"
    assert main(["train", "--config", str(config), "--data", f"criteo:{train_file}", "--out", str(run), "--quiet"]) == 0
    assert (run / "preprocessor.json").exists()
    dev = SHARED / "criteo" / "wide-resdnn" / "dev.csv"
    assert main(["eval", str(run), "--data", f"criteo:{dev}"]) == 0
    assert "409" in capsys.readouterr().out


def test_export_litert_saved_model_onnx_and_bench(trained_run, tmp_path, capsys):
    from tfafm.export import litert_ops
    from tfafm.export.litert_file import builtin_op_names

    tflite = tmp_path / "model.tflite"
    assert main(["export", str(trained_run), "--format", "litert", "--quantization", "dynamic", "--out", str(tflite)]) == 0
    assert set(litert_ops(str(tflite))) <= builtin_op_names()
    saved = tmp_path / "saved"
    assert main(["export", str(trained_run), "--format", "saved_model", "--out", str(saved)]) == 0
    assert (saved / "saved_model.pb").exists()
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", str(trained_run), "--out", str(onnx_file)]) == 0  # the format --out names
    assert b"TFL3" not in onnx_file.read_bytes()[:8]  # not a LiteRT flatbuffer under that name
    capsys.readouterr()

    schema = str(trained_run / "schema.json")
    assert main(["bench", str(tflite), str(onnx_file), "--schema", schema, "--batch-sizes", "1", "4",
                 "--threads", "1", "--iterations", "20", "--max-seconds", "1"]) == 0
    table = capsys.readouterr().out
    assert "model.tflite" in table and "model.onnx" in table and "p50" in table
    assert main(["bench", str(tflite), "--schema", schema, "--batch-sizes", "2", "--threads", "1",
                 "--iterations", "5", "--max-seconds", "1", "--format", "json", "--quiet"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "model.tflite" and row["batch_size"] == 2 and row["size_ratio"] == 1.0


def test_export_default_out_is_beside_the_run_and_never_silently_replaced(trained_run, capsys):
    target = trained_run.parent / f"{trained_run.name}-dynamic.tflite"
    assert main(["export", str(trained_run), "--quantization", "dynamic", "--quiet"]) == 0
    first = target.read_bytes()
    assert main(["export", str(trained_run), "--quantization", "dynamic", "--quiet"]) == 2
    assert "a file exists there (--overwrite replaces it)" in capsys.readouterr().err
    assert target.read_bytes() == first
    target.unlink()


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal(capsys):
    from tfafm.progress import progress_bar

    with progress_bar("calibrating", 3, interval=0.0) as advance:
        for _ in range(3):
            advance()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "calibrating: 1/3 (33%)", "calibrating: 2/3 (67%)", "calibrating: 3/3 (100%)", "calibrating: 3/3 (100%)"]
    assert lines[-1].endswith(", done")
    with progress_bar("calibrating", 3) as advance:  # shorter than the 10 s interval: silent
        advance(3)
    assert capsys.readouterr().err == ""


def test_export_rejects_quantize_for_onnx(trained_run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(trained_run), "--format", "onnx", "--quantization", "int8", "--out", str(out)]) == 2
    assert "--quantization applies to --format litert only" in capsys.readouterr().err
    assert not out.exists()


def test_every_command_and_option_has_help_text():
    import argparse

    from tfafm_cli import build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, parser in commands.choices.items():
        assert all(action.help for action in parser._actions), name
        text = parser.format_help()
        assert "``" not in text and "--quiet" in text, name
        assert ("--overwrite" in text) == (name in ("train", "compress", "export", "demo", "import",
                                                   "prepare")), name


def test_export_checks_the_file_against_the_runs_own_model_not_its_fused_form(trained_run, tmp_path, capsys,
                                                                            monkeypatch):
    import tfafm.compression.fusion as fusion

    out = tmp_path / "small"
    assert main(["compress", str(trained_run), "--ratio", "1.5", "--id-coverage", "1", "--out", str(out),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(out), "--out", str(tmp_path / "good.tflite")]) == 0
    assert "fusion: " in capsys.readouterr().err  # what fusion did is shown

    fuse = fusion.fuse

    def broken_fuse(model, *args):  # a fusion defect: the prediction's logit shifted by 0.5
        fused, report = fuse(model, *args)
        layer = fused.get_layer("deep_logit")
        layer.bias.assign(layer.bias.numpy() + 0.5)
        return fused, report

    monkeypatch.setattr(fusion, "fuse", broken_fuse)
    bad = tmp_path / "bad.tflite"
    assert main(["export", str(out), "--out", str(bad)]) != 0
    err = capsys.readouterr().err  # refused before conversion, the fused form checked against the run's model
    assert "The fused form of model" in err and "disagrees with it" in err and not bad.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tflite", "small"]


def test_bench_feeds_each_model_its_own_inputs_and_finds_an_exports_run(trained_run, tmp_path, monkeypatch, capsys):
    """`tfafm bench RUN.onnx` (tfafm export's default path, beside RUN/) said "No schema.json next to" it; and
    every model was fed the first .tflite's inputs, a run directory refused as lacking them."""
    import shutil

    import tfafm.export.bench as bench

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["export", str(run), "--format", "onnx", "--quiet"]) == 0  # writes run.onnx beside run/
    assert (tmp_path / "run.onnx").is_file()
    fed = []
    measured = bench.benchmark

    def recording(paths, schema, **options):
        fed.append((os.path.basename(os.fspath(paths[0])), schema))
        return measured(paths, schema, **options)

    monkeypatch.setattr(bench, "benchmark", recording)
    other = tmp_path / "other.tflite"  # a tfafm file describing its own inputs
    assert main(["export", str(run), "--format", "litert", "--out", str(other), "--quiet"]) == 0
    args = ["--batch-sizes", "1", "--threads", "1", "--iterations", "2", "--quiet"]
    capsys.readouterr()
    assert main(["bench", str(run), str(other), str(tmp_path / "run.onnx"), *args, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [name for name, _ in fed] == ["run", "other.tflite", "run.onnx"]
    # A run directory weighs its model.keras, not its reports and preprocessing files.
    assert rows[0]["size_bytes"] == os.path.getsize(run / "model.keras")
    from tfafm.export.litert_file import read_interface

    assert fed[1][1] == read_interface(str(other))  # the .tflite's own description, not the run's schema
    assert fed[0][1].__class__.__name__ == "Schema" and fed[2][1].__class__.__name__ == "Schema"


def test_a_trained_run_holds_no_optimizer_state(trained_run):
    """model.keras of `tfafm train` held Adam's two slots per weight (3x the weights' bytes)."""
    import io
    import zipfile

    import h5py
    import keras

    model = keras.models.load_model(trained_run / "model.keras")
    with zipfile.ZipFile(trained_run / "model.keras") as archive:
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    assert not model.compiled and "optimizer" not in weights  # Adam's slots: 2 values per weight


def test_a_warning_of_tfafm_is_one_line_naming_the_command(monkeypatch, capsys):
    """Under --quiet a tfafm warning (few calibration rows) came with its source file, line number and the code
    line that raised it; other libraries' warnings are left to Python's (or pytest's) handling as before."""
    import argparse
    import warnings

    import tfafm.cli as cli

    import tfafm.compression.api as api

    def warns(args, output):  # one of tfafm's warnings (as compress gives it), and one of another library's
        warnings.warn_explicit("Layer 'd1': 297 calibration rows\nfor a 400-wide output", UserWarning,
                               api.__file__, 320)
        warnings.warn_explicit("a deprecation deep inside a dependency", DeprecationWarning, "/elsewhere/lib.py", 1)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "eval", warns)
    previous = warnings.showwarning
    assert cli.run(argparse.Namespace(command="eval", quiet=True)) == 0
    assert capsys.readouterr().err.splitlines() == ["tfafm eval: warning: Layer 'd1': 297 calibration rows for a "
                                                    "400-wide output"]
    assert warnings.showwarning is previous
