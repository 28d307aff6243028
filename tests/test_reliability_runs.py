"""Runs that prove themselves: a run whose files disagree, or whose model.keras is damaged, is one line, exit 2.

Each case copies a tiny run (synthetic data, untrained DeepFM), damages one file and runs ``tfafm compress``
on it in-process: exit code 2, one line naming the file, no traceback, nothing written, the run unchanged.
Before these checks a schema.json edited to disagree with model.keras compressed with exit 0 and copied the
wrong schema into the new run.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import pytest

from test_bad_inputs import assert_refused, registry

Damage = Callable[[Path, Path], str]  # (the copied run, the fixture root) -> regex of the error line
CASES: dict[str, Damage] = {}
case = registry(CASES)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A run on synthetic data and a criteo run (with a preprocessor), both untrained and tiny."""
    import tfafm
    from tfafm.config import TrainConfig
    from tfafm.data import load_data
    from tfafm.runs import save_run

    root = tmp_path_factory.mktemp("runs")
    config = TrainConfig(hyperparams={"hidden_units": [8]}, embedding_dim=4, batch_size=128,
                         synthetic_rows=500, synthetic_max_vocabulary=100)
    (root / "c.tsv").write_text("".join("\t".join([str(i % 2)] + ["3"] * 13 + [f"{i % 5:08x}"] * 26) + "\n"
                                        for i in range(40)))
    for name, spec in (("run", "synthetic"), ("criteo_run", f"criteo:{root / 'c.tsv'}")):
        bundle = load_data(spec, **config.data_options())
        model = tfafm.models.build("deepfm", bundle.schema, **config.hyperparams)
        save_run(str(root / name), model, bundle.schema, bundle.preprocessor,
                 {"kind": "trained", "data": spec, "config": config.to_dict()})
    return root


def edit_schema(run: Path, edit: Callable[[list], None]) -> None:
    schema = json.loads((run / "schema.json").read_text())
    edit(schema["features"])
    (run / "schema.json").write_text(json.dumps(schema))


def feature(features: list, name: str) -> dict:
    return next(f for f in features if f["name"] == name)


def rewrite_member(archive_path: Path, member: str, content: bytes | None) -> None:
    """Rewrites ``archive_path`` with ``member`` replaced by ``content`` (removed when None): still a valid zip."""
    with zipfile.ZipFile(archive_path) as archive:
        members = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    if content is None:
        del members[member]
    else:
        members[member] = content
    with zipfile.ZipFile(archive_path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@case("schema with changed vocabulary sizes")
def _(run, root):
    edit_schema(run, lambda features: feature(features, "C1").update(vocabulary_size=7))
    return (r"run/schema\.json does not match run/model\.keras: feature C1 has vocabulary_size 7 in the schema, "
            r"but layer 'sparse_ids' of the model was built for \d+ ids")


@case("schema with a renamed feature")
def _(run, root):
    edit_schema(run, lambda features: feature(features, "C1").update(name="C1x"))
    return (r"run/schema\.json does not match run/model\.keras: the model takes input\(s\) the schema lacks: C1; "
            r"the schema has feature\(s\) the model lacks: C1x")


@case("schema with a dropped feature")
def _(run, root):
    edit_schema(run, lambda features: features.remove(feature(features, "C2")))
    return r"run/schema\.json does not match run/model\.keras: the model takes input\(s\) the schema lacks: C2\."


@case("schema with a dense feature made sparse")
def _(run, root):
    edit_schema(run, lambda features: feature(features, "I1").update(type="sparse", vocabulary_size=5))
    return r"feature I1 is sparse in the schema but the model's input is float32"


@case("schema whose features are not objects")
def _(run, root):
    (run / "schema.json").write_text(json.dumps({"features": ["C1", "C2"]}))
    return r"run/schema\.json: malformed \(ValueError: dictionary update sequence"


@case("schema with an unknown feature field")
def _(run, root):
    edit_schema(run, lambda features: feature(features, "C1").update(size=3))
    return r"run/schema\.json: malformed \(TypeError: .*unexpected keyword argument 'size'"


@case("model.keras whose config.json is not JSON")
def _(run, root):
    rewrite_member(run / "model.keras", "config.json", b"{not json")
    return r"run/model\.keras: damaged Keras model file \(JSONDecodeError: "


@case("model.keras whose config.json is an empty object")
def _(run, root):
    rewrite_member(run / "model.keras", "config.json", b"{}")
    return r"run/model\.keras: damaged Keras model file \("


@case("model.keras with garbage weights")
def _(run, root):
    rewrite_member(run / "model.keras", "model.weights.h5", b"garbage" * 100)
    return r"run/model\.keras: damaged Keras model file \("


@case("model.keras without its weights")
def _(run, root):
    rewrite_member(run / "model.keras", "model.weights.h5", None)
    return r"run/model\.keras: damaged Keras model file \("


@case("model.keras of another run")
def _(run, root):
    shutil.copy(root / "criteo_run" / "model.keras", run / "model.keras")
    return r"run/schema\.json does not match run/model\.keras: feature C1 has vocabulary_size"


@case("preprocessor.json of another data set")
def _(run, root):
    shutil.copy(root / "criteo_run" / "preprocessor.json", run / "preprocessor.json")
    return r"run/preprocessor\.json does not match run/schema\.json: the preprocessor encodes other features"


@case("preprocessor.json with a vocabulary of the wrong size")
def _(run, root):
    shutil.rmtree(run)
    shutil.copytree(root / "criteo_run", run)
    config = json.loads((run / "preprocessor.json").read_text())
    config["vocabularies"]["C3"] = {"size": 1, "joined": "a"}
    (run / "preprocessor.json").write_text(json.dumps(config))
    return r"run/preprocessor\.json does not match run/schema\.json"


@pytest.mark.parametrize("name", list(CASES))
def test_damaged_run_is_one_line_exit_2_and_changes_nothing(name, runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = Path(shutil.copytree(runs / "run", tmp_path / "run"))
    expected = CASES[name](run, runs)
    assert_refused(["compress", "run", "--out", "small", "--quiet"], expected, capsys, tmp_path, runs)


def test_intact_runs_load(runs):
    from tfafm.runs import load_run

    for name in ("run", "criteo_run"):
        run = load_run(str(runs / name))
        assert set(run.schema.names) == {tensor.name for tensor in run.model.inputs}
