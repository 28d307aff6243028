"""Column layouts of the Criteo (Kaggle DAC) and Avazu click-log formats.

A :class:`DataFormat` turns the split fields of one line into a :class:`RawRow`:
a 0/1 label, the dense fields as floats (``nan`` when missing) and the
categorical fields as strings (``""`` when missing).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import re
from typing import NamedTuple, Optional, Sequence

from tfafm.data.errors import DataFormatError
from tfafm.schema import DenseFeature
from tfafm_choices import TABLE_DATA as TABLE


class RawRow(NamedTuple):
    """One parsed, not yet encoded, data row."""

    label: float
    dense: tuple[float, ...]
    sparse: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
    """The column order of one file, resolved to positions of a format's fields."""

    columns: tuple[str, ...]
    label: int
    dense: tuple[int, ...]
    categorical: tuple[int, ...]
    time: Optional[int]


@dataclasses.dataclass(frozen=True)
class DataFormat:
    """A click-log format.

    Args:
        name: the ``--data`` prefix, e.g. ``"criteo"``.
        layouts: accepted column orders (a header line must equal one of them,
            case-insensitively); the first is assumed for files without a header.
        label: the label column.
        dense: integer-count columns, fed as dense features.
        categorical: columns fed as categorical features, unchanged.
        time: an optional ``YYMMDDHH`` column, replaced by the categorical
            features ``hour_of_day`` (0-23) and ``weekday`` (0 = Monday).
        integer_dense: dense values must be whole numbers (counts).
    """

    name: str
    layouts: tuple[tuple[str, ...], ...]
    label: str
    dense: tuple[str, ...]
    categorical: tuple[str, ...]
    time: Optional[str] = None
    integer_dense: bool = True

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns a row is made of: label, dense, time (if any), categorical."""
        return (self.label,) + self.dense + ((self.time,) if self.time else ()) + self.categorical

    def to_dict(self) -> dict:
        """The column roles, enough for :func:`table_format` to rebuild a custom format."""
        return {"name": self.name, "label": self.label, "dense": list(self.dense),
                "categorical": list(self.categorical)}

    @property
    def sparse_names(self) -> tuple[str, ...]:
        derived = ("hour_of_day", "weekday") if self.time else ()
        return derived + self.categorical

    def layout(self, first_fields: list[str]) -> tuple[Layout, bool]:
        """The layout of a file given its first line's fields, and whether that line is a header."""
        lowered = [f.strip().lower() for f in first_fields]
        for columns in self.layouts:
            if lowered == [c.lower() for c in columns]:
                return self.resolve(columns), True
        return self.resolve(self.layouts[0]), False

    def resolve(self, columns: tuple[str, ...]) -> Layout:
        position = {c: i for i, c in enumerate(columns)}
        return Layout(
            columns=columns,
            label=position[self.label],
            dense=tuple(position[c] for c in self.dense),
            categorical=tuple(position[c] for c in self.categorical),
            time=position[self.time] if self.time else None,
        )

    def parse(self, fields: list[str], layout: Layout) -> RawRow:
        """Parses one line's fields; raises :class:`DataFormatError` (without location)."""
        if len(fields) != len(layout.columns):
            raise DataFormatError(
                f"expected {len(layout.columns)} columns ({describe_columns(layout.columns)}), "
                f"got {len(fields)}"
            )
        cols = layout.columns
        label = _parse_label(fields[layout.label], cols[layout.label])
        dense = tuple(_parse_count(fields[i], cols[i], self.integer_dense) for i in layout.dense)
        sparse = tuple(fields[i] for i in layout.categorical)
        if layout.time is not None:
            sparse = _parse_hour(fields[layout.time], cols[layout.time]) + sparse
        return RawRow(label, dense, sparse)


def shown(value: str, limit: int = 24) -> str:
    """``repr(value)``, shortened to about ``limit`` characters (with its length) when longer."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def _parse_label(value: str, column: str) -> float:
    if value == "0" or value == "1":
        return float(value)
    try:
        label = float(value)
    except ValueError:
        label = math.nan
    if label not in (0.0, 1.0):
        raise DataFormatError(f"expected a 0/1 label, got {shown(value)}", column=column)
    return label


def _parse_count(value: str, column: str, integer: bool = True) -> float:
    """An integer count (possibly written ``260.0``), or with ``integer=False`` any
    finite number; ``nan`` when empty."""
    if not value:
        return math.nan
    try:
        return float(int(value))
    except ValueError:
        pass
    except OverflowError:
        raise DataFormatError(f"integer out of range, got {shown(value)}", column=column) from None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (number.is_integer() if integer else math.isfinite(number)):
        expected = "an integer" if integer else "a finite number"
        raise DataFormatError(f"expected {expected}, got {shown(value)}", column=column)
    return number


def _parse_hour(value: str, column: str) -> tuple[str, str]:
    try:
        return _hour_fields(value)
    except ValueError:
        raise DataFormatError(f"expected a YYMMDDHH hour, got {shown(value)}", column=column) from None


@functools.lru_cache(maxsize=4096)
def _hour_fields(value: str) -> tuple[str, str]:
    """``(hour_of_day, weekday)`` of a ``YYMMDDHH`` string; ValueError if invalid."""
    if len(value) != 8 or not value.isdigit() or int(value[6:]) > 23:
        raise ValueError(value)
    day = datetime.date(2000 + int(value[:2]), int(value[2:4]), int(value[4:6]))
    return str(int(value[6:])), str(day.weekday())


def describe_columns(columns: tuple[str, ...]) -> str:
    """Column names with numbered runs shortened: ``label, I1..I13, C1..C26``."""
    parts: list[str] = []
    run: list[str] = []

    def flush() -> None:
        parts.extend([f"{run[0]}..{run[-1]}"] if len(run) > 2 else run)
        run.clear()

    for name in columns:
        match = re.fullmatch(r"([A-Za-z_]+)(\d+)", name)
        previous = re.fullmatch(r"([A-Za-z_]+)(\d+)", run[-1]) if run else None
        if not (match and previous and match[1] == previous[1] and int(match[2]) == int(previous[2]) + 1):
            flush()
        run.append(name)
    flush()
    return ", ".join(parts)


_CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
_CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))

CRITEO = DataFormat(
    name="criteo",
    layouts=(
        ("label",) + _CRITEO_DENSE + _CRITEO_CATEGORICAL,
        ("Id", "label") + _CRITEO_DENSE + _CRITEO_CATEGORICAL,
    ),
    label="label",
    dense=_CRITEO_DENSE,
    categorical=_CRITEO_CATEGORICAL,
)

_AVAZU_CATEGORICAL = (
    "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type",
    "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)

AVAZU = DataFormat(
    name="avazu",
    layouts=(("id", "click", "hour") + _AVAZU_CATEGORICAL,),
    label="click",
    dense=(),
    categorical=_AVAZU_CATEGORICAL,
    time="hour",
)

FORMATS: dict[str, DataFormat] = {f.name: f for f in (CRITEO, AVAZU)}



def table_format(label: str, dense: Sequence[str], categorical: Sequence[str]) -> DataFormat:
    """A format for Parquet tables with the given column roles (``parquet:`` data specs).

    Dense values may be any finite numbers; categorical values of any type are
    read as their text (integers in decimal).
    """
    names = [label, *dense, *categorical]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataFormatError(f"column(s) {repeated} given more than one role")
    if not categorical and not dense:
        raise DataFormatError("no feature columns: give categorical= and/or dense= columns")
    for name in [*dense, *categorical]:
        try:
            DenseFeature(name)
        except ValueError:
            raise DataFormatError(f"column {name!r} cannot be a feature name: tfafm's feature names are letters, "
                                  "digits and underscores (rename the column, or list the columns to read with "
                                  "categorical= and dense=)") from None
    return DataFormat(name=TABLE, layouts=(tuple(names),), label=label, dense=tuple(dense),
                      categorical=tuple(categorical), integer_dense=False)


def format_from_dict(config: dict) -> DataFormat:
    """The format saved by :meth:`DataFormat.to_dict`: a built-in one by name, else a table format."""
    if config["name"] in FORMATS:
        return FORMATS[config["name"]]
    return table_format(config["label"], config["dense"], config["categorical"])
