"""Streaming readers for Criteo and Avazu text files (optionally gzipped).

Files are read line by line and never loaded whole. The delimiter (tab or comma)
and an optional header line are detected per file from its first line.
"""

from __future__ import annotations

import gzip
import os
from typing import IO, Iterator, Sequence

from tfafm.data.errors import DataFormatError
from tfafm.data.formats import DataFormat, RawRow

_DATA_SUFFIXES = {"", ".txt", ".csv", ".tsv", ".gz"}


def resolve_paths(spec: str) -> list[str]:
    """Data files named by ``spec``: a file, a directory (its data files, sorted) or a comma-separated list.

    Raises FileNotFoundError naming the first path that does not exist.
    """
    paths: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if os.path.isdir(part):
            found = sorted(
                os.path.join(part, name)
                for name in os.listdir(part)
                if not name.startswith(".")
                and os.path.isfile(os.path.join(part, name))
                and os.path.splitext(name)[1].lower() in _DATA_SUFFIXES
            )
            if not found:
                raise FileNotFoundError(f"No data files (.txt, .csv, .tsv, .gz) in directory: {part}")
            paths.extend(found)
        elif os.path.isfile(part):
            paths.append(part)
        else:
            raise FileNotFoundError(f"Data file not found: {part}")
    if not paths:
        raise FileNotFoundError(f"No data path given in {spec!r}.")
    return paths


def _open_text(path: str) -> IO[str]:
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


class RowReader:
    """Iterates the rows of one or more files of a :class:`DataFormat`.

    Every iteration re-reads the files from the start. Malformed lines raise
    :class:`DataFormatError` naming file, line and column; with
    ``skip_bad_lines=True`` they are skipped and counted in :attr:`bad_lines`
    (the count of the latest pass). Blank lines are ignored.

    Args:
        data_format: the format of every file.
        paths: data files, read in this order.
        skip_bad_lines: skip and count malformed lines instead of raising.
    """

    def __init__(self, data_format: DataFormat, paths: Sequence[str], *, skip_bad_lines: bool = False):
        if not paths:
            raise ValueError("RowReader needs at least one file.")
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"Data file not found: {missing[0]}")
        self.format = data_format
        self.paths = list(paths)
        self.skip_bad_lines = skip_bad_lines
        self.bad_lines = 0

    def __iter__(self) -> Iterator[RawRow]:
        return (row for _, row in self.indexed())

    def indexed(self) -> Iterator[tuple[int, RawRow]]:
        """Yields ``(index, row)``; ``index`` counts data lines over all files, bad ones included.

        The index therefore does not depend on ``skip_bad_lines``, which makes
        splits that are keyed on it reproducible.
        """
        self.bad_lines = 0
        index = 0
        for path in self.paths:
            for row in self._read(path):
                if row is not None:
                    yield index, row
                index += 1

    def _read(self, path: str) -> Iterator[RawRow | None]:
        """Rows of one file; ``None`` for each skipped bad line."""
        good = bad = 0
        with _open_text(path) as f:
            delimiter = layout = None
            for number, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                if layout is None:
                    delimiter = "\t" if "\t" in line else ","
                    layout, is_header = self.format.layout(line.split(delimiter))
                    if is_header:
                        continue
                try:
                    row = self.format.parse(line.split(delimiter), layout)
                except DataFormatError as error:
                    if not self.skip_bad_lines:
                        raise error.at(path, number) from None
                    bad += 1
                    self.bad_lines += 1
                    yield None
                    continue
                good += 1
                yield row
        if not good:
            skipped = f" ({bad} bad lines skipped)" if bad else ""
            raise DataFormatError(f"file has no data rows{skipped}", path=path)
