"""Data keyed by a model's input names: the user's Parquet, CSV and TFRecord files, read as they are.

A model that tfafm did not train (a ``.keras`` file, a run without a tfafm
preprocessor) takes its data as it is: each model input reads the column (or
``tf.train.Example`` feature) of the same name, ids are fed unchanged (no
vocabulary is fitted), string columns feed the model's own string inputs
(its ``StringLookup`` / ``Hashing`` / ``TextVectorization``), and labels come
from the columns named in the spec::

    parquet:events/*.parquet?label=click
    csv:events.csv?label=click&delimiter=;
    tfrecord:shards/?label=click,purchase         (one label column per model output, in order)

``PATH`` is a file, a directory (its files, sorted), a glob or a
comma-separated list of those. Without ``label=``, a column named ``label``
or ``click`` is the label of a single-output model, if there is one.

Files are read streaming, one batch at a time (bounded memory whatever their
size). Shapes: a scalar column feeds a ``(batch, 1)`` or ``(batch,)`` input;
a list column (Parquet lists, CSV text split on ``list_delimiter``,
TFRecord features of several values) feeds a ``(batch, L)`` input. Every list
must hold exactly L values, unless the column is named in ``pad=`` (sequence
features, such as a history of ids)::

    parquet:events.parquet?label=click&pad=history,tags

whose lists are **padded with 0 (``""`` for strings) at the end or truncated
to their first L values**, a missing list read as an empty one. An input of
free length (``(batch, None)``) takes lists padded with 0 to the longest of
the batch, a missing list as an empty one.
Nothing is padded, cut or filled unasked: a list of another length, a missing
list or a missing value inside a list is an error naming the file, column and
row (a 0 written where a value was missing reads as a real id or value).

Checked before any work (from the files' schemas, Parquet column statistics
and the first batch): every model input has a column of a fitting type, and
the label columns exist. Checked on every batch as it is read: ids within the
table or encoding they index (``[0, size)``), labels 0 or 1, no missing
values, lists of the input's length. Each failure is one :class:`~tfafm.data.errors.DataFormatError`
naming the file and column.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
import urllib.parse
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np

from tfafm.data.errors import DataFormatError
from tfafm.data.readers import each_file_once
from tfafm.errors import MissingFileError, UserError
from tfafm_choices import KEYED_DATA as KINDS

if TYPE_CHECKING:
    import tensorflow as tf

_OPTIONS = ("label", "delimiter", "list_delimiter", "pad")
_LABEL_NAMES = ("label", "click")


@dataclasses.dataclass(frozen=True)
class InputColumn:
    """What one model input needs from the data.

    Attributes:
        name: the input's name: the column or feature it reads.
        dtype: the input's dtype (``int32``, ``int64``, ``float32``, ``string``, ...).
        shape: its shape without the batch axis (``None`` for a free length).
        high: ids must lie in ``[0, high)`` (the table or encoding they index), if known.
    """

    name: str
    dtype: str
    shape: tuple
    high: Optional[int] = None

    @property
    def is_string(self) -> bool:
        return self.dtype == "string"

    @property
    def is_integer(self) -> bool:
        return self.dtype.startswith(("int", "uint"))

    @property
    def length(self) -> Optional[int]:
        """Values per row: 1 for ``()`` or ``(1,)``, L for ``(L,)``, None for a free length."""
        if len(self.shape) == 0:
            return 1
        return self.shape[0] if len(self.shape) == 1 else int(np.prod(self.shape))


@dataclasses.dataclass(frozen=True)
class KeyedSpec:
    """A parsed ``parquet:`` / ``csv:`` / ``tfrecord:`` spec."""

    spec: str
    kind: str
    paths: tuple[str, ...]
    labels: Optional[tuple[str, ...]]
    delimiter: str = ","
    list_delimiter: str = "|"
    pad: tuple[str, ...] = ()  # list columns padded with 0 or cut to their input's length


def is_keyed_spec(spec: str) -> bool:
    return spec.partition(":")[0] in KINDS


def parse_spec(spec: str) -> KeyedSpec:
    r"""Parses ``KIND:PATH[?label=..&delimiter=..&list_delimiter=..&pad=..]``; the files must exist.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "events.csv")
    >>> _ = open(path, "w").write("user;click\n3;1\n")
    >>> spec = parse_spec(f"csv:{path}?label=click&delimiter=;")
    >>> spec.kind, spec.labels, spec.delimiter
    ('csv', ('click',), ';')
    """
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise UserError(f"Unknown data source {kind!r} in {spec!r}; expected {', '.join(k + ':PATH' for k in KINDS)}.")
    location, _, query = rest.partition("?")
    if not location:
        raise UserError(f"Data spec {spec!r} needs a path: {kind}:PATH[?label=COLUMN].")
    options = urllib.parse.parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise UserError(f"Unknown option(s) {unknown} in {spec!r}; known: {', '.join(_OPTIONS)}.")
    labels = tuple(c for value in options.get("label", []) for c in value.split(",") if c) or None
    delimiter = options.get("delimiter", [","])[-1]
    delimiter = "\t" if delimiter in ("\\t", "tab") else delimiter
    if len(delimiter) != 1:
        raise UserError(f"delimiter must be one character, got {delimiter!r} in {spec!r}.")
    pad = tuple(c for value in options.get("pad", []) for c in value.split(",") if c)
    return KeyedSpec(spec, kind, tuple(resolve(location)), labels, delimiter,
                     options.get("list_delimiter", ["|"])[-1] or "|", pad)


def resolve(location: str) -> list[str]:
    """Files named by a comma-separated list of files, directories (their files, sorted) and globs, each
    once (``parts/p1.parquet,parts/*.parquet`` reads ``p1`` once, not twice)."""
    paths: list[str] = []
    for part in (p.strip() for p in location.split(",")):
        if not part:
            continue
        if os.path.isdir(part):
            found = sorted(os.path.join(part, n) for n in os.listdir(part)
                           if not n.startswith((".", "_")) and os.path.isfile(os.path.join(part, n)))
            if not found:
                raise MissingFileError(f"No data files in directory: {part}")
            paths += found
        elif any(c in part for c in "*?["):
            found = sorted(p for p in glob.glob(part) if os.path.isfile(p))
            if not found:
                raise MissingFileError(f"No data files match {part}")
            paths += found
        elif os.path.isfile(part):
            paths.append(part)
        else:
            raise MissingFileError(f"Data file not found: {part}")
    if not paths:
        raise MissingFileError(f"No data path given in {location!r}.")
    return each_file_once(paths)


# ----------------------------------------------------------------------------- batches of numpy arrays


class _Table:
    """Reads one format's files batch by batch as ``{column: numpy or list of lists}``."""

    def __init__(self, spec: KeyedSpec, text_columns: Sequence[str] = ()):
        self.spec = spec
        self.text_columns = list(text_columns)  # read as text whatever they look like (inputs taking strings)

    def columns(self, path: str) -> dict[str, str]:
        """``{column name: 'int' | 'float' | 'string' | 'list' | 'other:TYPE'}`` of a file."""
        raise NotImplementedError

    def batches(self, path: str, names: list[str], batch_size: int) -> Iterator[dict[str, object]]:
        raise NotImplementedError

    def high_values(self, path: str, names: list[str]) -> dict[str, tuple[float, float]]:
        """``{column: (min, max)}`` known without reading the data (Parquet statistics)."""
        return {}


def _arrow_kind(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        inner = _arrow_kind(arrow_type.value_type)
        return f"list:{inner}"
    return f"other:{arrow_type}"


def _arrow_to_numpy(column) -> object:
    """A numpy array (scalars) or a list of lists (list columns) of an Arrow array."""
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = _arrow_kind(column.type)
    if kind.startswith("list"):
        return column.to_pylist()
    if kind == "string":
        return np.asarray(column.to_pylist(), dtype=object)
    return column.to_numpy(zero_copy_only=False)


class _Parquet(_Table):
    def _file(self, path: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as error:
            raise DataFormatError(f"not a readable Parquet file ({error})", path=path) from None

    def columns(self, path):
        schema = self._file(path).schema_arrow
        _require_unique(schema.names, path)
        return {field.name: _arrow_kind(field.type) for field in schema}

    def batches(self, path, names, batch_size):
        import pyarrow as pa

        try:
            for batch in self._file(path).iter_batches(batch_size=batch_size, columns=names):
                yield {name: (_arrow_to_numpy(batch.column(name)), batch.column(name).null_count) for name in names}
        except (pa.ArrowInvalid, OSError) as error:
            raise DataFormatError(f"cannot read the Parquet data ({error})", path=path) from None

    def high_values(self, path, names):
        metadata = self._file(path).metadata
        index = {metadata.schema.column(i).name: i for i in range(metadata.num_columns)}
        found: dict[str, tuple[float, float]] = {}
        for name in names:
            if name not in index:
                continue
            bounds = []
            for group in range(metadata.num_row_groups):
                stats = metadata.row_group(group).column(index[name]).statistics
                if stats is None or not stats.has_min_max or not isinstance(stats.min, (int, float)):
                    bounds = []
                    break
                bounds.append((stats.min, stats.max))
            if bounds:
                found[name] = (min(b[0] for b in bounds), max(b[1] for b in bounds))
        return found


class _Csv(_Table):
    def _reader(self, path: str, names: Optional[list[str]] = None, types: Optional[dict] = None):
        import pyarrow.csv as pacsv

        return pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=4 << 20),
            parse_options=pacsv.ParseOptions(delimiter=self.spec.delimiter),
            convert_options=pacsv.ConvertOptions(include_columns=names or [], column_types=types or {},
                                                 strings_can_be_null=False, null_values=[""]),
        )

    def columns(self, path):
        import pyarrow as pa

        try:
            reader = self._reader(path, types={name: pa.string() for name in self.text_columns})
            first = reader.read_next_batch()
        except StopIteration:
            raise DataFormatError("no data rows below the header", path=path) from None
        except (pa.ArrowInvalid, OSError) as error:
            raise DataFormatError(f"not a readable CSV file with a header row ({_first_line(error)})",
                                  path=path) from None
        _require_unique(first.schema.names, path)
        kinds = {field.name: _arrow_kind(field.type) for field in first.schema}
        for name, kind in kinds.items():  # text holding delimited lists of numbers reads as a list
            if kind == "string":
                kinds[name] = self._list_kind(first.column(name)) or kind
        return kinds

    def _list_kind(self, column) -> str | None:
        """``"list:int"`` or ``"list:float"`` where a text column of the first block holds delimited lists of
        numbers: every value a list of integers (or of numbers, for float) or empty, and at least one of
        them with a delimiter, wherever it comes in the block; else None."""
        import pyarrow.compute as pc

        separator = re.escape(self.spec.list_delimiter)
        filled = pc.filter(column, pc.invert(pc.fill_null(pc.equal(column, ""), True)))
        if len(filled) == 0 or not pc.any(pc.match_substring(filled, self.spec.list_delimiter)).as_py():
            return None
        for kind, number in (("list:int", r"-?\d*"), ("list:float", _FLOAT_TEXT)):
            if pc.all(pc.match_substring_regex(filled, rf"^{number}({separator}{number})*$")).as_py():
                return kind
        return None

    def batches(self, path, names, batch_size):
        import pyarrow as pa

        kinds = self.columns(path)
        reader = self._reader(path, names, {n: pa.string() for n in names
                                            if kinds[n].startswith("list") or n in self.text_columns})
        pending: list = []
        count = 0
        try:
            for batch in reader:
                pending.append(batch)
                count += batch.num_rows
                while count >= batch_size:
                    table = pa.Table.from_batches(pending).combine_chunks()
                    yield self._convert(table.slice(0, batch_size), names, kinds, path)
                    rest = table.slice(batch_size)
                    pending, count = rest.to_batches(), rest.num_rows
        except pa.ArrowInvalid as error:
            raise DataFormatError(f"cannot parse the CSV data ({_first_line(error)})", path=path) from None
        if count:
            yield self._convert(pa.Table.from_batches(pending), names, kinds, path)

    def _convert(self, table, names, kinds, path):
        result = {}
        for name in names:
            column = table.column(name).combine_chunks()
            if kinds[name].startswith("list"):
                separator = self.spec.list_delimiter
                number = float if kinds[name] == "list:float" else int
                try:
                    # An empty item ("1||3", "1|2|") is a missing value, not nothing: None, refused later.
                    lists = [[number(v) if v else None for v in text.split(separator)] if text else []
                             for text in column.to_pylist()]
                except ValueError:
                    raise DataFormatError(f"expected lists of {'numbers' if number is float else 'integers'} "
                                          f"separated by {separator!r}", path=path, column=name) from None
                result[name] = (lists, 0)
            else:
                result[name] = (_arrow_to_numpy(column), column.null_count)
        return result


def _map_arrays(function, structure):
    """``function`` applied to every array of a ``(features dict, labels tuple)`` or features batch."""
    if isinstance(structure, tuple):
        return tuple(_map_arrays(function, item) for item in structure)
    if isinstance(structure, dict):
        return {key: function(value) for key, value in structure.items()}
    return function(structure)


# A number as CSV text: integer, decimal or exponent form, nan / inf (refused later with their row).
_FLOAT_TEXT = r"(?i:[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|nan|inf|infinity)?)"


def _first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, without TensorFlow's ``{{function_node ...}}`` and ``[Op:...]``."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\].*$", "", str(error).strip().splitlines()[0]
                  if str(error).strip() else "")
    return text.strip() or type(error).__name__


# ----------------------------------------------------------------------------- the dataset


@dataclasses.dataclass
class KeyedData:
    """Batches of a keyed spec for one model.

    Attributes:
        spec: the parsed spec.
        inputs: the model inputs the batches feed.
        labels: the label column of each model output, or None without labels.
        description: one line for logs.
    """

    spec: KeyedSpec
    inputs: tuple[InputColumn, ...]
    labels: Optional[tuple[str, ...]]
    batch_size: int
    description: str

    failure: Optional[UserError] = None

    def dataset(self, every: Optional[int] = None, keep: bool = True) -> "tf.data.Dataset":
        """Batches of ``(features, labels)`` (``features`` alone without labels). With ``every``,
        only every ``every``-th row (``keep=True``: rows 0, every, 2 every, ... of the whole data)
        or all the others (``keep=False``).

        A bad value found while reading stops the dataset; TensorFlow reports
        it as its own error, and the :class:`~tfafm.data.errors.DataFormatError`
        itself is kept in :attr:`failure` (see :meth:`errors_raised`).
        """
        import tensorflow as tf

        def generate():
            seen = 0
            try:
                for batch in _numpy_batches(self):
                    if every is None:
                        yield batch
                        continue
                    rows = len(next(iter((batch[0] if self.labels else batch).values())))
                    chosen = ((np.arange(rows) + seen) % every == 0) == keep
                    seen += rows
                    if chosen.any():
                        yield _map_arrays(lambda array: array[chosen], batch)
            except UserError as error:
                self.failure = error
                raise

        return tf.data.Dataset.from_generator(generate, output_signature=_signature(self.inputs, self.labels))

    @contextlib.contextmanager
    def errors_raised(self) -> Iterator[None]:
        """Re-raises, in place of TensorFlow's wrapping error, the data error that stopped a
        dataset of this data inside the block."""
        self.failure = None
        try:
            yield
        except Exception:
            if self.failure is not None:
                raise self.failure from None
            raise


def keyed_data(spec: str, inputs: Sequence[InputColumn], outputs: Sequence[str], batch_size: int = 1024,
               labels_required: bool = False) -> KeyedData:
    """Opens ``spec`` for a model with ``inputs`` and ``outputs`` (output names) and checks,
    before any work, that every input has a fitting column and the labels exist.

    Raises:
        DataFormatError / UserError: naming the file and the column at fault.
    """
    parsed = parse_spec(spec)
    inputs = tuple(inputs)
    unreadable = [f"{i.name!r} {i.shape}" for i in inputs if len(i.shape) > 1 and None in i.shape]
    if unreadable:
        raise UserError(f"{spec}: model input(s) {', '.join(unreadable)} have a free length beside other axes; a "
                        "column's lists can feed a (batch, None) input or a fixed shape, not these.")
    _check_pad(parsed, inputs)
    table = _TABLES[parsed.kind](parsed, [i.name for i in inputs if i.is_string])
    labels = _check_columns(table, parsed, inputs, outputs, labels_required)
    _check_statistics(table, parsed, inputs, labels)
    data = KeyedData(parsed, inputs, labels, batch_size, "")
    next(iter(_numpy_batches(dataclasses.replace(data, batch_size=min(batch_size, 256)))), None)  # first rows
    files = len(parsed.paths)
    data.description = (f"{parsed.kind}: {files} file{'s' if files > 1 else ''}, inputs read by name"
                        f"{', labels ' + ', '.join(labels) if labels else ', no labels'}")
    return data


def _check_pad(parsed: KeyedSpec, inputs: Sequence[InputColumn]) -> None:
    """``pad=`` names only model inputs of a fixed list length."""
    by_name = {i.name: i for i in inputs}
    unknown = [name for name in parsed.pad if name not in by_name]
    if unknown:
        raise UserError(f"{parsed.spec}: pad names {unknown}, which are not inputs of the model (inputs: "
                        f"{', '.join(by_name)}).")
    scalar = [name for name in parsed.pad if by_name[name].length in (1, None)]
    if scalar:
        raise UserError(f"{parsed.spec}: pad names {scalar}, which take one value per row or lists of any "
                        "length: there is nothing to pad.")


def _labels_for(parsed: KeyedSpec, available: Sequence[str], outputs: Sequence[str], path: str,
                required: bool) -> Optional[tuple[str, ...]]:
    labels = parsed.labels
    if labels is None:
        guess = next((c for c in available if c.lower() in _LABEL_NAMES), None)
        labels = (guess,) if guess is not None and len(outputs) == 1 else None
    if labels is None:
        if required:
            raise DataFormatError(f"no label column: name it with ?label=COLUMN (one per model output: "
                                  f"{', '.join(outputs)}; columns: {', '.join(available)})", path=path)
        return None
    if len(labels) != len(outputs):
        raise UserError(f"{parsed.spec}: {len(labels)} label column(s) {list(labels)} for a model with "
                        f"{len(outputs)} output(s) {list(outputs)}: give one per output, in order.")
    missing = [c for c in labels if c not in available]
    if missing:
        raise DataFormatError(f"no label column(s) {missing} (columns: {', '.join(available)})", path=path)
    if set(labels) == set(outputs):
        return tuple(outputs)  # columns named as the outputs: each output reads its own, whatever the order given
    crossed = [(c, o) for c, o in zip(labels, outputs) if c != o and c in outputs]
    if crossed:
        column, output = crossed[0]
        raise UserError(f"{parsed.spec}: label column {column!r} is given for output {output!r}, but the model "
                        f"has an output named {column!r}: give one column per output in the order "
                        f"{list(outputs)}, or name each output's own column.")
    return labels


def _check_columns(table: _Table, parsed: KeyedSpec, inputs, outputs, required: bool):
    labels = None
    for index, path in enumerate(parsed.paths):
        kinds = table.columns(path)
        missing = [i.name for i in inputs if i.name not in kinds]
        if missing:
            raise DataFormatError(f"no column for model input(s) {missing} (columns: {', '.join(kinds)})", path=path)
        for column in inputs:
            problem = _type_problem(column, kinds[column.name])
            if problem:
                raise DataFormatError(problem, path=path, column=column.name)
        found = _labels_for(parsed, list(kinds), outputs, path, required)
        if index and found != labels:
            raise DataFormatError(f"has label column(s) {found}, the first file {labels}", path=path)
        labels = found
        for label in labels or ():
            if kinds[label] not in ("int", "float"):
                raise DataFormatError(f"labels must be 0/1 numbers, the column holds {kinds[label]} values",
                                      path=path, column=label)
    return labels


def _type_problem(column: InputColumn, kind: str) -> Optional[str]:
    """Why a column of ``kind`` cannot feed ``column``, or None."""
    scalar_kind = kind.split(":", 1)[-1] if kind.startswith("list:") else kind
    if kind.startswith("other"):
        return f"holds {kind.split(':', 1)[1]} values, which no model input takes"
    if kind.startswith("list") and column.length == 1:
        return f"holds lists, but model input {column.name!r} takes one value per row (shape {column.shape})"
    if column.is_string and scalar_kind != "string":
        return f"holds {scalar_kind} values, but model input {column.name!r} takes strings"
    if column.is_integer and scalar_kind == "string":
        return (f"holds strings, but model input {column.name!r} takes {column.dtype} ids: map the values to ids "
                "beforehand, or give the model a StringLookup that takes the strings")
    if column.is_integer and scalar_kind == "float":
        return f"holds floating-point values, but model input {column.name!r} takes {column.dtype} ids"
    if not column.is_string and not column.is_integer and scalar_kind == "string":
        return f"holds strings, but model input {column.name!r} takes {column.dtype} numbers"
    return None


def _check_statistics(table: _Table, parsed: KeyedSpec, inputs, labels) -> None:
    ids = [c for c in inputs if c.is_integer and c.high is not None]
    for path in parsed.paths:
        bounds = table.high_values(path, [c.name for c in ids] + list(labels or ()))
        for column in ids:
            if column.name in bounds:
                _check_ids(column, np.asarray(bounds[column.name], dtype=object), path)  # exact past 2**53
        for label in labels or ():
            low, high = bounds.get(label, (0, 1))
            if low < 0 or high > 1:
                raise DataFormatError(f"labels must be 0 or 1, the column holds values from {low} to {high}",
                                      path=path, column=label)


def _check_ids(column: InputColumn, values: np.ndarray, path: str) -> None:
    if values.size == 0:
        return
    low, high = int(np.min(values)), int(np.max(values))
    if low < 0 or high >= column.high:
        bad = high if high >= column.high else low
        raise DataFormatError(f"id {bad} is outside the table it indexes (ids 0..{column.high - 1}; largest id "
                              f"{high}, smallest {low})", path=path, column=column.name)


def _numpy_batches(data: KeyedData) -> Iterator:
    """``(features, labels)`` or ``features`` batches as numpy arrays, checked."""
    table = _TABLES[data.spec.kind](data.spec, [c.name for c in data.inputs if c.is_string])
    names = [c.name for c in data.inputs] + [n for n in (data.labels or ()) if n not in {c.name for c in data.inputs}]
    for path in data.spec.paths:
        first_row = 1
        for raw in table.batches(path, names, data.batch_size):
            features = {c.name: _feature(c, *raw[c.name], path, c.name in data.spec.pad, first_row)
                        for c in data.inputs}
            first_row += len(next(iter(features.values())))
            if data.labels is None:
                yield features
            else:
                yield features, tuple(_label(raw[name][0], raw[name][1], name, path) for name in data.labels)


def _feature(column: InputColumn, values, nulls: int, path: str, pad: bool = False, first_row: int = 1) -> np.ndarray:
    """One batch of ``column`` as an array of its shape; ``pad``: lists padded with 0 (``""`` for
    strings) or cut to its length; ``first_row``: the batch's first row in the file (from 1), for errors."""
    if nulls and column.length == 1:
        row = _first_missing(values)
        where = f"{nulls} missing value(s) in this batch" if row is None else \
            f"row {first_row + row}: a missing value ({nulls} in this batch)"
        raise DataFormatError(f"{where}: model input {column.name!r} needs a value on every row (fill them before)",
                              path=path, column=column.name)
    if pad and not isinstance(values, list) and np.ndim(values) == 1:
        values = [[value] for value in values]  # a batch whose every row holds one value, to be padded
    if isinstance(values, list):
        array = _lists(column, values, path, pad or column.length is None, first_row)
    else:
        array = np.asarray(values)
        if column.is_string:
            array = array.astype(object)
        else:
            _check_range(column, array, path, first_row)
            array = array.astype(column.dtype)
        length = column.length
        if length not in (1, None) and array.ndim == 1:
            raise DataFormatError(f"holds one value per row, model input {column.name!r} takes {length}",
                                  path=path, column=column.name)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            row = int(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0])
            raise DataFormatError(f"row {first_row + row}: a missing (NaN) or infinite value: model input "
                                  f"{column.name!r} needs a number on every row (fill it before)",
                                  path=path, column=column.name)
    if column.is_integer and column.high is not None:
        _check_ids(column, array, path)
    return array.reshape((len(array), *[d if d is not None else -1 for d in column.shape])) if column.shape \
        else array.reshape(len(array))


def _first_missing(values) -> int | None:
    """The first missing entry of a batch column as Arrow gives it (None for text, NaN for numbers), or None
    where it cannot tell (a TFRecord column holds only the values present)."""
    if isinstance(values, list) or not isinstance(values, np.ndarray) or not len(values):
        return None
    missing = np.equal(values, None) if values.dtype == object else \
        np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), bool)
    found = np.flatnonzero(missing)
    return int(found[0]) if len(found) else None


def _check_range(column: InputColumn, array: np.ndarray, path: str, first_row: int) -> None:
    """Refuses integers an integer input's dtype cannot hold (cast, they would wrap round to other ids)."""
    if not column.is_integer or array.dtype.kind not in "iu" or not array.size:
        return
    limits = np.iinfo(column.dtype)
    rows = array.reshape(len(array), -1)
    outside = np.flatnonzero((rows < limits.min) | (rows > limits.max))  # flat positions, row by row
    if len(outside):
        row, value = int(outside[0]) // rows.shape[1], int(rows.flat[outside[0]])
        raise DataFormatError(f"row {first_row + row}: value {value} does not fit model input {column.name!r} "
                              f"({column.dtype}: {limits.min} to {limits.max})", path=path, column=column.name)


def _lists(column: InputColumn, values: list, path: str, padded: bool, first_row: int) -> np.ndarray:
    """A batch of lists as a ``(rows, L)`` array, every list whole: no missing value inside and,
    unless ``padded``, present and of the input's length L (``padded``: cut to L or padded with 0,
    a missing list read as an empty one; L the longest list for an input of free length)."""
    def fail(row: int, problem: str) -> DataFormatError:
        return DataFormatError(f"row {first_row + row}: {problem}", path=path, column=column.name)

    if column.length == 1 and any(v is not None and len(v) > 1 for v in values):
        raise DataFormatError(f"holds lists, but model input {column.name!r} takes one value per row",
                              path=path, column=column.name)
    length = column.length or max((len(v) for v in values if v is not None), default=1) or 1
    array = np.full((len(values), length), "" if column.is_string else 0,
                    dtype=object if column.is_string else column.dtype)
    inside = f"a missing value inside the list (model input {column.name!r}; fill it before)"
    for row, items in enumerate(values):
        if items is None and not padded:
            raise fail(row, f"a missing list: model input {column.name!r} takes {length} values per row (fill it, "
                            f"or add pad={column.name} to the data spec if an empty or shorter list should be "
                            "padded with 0)")
        if items is None:
            continue
        if not padded and len(items) != length:
            raise fail(row, f"{len(items)} values, but model input {column.name!r} takes {length} per row (add "
                            f"pad={column.name} to the data spec to pad shorter lists with 0 and cut longer ones, "
                            "as for a sequence of ids)")
        items = items[:length]
        try:
            array[row, :len(items)] = items
        except (TypeError, ValueError):  # a None among numbers
            raise fail(row, inside) from None
    missing = np.equal(array, None) if column.is_string else ~np.isfinite(array) if array.dtype.kind == "f" else None
    if missing is not None and missing.any():
        raise fail(int(np.flatnonzero(missing.any(axis=1))[0]), inside if column.is_string else
                   inside.replace("a missing value", "a missing (NaN) or infinite value"))
    return array


def _require_unique(names: Sequence[str], path: str) -> None:
    """Refuses a file naming a column twice: which of them would be read is a guess (the first, silently)."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataFormatError(f"column name(s) {repeated} appear more than once", path=path)


def _label(values, nulls: int, name: str, path: str) -> np.ndarray:
    if isinstance(values, list):  # rows of no value or several (a label absent from some TFRecord records)
        lengths = [0 if v is None else len(v) for v in values]
        if max(lengths, default=1) > 1:
            raise DataFormatError(f"labels must be one value per row, found a list of {max(lengths)}", path=path,
                                  column=name)
        if min(lengths, default=1) == 0:
            raise DataFormatError("labels must be 0 or 1, found missing", path=path, column=name)
        values = np.concatenate(values)
    labels = np.asarray(values, dtype=np.float64)
    if nulls or not np.isin(labels, (0.0, 1.0)).all():
        bad = "missing" if nulls else repr(float(labels[~np.isin(labels, (0.0, 1.0))][0]))
        raise DataFormatError(f"labels must be 0 or 1, found {bad}", path=path, column=name)
    return labels.astype(np.float32).reshape(-1, 1)


def _tf_dtype(column: InputColumn):
    import tensorflow as tf

    return tf.string if column.is_string else tf.as_dtype(column.dtype)


def _signature(inputs, labels):
    import tensorflow as tf

    features = {c.name: tf.TensorSpec((None, *c.shape), _tf_dtype(c)) for c in inputs}
    if labels is None:
        return features
    return features, tuple(tf.TensorSpec((None, 1), tf.float32) for _ in labels)


# ----------------------------------------------------------------------------- TFRecord


_RECORD_FRAMING = 16  # a TFRecord's length (8 bytes) and its CRC (4), then the data's CRC (4)


class _TFRecord(_Table):
    """``tf.train.Example`` records: each feature read as a variable-length list, then as one
    value per row where every row has exactly one."""

    _KINDS = {"int64_list": "int", "float_list": "float", "bytes_list": "string"}
    SCHEMA_RECORDS = 100  # the records whose features name the columns (a feature may skip the first ones)

    def columns(self, path):
        import tensorflow as tf

        try:
            examples = [tf.train.Example.FromString(record.numpy())
                        for record in tf.data.TFRecordDataset(path).take(self.SCHEMA_RECORDS)]
            if not examples:
                raise DataFormatError("empty TFRecord file", path=path)
        except tf.errors.OpError as error:
            raise DataFormatError(f"not a readable TFRecord file ({_first_line(error)})", path=path) from None
        except DataFormatError:
            raise
        except Exception as error:  # protobuf's DecodeError
            raise DataFormatError(f"records are not tf.train.Example ({_first_line(error)})", path=path) from None
        kinds: dict[str, str] = {}
        lists: set[str] = set()
        for example in examples:  # a feature absent from the first records still counts
            for name, feature in example.features.feature.items():
                field = feature.WhichOneof("kind")
                count = len(getattr(feature, field).value) if field else 0
                if kinds.get(name, "other:empty") == "other:empty":
                    kinds[name] = self._KINDS.get(field, "other:empty")
                if count > 1:
                    lists.add(name)
        return {name: f"list:{kind}" if name in lists else kind for name, kind in kinds.items()}

    def batches(self, path, names, batch_size):
        import tensorflow as tf

        kinds = self.columns(path)
        storage = {"int": tf.int64, "float": tf.float32, "string": tf.string}
        spec = {n: tf.io.VarLenFeature(storage[kinds[n].split(":")[-1]]) for n in names}
        framed = count = 0  # bytes of the records read, with their 16 bytes of framing each
        try:
            for records in tf.data.TFRecordDataset(path).batch(batch_size):
                parsed = tf.io.parse_example(records, spec)
                framed += int(tf.reduce_sum(tf.strings.length(records))) + _RECORD_FRAMING * len(records)
                count += len(records)
                yield {name: _rows(parsed[name], len(records)) for name in names}
        except tf.errors.OpError as error:
            raise DataFormatError(f"cannot read the TFRecord data ({_first_line(error)})", path=path) from None
        if framed != os.path.getsize(path):  # TFRecordDataset ends quietly inside a record's header
            raise DataFormatError(f"ends inside the header of record {count + 1} (truncated?): "
                                  f"{os.path.getsize(path) - framed} byte(s) after the {count:,} whole records",
                                  path=path)


def _rows(sparse, count: int):
    """A parsed variable-length feature as ``(values, rows without a value)``: a flat array when
    every row has exactly one value, else a list of lists."""
    values = sparse.values.numpy()
    if values.dtype == object:
        values = np.array([v.decode("utf-8", "replace") for v in values], dtype=object)
    lengths = np.bincount(sparse.indices.numpy()[:, 0], minlength=count) if len(values) else np.zeros(count, int)
    if np.all(lengths == 1):
        return values, 0
    return np.split(values, np.cumsum(lengths)[:-1]), int(np.sum(lengths == 0))


_TABLES = {"parquet": _Parquet, "csv": _Csv, "tfrecord": _TFRecord}
