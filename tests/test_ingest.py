"""The columnar ingestion path: agreement with the exact parser, errors, counts, caches, Parquet."""

from __future__ import annotations

import collections
import gzip
import json
import os

import numpy as np
import pytest

from tfafm.data import DataFormatError, Preprocessor, ValueCounts, load_data
from tfafm.data.columnar import Columns
from tfafm.data.formats import AVAZU, CRITEO
from tfafm.data.prepare import count_data_lines, count_file, prepare_spec, read_columns
from tfafm.data.readers import RowReader
from tfafm.data.specs import file_source
from tfafm.errors import UserError

from test_data_readers import AVAZU_ROW, CRITEO_ROW, sample, write

pytestmark = pytest.mark.slow

AVAZU_HEADER = ["id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
                "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
                "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]


def criteo_lines(rows: int, seed: int = 0) -> list[str]:
    """Varied Criteo rows: random labels, counts (some missing) and ids from small vocabularies."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        dense = ["" if rng.random() < 0.2 else str(int(rng.integers(-2, 500))) for _ in range(13)]
        sparse = ["" if rng.random() < 0.1 else f"{int(rng.zipf(1.3)) % 97:08x}" for _ in range(26)]
        lines.append("\t".join([str(int(rng.random() < 0.3))] + dense + sparse))
    return lines


def exact_counts(data_format, paths, every=10, skip_bad_lines=False):
    counters = [collections.Counter() for _ in data_format.sparse_names]
    for index, row in RowReader(data_format, paths, skip_bad_lines=skip_bad_lines).indexed():
        if index % every:
            for counter, value in zip(counters, row.sparse):
                counter[value] += 1
    return counters


def columnar_counts(source, every=10, skip_bad_lines=False, block_bytes=64 << 20) -> ValueCounts:
    counts, index = ValueCounts(source.format.sparse_names), 0
    for columns in read_columns(source, skip_bad_lines, block_bytes):
        counts.add(columns, (index + columns.positions) % every != 0)
        index += columns.data_lines
    return counts


@pytest.mark.parametrize("prefix, relative", [
    ("criteo", "criteo/wide-resdnn/train.csv.gz"),
    ("criteo", "criteo/kaggle-2014-criteo/tr.rx.csv.gz"),
    ("avazu", "avazu/wide-resdnn/train.csv.gz"),
])
def test_columnar_parser_agrees_with_the_exact_one(prefix, relative):
    path = sample(relative)
    source = file_source(prefix, path, f"{prefix}:{path}")
    rows = list(RowReader(source.format, [path]))
    columns = Columns.concat(list(read_columns(source, block_bytes=1 << 18)))  # several blocks
    assert columns.rows == len(rows) and columns.data_lines == len(rows)
    np.testing.assert_array_equal(columns.labels, [r.label for r in rows])
    np.testing.assert_array_equal(columns.dense, np.array([r.dense for r in rows]).reshape(len(rows), -1))
    for j, array in enumerate(columns.sparse):
        assert array.to_pylist() == [r.sparse[j] for r in rows]
    counts = columnar_counts(source)
    for name, expected in zip(source.format.sparse_names, exact_counts(source.format, [path])):
        assert counts.as_dict(name) == dict(expected)


def test_bad_line_deep_in_a_block_is_located_exactly(tmp_path):
    lines = criteo_lines(3000)
    lines[2345] = "\t".join(CRITEO_ROW[:5] + ["2.5"] + CRITEO_ROW[6:])
    path = write(tmp_path / "big.tsv", lines)
    with pytest.raises(DataFormatError, match=r"big\.tsv:2346: column I5: expected an integer, got '2\.5'"):
        load_data(f"criteo:{path}")
    bundle = load_data(f"criteo:{path}", skip_bad_lines=True)
    assert (bundle.train_rows, bundle.validation_rows, bundle.bad_lines) == (2699, 300, 1)
    source = file_source("criteo", path, path)
    counts = columnar_counts(source, skip_bad_lines=True, block_bytes=1 << 16)
    for name, expected in zip(CRITEO.sparse_names, exact_counts(CRITEO, [path], skip_bad_lines=True)):
        assert counts.as_dict(name) == dict(expected)


@pytest.mark.parametrize("value, message", [
    ("1" * 400, r"column I3: integer out of range, got '1{24}'\.\.\. \(400 characters\)"),
    ("nan", r"column I3: expected an integer, got 'nan'"),
    ("inf", r"column I3: expected an integer, got 'inf'"),
])
def test_non_finite_and_huge_counts_are_one_line_errors(tmp_path, value, message):
    path = write(tmp_path / "n.tsv", criteo_lines(30) + ["\t".join(CRITEO_ROW[:3] + [value] + CRITEO_ROW[4:])])
    with pytest.raises(DataFormatError, match=r"n\.tsv:31: " + message) as caught:
        load_data(f"criteo:{path}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("skip", [False, True])
def test_truncated_gzip_is_a_one_line_error(tmp_path, skip):
    whole = gzip.compress("".join(line + "\n" for line in criteo_lines(2000)).encode())
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.tsv\.gz: gzip data truncated or corrupt after line \d+"):
        load_data(f"criteo:{path}", skip_bad_lines=skip)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    criteo = tmp_path / "bom.tsv"
    criteo.write_bytes(b"\xef\xbb\xbf" + "".join(line + "\n" for line in criteo_lines(20)).encode())
    assert load_data(f"criteo:{criteo}").train_rows == 18
    avazu = tmp_path / "bom.csv"
    avazu.write_bytes(b"\xef\xbb\xbf" + "\n".join([",".join(AVAZU_HEADER)] + [",".join(AVAZU_ROW)] * 10).encode())
    (row, *_) = RowReader(AVAZU, [str(avazu)])
    assert row.sparse[:3] == ("0", "1", "1005")
    assert load_data(f"avazu:{avazu}").validation_rows == 1


def test_per_file_counts_merge_into_the_one_pass_counts(tmp_path):
    lines = criteo_lines(1500, seed=1)
    paths = [write(tmp_path / f"part{k}.tsv", lines[k * 500:(k + 1) * 500] + [""] * k) for k in range(3)]
    data_format = CRITEO
    merged, first_index = ValueCounts(data_format.sparse_names), 0
    for path in paths:
        part = count_file(path, data_format, first_index=first_index)
        merged.merge(part)
        first_index += count_data_lines(path, data_format)
    one_pass = columnar_counts(file_source("criteo", ",".join(paths), "x"))
    assert merged.rows == one_pass.rows == 1350
    for name in data_format.sparse_names:
        assert merged.as_dict(name) == one_pass.as_dict(name)
    merged.save(str(tmp_path / "counts.parquet"))
    loaded = ValueCounts.load(str(tmp_path / "counts.parquet"))
    fitted = load_data(f"criteo:{','.join(paths)}").preprocessor
    assert Preprocessor.from_counts(data_format, loaded).digest == fitted.digest


def test_max_vocabulary_keeps_the_most_frequent_ties_by_value(tmp_path):
    training = ["c", "b", "c", "a", "c", "b", "a", "d"]  # c: 3, then a and b: 2 (tie), d: 1
    values = [v for value in training for v in ("x", value)]  # every other line is validation
    path = write(tmp_path / "v.tsv", ["\t".join(["0"] + [""] * 13 + [v] + [""] * 25) for v in values])
    bundle = load_data(f"criteo:{path}", validation_fraction=0.5, max_vocabulary=2)
    assert bundle.preprocessor.vocabularies["C1"] == ["c", "a"]
    assert load_data(f"criteo:{path}", validation_fraction=0.5).preprocessor.vocabularies["C1"] == ["c", "a", "b", "d"]
    assert bundle.preprocessor.max_vocabulary == 2


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path):
    path = tmp_path / "c.tsv"
    write(path, criteo_lines(40))
    root = tmp_path / "caches"
    first = load_data(f"criteo:{path}", cache_dir=str(root))
    again = load_data(f"criteo:{path}", cache_dir=str(root))
    assert again.cache.path == first.cache.path and len(os.listdir(root)) == 1
    other = load_data(f"criteo:{path}", cache_dir=str(root), min_count=2)
    assert other.cache.path != first.cache.path
    with open(path, "a") as f:
        f.write(criteo_lines(10, seed=5)[0] + "\n")
    changed = load_data(f"criteo:{path}", cache_dir=str(root))
    assert changed.train_rows + changed.validation_rows == 41
    assert load_data(f"cache:{first.cache.path}").validation_rows == 5
    with open(path, "a") as f:
        f.write(criteo_lines(10, seed=6)[0] + "\n")
    with pytest.raises(UserError, match=r"out of date \(.*c\.tsv changed"):
        load_data(f"cache:{first.cache.path}", rebuild_stale=False)
    assert load_data(f"cache:{first.cache.path}").train_rows == 37


def test_prepare_refuses_foreign_directories_and_checks_the_preprocessor(tmp_path):
    path = write(tmp_path / "c.tsv", criteo_lines(40))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="refusing to write .*mine: it is a directory that tfafm did not write"):
        prepare_spec(f"criteo:{path}", str(tmp_path / "mine"), progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    cache, _ = prepare_spec(f"criteo:{path}", str(tmp_path / "cache"), progress=False)
    cache.preprocessor.save(str(tmp_path / "pre.json"))
    evaluated = load_data(f"criteo:{path}", preprocessor=cache.preprocessor)
    assert evaluated.train is None and evaluated.validation_rows == 40
    other = load_data(f"criteo:{path}", min_count=3).preprocessor
    with pytest.raises(UserError, match="another preprocessor"):
        load_data(f"cache:{tmp_path / 'cache'}", preprocessor=other)
    with pytest.raises(UserError, match="encodes criteo data, not avazu"):
        prepare_spec(f"avazu:{path}", str(tmp_path / "c2"), preprocessor=Preprocessor.load(str(tmp_path / "pre.json")),
                     progress=False)


def test_parquet_attribution_sample():
    train = sample("criteo_attribution/small_train.parquet")
    valid = sample("criteo_attribution/small_valid.parquet")
    roles = "?categorical=cat1,cat4,cat6,cat8,cat9"
    bundle = load_data(f"parquet:{train}{roles}", batch_size=4096)
    assert bundle.train_rows + bundle.validation_rows == 115_382
    assert [f.name for f in bundle.schema.sparse] == ["cat1", "cat4", "cat6", "cat8", "cat9"]
    assert all(9 <= f.vocabulary_size - 1 <= 30 for f in bundle.schema.sparse)
    features, labels = next(iter(bundle.validation))
    assert float(np.mean(labels)) == pytest.approx(0.361, abs=0.03)
    held_out = load_data(f"parquet:{valid}{roles}", preprocessor=bundle.preprocessor)
    assert held_out.validation_rows == 49_770
    restored = Preprocessor.from_dict(json.loads(json.dumps(bundle.preprocessor.to_dict())))
    assert restored.format == bundle.preprocessor.format and restored.digest == bundle.preprocessor.digest


def test_parquet_bad_label_names_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"click": [0, 1, 2, 0], "site": ["a", "b", "c", None], "price": [1.5, 2.0, None, 3.0]})
    pq.write_table(table, tmp_path / "t.parquet")
    spec = f"parquet:{tmp_path / 't.parquet'}?dense=price"
    with pytest.raises(DataFormatError, match=r"t\.parquet:3: column click: expected a 0/1 label, got '2'"):
        load_data(spec)
    bundle = load_data(spec, skip_bad_lines=True, validation_fraction=0.5)
    assert (bundle.train_rows, bundle.validation_rows, bundle.bad_lines) == (2, 1, 1)
    assert bundle.preprocessor.vocabularies["site"] == ["b"]


def test_preprocessor_json_keeps_odd_values_and_reads_version_1(tmp_path):
    vocabularies = {name: [] for name in CRITEO.sparse_names}
    vocabularies["C1"] = ["a\nb", "c"]
    vocabularies["C2"] = ["x", "y\u00e9"]
    pre = Preprocessor("criteo", vocabularies)
    pre.save(str(tmp_path / "p.json"))
    loaded = Preprocessor.load(str(tmp_path / "p.json"))
    assert loaded.vocabularies == pre.vocabularies and loaded.digest == pre.digest
    old = {"version": 1, "format": "criteo", "min_count": 2, "vocabularies": vocabularies}
    assert Preprocessor.from_dict(old).vocabularies == vocabularies


def test_prepare_then_train_from_the_cache_on_the_command_line(tmp_path):
    from tfafm_cli import main

    path = sample("criteo/deepctr/criteo_sample.txt")
    assert main(["prepare", "--data", f"criteo:{path}", "--out", str(tmp_path / "cache"), "--quiet"]) == 0
    assert main(["train", "--data", f"cache:{tmp_path / 'cache'}", "--model", "deepfm", "--epochs", "1",
                 "--embedding-dim", "4", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["data"] == f"cache:{tmp_path / 'cache'}" and info["metrics"]["rows"] == 20
