"""Readers and ``load_data`` on the real Criteo / Avazu samples and on malformed files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from tfafm.data import DataFormatError, Preprocessor, load_data
from tfafm.data.formats import AVAZU, CRITEO
from tfafm.data.readers import RowReader, resolve_paths

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SAMPLES = [
    # (format, path under DATA, rows, positive rate)
    (CRITEO, "criteo/wide-resdnn/train.csv.gz", 7200, 0.215),
    (CRITEO, "criteo/kaggle-2014-criteo/tr.rx.csv.gz", 1999, 0.224),
    (CRITEO, "criteo/deepctr/criteo_sample.txt", 200, 0.245),
    (AVAZU, "avazu/wide-resdnn/train.csv.gz", 8087, 0.173),
    (AVAZU, "avazu/wide-resdnn/dev.csv", 480, 0.179),
    (AVAZU, "avazu/deepctr/avazu_sample.txt", 100, 0.20),
]

CRITEO_ROW = ["1", "1", "-1", "5", "", "1382", "4", "15", "2", "181", "1", "2", "", "2"] + [
    f"{i:08x}" for i in range(26)
]
AVAZU_ROW = ["123", "0", "14102100", "1005", "0", "1fbe01fe"] + ["x"] * 18


def sample(relative: str) -> str:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"real data sample not available: {path}")
    return str(path)


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def tsv(rows: list[list[str]]) -> list[str]:
    return ["\t".join(row) for row in rows]


@pytest.mark.parametrize("data_format, relative, rows, rate", SAMPLES, ids=[s[1] for s in SAMPLES])
def test_real_samples_parse(data_format, relative, rows, rate):
    parsed = list(RowReader(data_format, [sample(relative)]))
    assert len(parsed) == rows
    assert np.mean([r.label for r in parsed]) == pytest.approx(rate, abs=0.001)
    assert {len(r.dense) for r in parsed} == {len(data_format.dense)}
    assert {len(r.sparse) for r in parsed} == {len(data_format.sparse_names)}


def test_criteo_values_written_as_floats_and_missing():
    first = next(iter(RowReader(CRITEO, [sample("criteo/deepctr/criteo_sample.txt")])))
    assert np.isnan(first.dense[0])
    assert first.dense[1:3] == (3.0, 260.0)
    assert first.sparse[0] == "05db9164"
    assert first.sparse[-1] == ""


def test_avazu_hour_becomes_hour_of_day_and_weekday(tmp_path):
    rows = [AVAZU_ROW, AVAZU_ROW[:2] + ["14102623"] + AVAZU_ROW[3:]]  # Tue 00h, Sun 23h
    parsed = list(RowReader(AVAZU, [write(tmp_path / "a.csv", [",".join(r) for r in rows])]))
    assert [r.sparse[:3] for r in parsed] == [("0", "1", "1005"), ("23", "6", "1005")]


def test_load_criteo_sample():
    bundle = load_data(f"criteo:{sample('criteo/wide-resdnn/train.csv.gz')}", batch_size=1000)
    assert (bundle.train_rows, bundle.validation_rows, bundle.bad_lines) == (6480, 720, 0)
    assert len(bundle.schema.dense) == 13 and len(bundle.schema.sparse) == 26
    sizes = [f.vocabulary_size for f in bundle.schema.sparse]
    assert all(1 < v <= bundle.train_rows + 1 for v in sizes)
    batches = list(bundle.validation)
    assert [len(labels) for _, labels in batches] == [720]
    features, labels = batches[0]
    assert features["I1"].dtype.name == "float32" and features["C1"].dtype.name == "int32"
    assert features["I1"].shape == (720, 1) and labels.shape == (720, 1)
    for f in bundle.schema.sparse:
        assert 0 <= int(np.min(features[f.name])) and int(np.max(features[f.name])) < f.vocabulary_size
    train_labels = np.concatenate([labels for _, labels in bundle.train.as_numpy_iterator()])
    assert train_labels.shape == (6480, 1)


def test_load_avazu_directory_and_file_list():
    directory = Path(sample("avazu/wide-resdnn"))
    bundle = load_data(f"avazu:{directory}", validation_fraction=0.2)
    assert bundle.train_rows + bundle.validation_rows == 8087 + 480 + 432
    assert len(bundle.schema.dense) == 0 and len(bundle.schema.sparse) == 23
    assert bundle.schema.names[:2] == ("hour_of_day", "weekday")
    listed = load_data(f"avazu:{directory / 'dev.csv'},{directory / 'test.csv'}")
    assert listed.train_rows + listed.validation_rows == 480 + 432


def test_resolve_paths_sorts_directory_and_skips_non_data(tmp_path):
    for name in ("b.csv", "a.txt.gz", "notes.md", ".hidden.csv"):
        (tmp_path / name).write_text("x")
    assert [Path(p).name for p in resolve_paths(str(tmp_path))] == ["a.txt.gz", "b.csv"]


def test_a_file_named_twice_is_read_once(tmp_path):
    """``p1.csv,dir/`` or overlapping globs named p1 twice: its rows were read twice (4,000 rows of 3,000,
    a different AUC, no word)."""
    from tfafm.data.keyed import resolve

    for name in ("p1.csv", "p2.csv"):
        (tmp_path / name).write_text("x")
    first, second = str(tmp_path / "p1.csv"), str(tmp_path / "p2.csv")
    assert resolve(f"{first},{tmp_path}/*.csv") == [first, second]
    assert resolve(f"{tmp_path},{first}") == [first, second]
    assert resolve_paths(f"{first},{tmp_path}") == [first, second]


def test_gzip_and_header_variants(tmp_path):
    header = ["Id", "Label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    with gzip.open(tmp_path / "k.csv.gz", "wt") as f:
        f.write(",".join(header) + "\n" + ",".join(["7"] + CRITEO_ROW) + "\n")
    (row,) = RowReader(CRITEO, [str(tmp_path / "k.csv.gz")])
    assert row.label == 1.0 and row.dense[:3] == (1.0, -1.0, 5.0) and row.sparse[0] == "00000000"


def test_evaluation_with_given_preprocessor(tmp_path):
    path = write(tmp_path / "t.tsv", tsv([CRITEO_ROW] * 25))
    fitted = load_data(f"criteo:{path}").preprocessor
    bundle = load_data(f"criteo:{path}", preprocessor=fitted, batch_size=10)
    assert bundle.train is None and bundle.validation_rows == 25
    assert [len(labels) for _, labels in bundle.validation] == [10, 10, 5]
    with pytest.raises(ValueError, match="encodes criteo data, not avazu"):
        load_data(f"avazu:{path}", preprocessor=fitted)


@pytest.mark.parametrize(
    "row, message",
    [
        (CRITEO_ROW[:12], r"bad\.tsv:3: expected 40 columns \(label, I1\.\.I13, C1\.\.C26\), got 12"),
        (["yes"] + CRITEO_ROW[1:], r"bad\.tsv:3: column label: expected a 0/1 label, got 'yes'"),
        (["2"] + CRITEO_ROW[1:], r"bad\.tsv:3: column label: expected a 0/1 label, got '2'"),
        (CRITEO_ROW[:5] + ["abc"] + CRITEO_ROW[6:], r"bad\.tsv:3: column I5: expected an integer, got 'abc'"),
        (CRITEO_ROW[:5] + ["2.5"] + CRITEO_ROW[6:], r"bad\.tsv:3: column I5: expected an integer, got '2\.5'"),
    ],
    ids=["columns", "label-text", "label-value", "integer", "fraction"],
)
def test_malformed_line_names_file_line_and_column(tmp_path, row, message):
    path = write(tmp_path / "bad.tsv", tsv([CRITEO_ROW, CRITEO_ROW, row] + [CRITEO_ROW] * 20))
    with pytest.raises(DataFormatError, match=message) as caught:
        load_data(f"criteo:{path}")
    assert "\n" not in str(caught.value) and caught.value.line == 3
    with pytest.raises(DataFormatError, match=message):
        list(RowReader(CRITEO, [path]))


def test_malformed_validation_row_fails_before_training(tmp_path):
    path = write(tmp_path / "bad.tsv", tsv([CRITEO_ROW[:3]] + [CRITEO_ROW] * 20))
    with pytest.raises(DataFormatError, match=r"bad\.tsv:1: expected 40 columns"):
        load_data(f"criteo:{path}")


def test_avazu_bad_hour(tmp_path):
    path = write(tmp_path / "a.csv", [",".join(AVAZU_ROW[:2] + ["14023100"] + AVAZU_ROW[3:])])
    with pytest.raises(DataFormatError, match=r"a\.csv:1: column hour: expected a YYMMDDHH hour"):
        list(RowReader(AVAZU, [path]))


def test_skip_bad_lines_counts_them(tmp_path):
    lines = tsv([CRITEO_ROW] * 30)
    lines[4], lines[11], lines[17] = "garbage", "\t".join(["x"] + CRITEO_ROW[1:]), "1\t2"
    path = write(tmp_path / "some-bad.tsv", lines)
    reader = RowReader(CRITEO, [path], skip_bad_lines=True)
    assert len(list(reader)) == 27 and reader.bad_lines == 3
    bundle = load_data(f"criteo:{path}", skip_bad_lines=True)
    assert bundle.bad_lines == 3 and bundle.train_rows + bundle.validation_rows == 27
    assert "3 bad lines skipped" in bundle.description


@pytest.mark.parametrize("lines", [[], [""], [",".join(["label"] + [f"I{i}" for i in range(1, 14)]
                                                         + [f"C{i}" for i in range(1, 27)])]],
                         ids=["empty", "blank", "header-only"])
def test_file_without_data_rows(tmp_path, lines):
    path = write(tmp_path / "empty.csv", lines)
    with pytest.raises(DataFormatError, match=r"empty\.csv: file has no data rows"):
        load_data(f"criteo:{path}")


def test_missing_paths_and_unknown_prefix(tmp_path):
    missing = tmp_path / "nope" / "train.gz"
    with pytest.raises(FileNotFoundError, match=f"Data file not found: {missing}"):
        load_data(f"avazu:{missing}")
    with pytest.raises(FileNotFoundError, match="not found"):
        RowReader(CRITEO, [str(missing)])
    with pytest.raises(ValueError, match=r"Unknown data source 'movielens'.*synthetic\[:ROWS\], criteo:PATH, avazu:PATH"):
        load_data("movielens:/x")
    with pytest.raises(ValueError, match="needs a path"):
        load_data("criteo:")
    with pytest.raises(ValueError, match="validation_fraction"):
        load_data("criteo:/x", validation_fraction=0.0)


def test_preprocessor_persists_with_a_real_sample(tmp_path):
    bundle = load_data(f"criteo:{sample('criteo/deepctr/criteo_sample.txt')}")
    bundle.preprocessor.save(str(tmp_path / "pre.json"))
    loaded = Preprocessor.load(str(tmp_path / "pre.json"))
    assert loaded.schema(8) == bundle.preprocessor.schema(8)
