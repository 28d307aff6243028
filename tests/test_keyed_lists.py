"""Columns of a user's own data (tfafm.data.keyed): lists read whole, padded only where asked; nothing missing
(a null, a NaN, a label absent from a record) ever filled in."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tfafm.data.errors import DataFormatError
from tfafm.data.keyed import InputColumn, _numpy_batches, keyed_data


def _read(spec: str, column: InputColumn) -> np.ndarray:
    data = keyed_data(spec, [column], ["click"])
    return np.concatenate([features[column.name] for features, _ in _numpy_batches(data)])


def _parquet(tmp_path, values, arrow_type) -> str:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"seq": pa.array(values, pa.list_(arrow_type)), "click": [0, 1] * (len(values) // 2)}),
                   path)
    return str(path)


def test_lists_of_the_inputs_length_are_read_as_they_are_and_others_only_with_pad(tmp_path):
    ids = InputColumn("seq", "int64", (3,), high=10)
    path = _parquet(tmp_path, [[1, 2, 3], [4, 5], [6, 7, 8, 9], None], pa.int64())
    with pytest.raises(DataFormatError, match=r"t\.parquet: column seq: row 2: 2 values, but model input 'seq' "
                                              r"takes 3 per row \(add pad=seq"):
        _read(f"parquet:{path}?label=click", ids)
    np.testing.assert_array_equal(_read(f"parquet:{path}?label=click&pad=seq", ids),
                                  [[1, 2, 3], [4, 5, 0], [6, 7, 8], [0, 0, 0]])  # padded, cut, missing = empty


def test_a_missing_value_inside_a_list_is_refused_with_or_without_pad(tmp_path):
    floats = InputColumn("seq", "float32", (2,))
    for bad in (None, float("nan"), float("inf")):
        path = _parquet(tmp_path, [[1.0, 2.0], [bad, 3.0]], pa.float32())
        for spec in (f"parquet:{path}?label=click", f"parquet:{path}?label=click&pad=seq"):
            with pytest.raises(DataFormatError, match=r"column seq: row 2: a missing \(NaN\) or infinite value inside"):
                _read(spec, floats)
    csv = tmp_path / "t.csv"
    for text in ("1||3", "1|2|"):  # an empty item is a missing value, not nothing
        csv.write_text(f"seq,click\n1|2|3,0\n{text},1\n")
        for spec in (f"csv:{csv}?label=click", f"csv:{csv}?label=click&pad=seq"):
            with pytest.raises(DataFormatError, match=r"t\.csv: column seq: row 2: a missing value inside the list"):
                _read(spec, InputColumn("seq", "int64", (3,), high=10))


def test_padded_string_lists_get_empty_strings_and_single_values_are_padded_too(tmp_path):
    tags = InputColumn("seq", "string", (3,))
    path = _parquet(tmp_path, [["a"], ["b", "c"]], pa.string())
    assert _read(f"parquet:{path}?label=click&pad=seq", tags).tolist() == [["a", "", ""], ["b", "c", ""]]
    import tensorflow as tf

    records = tmp_path / "t.tfrecord"
    with tf.io.TFRecordWriter(str(records)) as writer:  # every row one value: read as a flat column
        for value in (1, 2):
            feature = {"seq": tf.train.Feature(int64_list=tf.train.Int64List(value=[value])),
                       "click": tf.train.Feature(int64_list=tf.train.Int64List(value=[value - 1]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    ids = InputColumn("seq", "int64", (3,), high=10)
    np.testing.assert_array_equal(_read(f"tfrecord:{records}?label=click&pad=seq", ids), [[1, 0, 0], [2, 0, 0]])


def test_pad_names_only_fixed_length_list_inputs(tmp_path):
    path = _parquet(tmp_path, [[1, 2, 3], [4, 5, 6]], pa.int64())
    with pytest.raises(Exception, match=r"pad names \['sequence'\], which are not inputs of the model"):
        _read(f"parquet:{path}?label=click&pad=sequence", InputColumn("seq", "int64", (3,)))
    with pytest.raises(Exception, match=r"pad names \['seq'\], which take one value per row or lists of any length"):
        _read(f"parquet:{path}?label=click&pad=seq", InputColumn("seq", "int64", (None,)))


def test_an_input_of_free_length_beside_other_axes_is_refused_by_name(tmp_path):
    path = _parquet(tmp_path, [[1, 2, 3], [4, 5, 6]], pa.int64())
    with pytest.raises(Exception, match=r"model input\(s\) 'seq' \(None, 3\) have a free length beside other axes"):
        _read(f"parquet:{path}?label=click", InputColumn("seq", "int64", (None, 3)))


def test_a_csv_list_column_is_recognised_wherever_its_first_list_comes(tmp_path):
    csv = tmp_path / "t.csv"  # 150 single ids before the first delimited list
    csv.write_text("seq,click\n" + "".join(f"{i % 9 + 1},{i % 2}\n" for i in range(150)) + "3|4|5,1\n")
    values = _read(f"csv:{csv}?label=click&pad=seq", InputColumn("seq", "int64", (3,), high=10))
    assert values.shape == (151, 3) and values[0].tolist() == [1, 0, 0] and values[-1].tolist() == [3, 4, 5]


def test_a_nan_or_infinite_number_is_refused_with_its_row(tmp_path):
    """NaN in a scalar float column was fed to the model (a Parquet NaN, or "NaN" in a CSV): eval printed an AUC
    over rows whose prediction was a constant, exit 0."""
    price = InputColumn("price", "float32", ())
    path = tmp_path / "t.parquet"
    for bad in (float("nan"), float("inf")):
        pq.write_table(pa.table({"price": [1.0, 2.0, bad, 4.0], "click": [0, 1, 0, 1]}), path)
        with pytest.raises(DataFormatError, match=r"t\.parquet: column price: row 3: a missing \(NaN\) or infinite value"):
            _read(f"parquet:{path}?label=click", price)
    csv = tmp_path / "t.csv"
    csv.write_text("price,click\n1.5,0\nNaN,1\n")
    with pytest.raises(DataFormatError, match=r"t\.csv: column price: row 2: a missing \(NaN\)"):
        _read(f"csv:{csv}?label=click", price)


def _tfrecord(path, rows: list[dict]) -> str:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows:
            feature = {name: tf.train.Feature(int64_list=tf.train.Int64List(value=values))
                       for name, values in row.items()}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return str(path)


def test_a_tfrecord_label_absent_from_a_record_is_refused_and_a_feature_absent_from_the_first_is_found(tmp_path,
                                                                                                      monkeypatch):
    from tfafm.data.keyed import _TFRecord

    ids = InputColumn("seq", "int64", (), high=10)
    records = _tfrecord(tmp_path / "a.tfrecord", [{"seq": [1], "click": [0]}, {"seq": [2]}, {"seq": [3], "click": [1]}])
    with pytest.raises(DataFormatError, match=r"a\.tfrecord: column click: labels must be 0 or 1, found missing"):
        _read(f"tfrecord:{records}?label=click", ids)  # was numpy's "inhomogeneous shape" ValueError
    records = _tfrecord(tmp_path / "b.tfrecord", [{"seq": [1], "click": [0]}, {"seq": [2], "click": [1, 0]}])
    with pytest.raises(DataFormatError, match=r"column click: labels must be 0/1 numbers, the column holds list:int"):
        _read(f"tfrecord:{records}?label=click", ids)
    monkeypatch.setattr(_TFRecord, "SCHEMA_RECORDS", 1)  # the list comes after the records that name the columns
    with pytest.raises(DataFormatError, match=r"column click: labels must be one value per row, found a list of 2"):
        _read(f"tfrecord:{records}?label=click", ids)
    monkeypatch.undo()
    # A feature the first record lacks is a column of the file (it was "no column for model input(s)"); the
    # record without it is a missing value, refused as such.
    records = _tfrecord(tmp_path / "c.tfrecord", [{"click": [0]}, {"seq": [2], "click": [1]}])
    with pytest.raises(DataFormatError, match=r"column seq: 1 missing value\(s\) in this batch"):
        _read(f"tfrecord:{records}?label=click", ids)
    records = _tfrecord(tmp_path / "d.tfrecord", [{"seq": [1], "click": [0]}, {"seq": [2], "click": [1]}])
    np.testing.assert_array_equal(_read(f"tfrecord:{records}?label=click", ids), [1, 2])
    # A file cut inside a record's 12-byte header was read as its whole records, the rest dropped (exit 0).
    whole = open(records, "rb").read()
    first = len(whole) // 2  # the two records are the same size
    (tmp_path / "cut.tfrecord").write_bytes(whole[:first + 7])
    with pytest.raises(DataFormatError, match=r"cut\.tfrecord: ends inside the header of record 2 \(truncated\?\): "
                                              r"7 byte\(s\) after the 1 whole records"):
        _read(f"tfrecord:{tmp_path / 'cut.tfrecord'}?label=click", ids)
    (tmp_path / "cut.tfrecord").write_bytes(whole[:first + 14])  # inside its data: TensorFlow says so
    with pytest.raises(DataFormatError, match=r"not a readable TFRecord file \(truncated record at \d+") as error:
        _read(f"tfrecord:{tmp_path / 'cut.tfrecord'}?label=click", ids)
    assert "function_node" not in str(error.value) and "[Op:" not in str(error.value)


def test_a_column_named_twice_is_refused(tmp_path):
    """A CSV header naming "price" twice: the first column was read, silently (AUC 0.72 instead of 0.73)."""
    price = InputColumn("price", "float32", ())
    csv = tmp_path / "t.csv"
    csv.write_text("price,price,click\n0,1.5,0\n0,2.5,1\n")
    with pytest.raises(DataFormatError, match=r"t\.csv: column name\(s\) \['price'\] appear more than once"):
        _read(f"csv:{csv}?label=click", price)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([0.0, 0.0]), pa.array([1.5, 2.5]), pa.array([0, 1])],
                                        names=["price", "price", "click"]), path)
    with pytest.raises(DataFormatError, match=r"t\.parquet: column name\(s\) \['price'\] appear more than once"):
        _read(f"parquet:{path}?label=click", price)


def test_a_csv_column_of_digits_feeds_a_string_input_as_its_text(tmp_path):
    """Codes like "007" for an input taking strings (a StringLookup or Hashing inside the model): the column was
    read as integers and refused ("holds int values, but model input 'code' takes strings")."""
    csv = tmp_path / "t.csv"
    csv.write_text('code,click\n"007",0\n019,1\n7,0\n')
    assert _read(f"csv:{csv}?label=click", InputColumn("code", "string", ())).tolist() == ["007", "019", "7"]


def test_an_id_past_2_to_the_53_is_named_exactly(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": pa.array([3, 2**63 + 5], pa.uint64()), "click": [0, 1]}), path)
    with pytest.raises(DataFormatError, match=r"id 9223372036854775813 is outside the table"):  # not ...808 (float64)
        keyed_data(f"parquet:{path}?label=click", [InputColumn("id", "int64", (), high=10)], ["click"])


def test_an_integer_the_input_dtype_cannot_hold_is_refused_not_wrapped(tmp_path):
    """A CSV id of 2**32 + 7 for an int32 input was cast to 7 before its range was checked: read as id 7, exit 0
    (Parquet was refused by its column statistics)."""
    csv = tmp_path / "t.csv"
    csv.write_text(f"user,click\n3,0\n{2**32 + 7},1\n")
    with pytest.raises(DataFormatError, match=r"row 2: value 4294967303 does not fit model input 'user' \(int32"):
        _read(f"csv:{csv}?label=click", InputColumn("user", "int32", (), high=100))
    with pytest.raises(DataFormatError, match=r"value 4294967303 does not fit model input 'user'"):
        _read(f"csv:{csv}?label=click", InputColumn("user", "int32", ()))  # not an id: it wrapped all the same


def test_a_csv_column_of_number_lists_feeds_a_float_vector_input(tmp_path):
    """Delimited numbers with decimals ("0.5|1.25|-2e-1") were read as text: "holds strings, but model input
    'dense' takes float32 numbers"; only integer lists were lists."""
    csv = tmp_path / "t.csv"
    csv.write_text("dense,click\n0.5|1.25|-2e-1,0\n1|2|3,1\n")
    vector = InputColumn("dense", "float32", (3,))
    np.testing.assert_allclose(_read(f"csv:{csv}?label=click", vector), [[0.5, 1.25, -0.2], [1, 2, 3]])
    with pytest.raises(DataFormatError, match=r"holds floating-point values, but model input 'dense' takes int32"):
        _read(f"csv:{csv}?label=click", InputColumn("dense", "int32", (3,), high=10))
    csv.write_text("dense,click\n0.5|nan|1,0\n1|2|3,1\n")
    with pytest.raises(DataFormatError, match=r"row 1: a missing \(NaN\) or infinite value"):
        _read(f"csv:{csv}?label=click", vector)


def test_a_missing_scalar_is_refused_with_its_row(tmp_path):
    """A null id or number said "1 missing value(s) in this batch" (NaN named its row)."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"user": pa.array([1, 2, None, 4], pa.int64()), "price": pa.array([1.0, None, 2.0, 3.0]),
                             "click": [0, 1, 0, 1]}), path)
    with pytest.raises(DataFormatError, match=r"column user: row 3: a missing value \(1 in this batch\)"):
        _read(f"parquet:{path}?label=click", InputColumn("user", "int64", (), high=10))
    with pytest.raises(DataFormatError, match=r"column price: row 2: a missing value"):
        _read(f"parquet:{path}?label=click", InputColumn("price", "float32", ()))
    csv = tmp_path / "t.csv"
    csv.write_text("user,click\n1,0\n,1\n")
    with pytest.raises(DataFormatError, match=r"column user: row 2: a missing value"):
        _read(f"csv:{csv}?label=click", InputColumn("user", "int64", (), high=10))
