"""Parsing ``--data`` specs that name files: ``criteo:PATH``, ``avazu:PATH``, ``parquet:PATH[?ROLES]``.

``PATH`` is a file, a directory (its data files, sorted) or a comma-separated
list of files. Criteo and Avazu files are text (optionally gzipped) or Parquet
tables with the same column names. ``parquet:`` reads any Parquet table; its
column roles follow a ``?``::

    parquet:train.parquet?label=click&categorical=cat1,cat4,cat6,cat8,cat9&dense=price

``label`` defaults to a column named ``label`` or ``click``; ``categorical``
defaults to every column that is neither the label, a dense column, nor a
pandas index (a name starting with ``__``); ``dense`` defaults to none.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse

from tfafm.data.errors import DataFormatError
from tfafm.data.formats import FORMATS, TABLE, DataFormat, table_format
from tfafm.data.parquet import check_unique, open_parquet
from tfafm.data.readers import resolve_paths
from tfafm.errors import UserError
from tfafm_choices import CACHE_DATA, FORMAT_DATA, KEYED_DATA, WITH_OPTIONS

FILE_PREFIXES = (*FORMATS, TABLE)
_ROLES = ("label", "dense", "categorical")


@dataclasses.dataclass(frozen=True)
class FileSource:
    """Data files of one format, named by a spec."""

    spec: str
    format: DataFormat
    paths: tuple[str, ...]


def absolute_spec(spec: str) -> str:
    """``spec`` with the paths it names made absolute, its options as they are: what a run records as its
    data, so that ``tfafm eval RUN`` from another directory reads the same files (a relative path read
    whatever file of that name the other directory held). Specs naming no file (``synthetic``) are kept.

    >>> absolute_spec("synthetic:1000")
    'synthetic:1000'
    >>> absolute_spec("parquet:/data/a.parquet,/data/b.parquet?label=click")
    'parquet:/data/a.parquet,/data/b.parquet?label=click'
    """
    kind, colon, rest = spec.partition(":")
    if not colon or not rest or kind not in (*FORMAT_DATA, *KEYED_DATA, CACHE_DATA):
        return spec
    location, mark, options = rest.partition("?") if kind in WITH_OPTIONS else (rest, "", "")
    paths = ",".join(os.path.abspath(path.strip()) if path.strip() else path for path in location.split(","))
    return f"{kind}:{paths}{mark}{options}"


def is_parquet(path: str) -> bool:
    """Whether ``path`` starts with Parquet's magic bytes."""
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def file_source(prefix: str, rest: str, spec: str) -> FileSource:
    """The files and format of ``prefix:rest`` (``prefix`` one of :data:`FILE_PREFIXES`)."""
    if prefix != TABLE:
        if not rest:
            raise UserError(f"Data spec {spec!r} needs a path: {prefix}:PATH.")
        return FileSource(spec, FORMATS[prefix], tuple(resolve_paths(rest)))
    location, _, query = rest.partition("?")
    if not location:
        raise UserError(f"Data spec {spec!r} needs a path: parquet:PATH[?label=...&categorical=...].")
    roles = urllib.parse.parse_qs(query, keep_blank_values=True, separator="&")
    unknown = sorted(set(roles) - set(_ROLES))
    if unknown:
        raise UserError(f"Unknown column role(s) {unknown} in {spec!r}; known: {', '.join(_ROLES)}.")
    listed = {role: [c for value in roles.get(role, []) for c in value.split(",") if c] for role in _ROLES}
    paths = tuple(resolve_paths(location))
    not_parquet = [p for p in paths if not is_parquet(p)]
    if not_parquet:
        raise DataFormatError("not a Parquet file", path=not_parquet[0])
    return FileSource(spec, _table_format(paths[0], listed), paths)


def _table_format(path: str, listed: dict[str, list[str]]) -> DataFormat:
    columns = open_parquet(path).schema_arrow.names
    if len(listed["label"]) > 1:
        raise DataFormatError(f"give one label column, not {', '.join(listed['label'])}", path=path)
    label = listed["label"][0] if listed["label"] else next(
        (c for c in columns if c.lower() in ("label", "click")), None)
    if label is None:
        raise DataFormatError(f"no label column (label or click); give one with ?label=NAME "
                              f"(columns: {', '.join(columns)})", path=path)
    dense = listed["dense"]
    categorical = listed["categorical"] or [
        c for c in columns if c != label and c not in dense and not c.startswith("__")]
    check_unique(columns, [label, *dense, *categorical], path)
    try:
        return table_format(label, dense, categorical)
    except DataFormatError as error:
        raise DataFormatError(error.reason, path=path) from None
