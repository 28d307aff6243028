"""Resolving data paths, and the exact (line by line) reader of Criteo and Avazu text files.

:class:`RowReader` parses every line in Python; it is the reference the
columnar reader (:mod:`tfafm.data.columnar`) falls back to for the part of a
file where a line is malformed, so both report the same ``file:line: column``
errors. Files are read in blocks (:mod:`tfafm.data.textfiles`), never whole.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

from tfafm.data.errors import DataFormatError
from tfafm.data.formats import DataFormat, RawRow
from tfafm.data.textfiles import TextBlock, is_blank, text_blocks
from tfafm.errors import MissingFileError, UserError

_DATA_SUFFIXES = {"", ".txt", ".csv", ".tsv", ".gz", ".parquet"}


def resolve_paths(spec: str) -> list[str]:
    """Data files named by ``spec``: a file, a directory (its data files, sorted) or a comma-separated list,
    each once.

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
                raise MissingFileError(f"No data files (.txt, .csv, .tsv, .gz, .parquet) in directory: {part}")
            paths.extend(found)
        elif os.path.isfile(part):
            paths.append(part)
        elif os.path.exists(part):
            raise UserError(f"{part}: not a regular file (a pipe, device or socket); tfafm reads a data file more "
                            "than once, so save the data to a file first")
        else:
            raise MissingFileError(f"Data file not found: {part}")
    if not paths:
        raise MissingFileError(f"No data path given in {spec!r}.")
    return each_file_once(paths)


def each_file_once(paths: list[str]) -> list[str]:
    """``paths`` without a file named again (``a.csv,dir/`` with ``a.csv`` in ``dir``, overlapping globs), in
    order of first mention: a file is data once, not twice."""
    seen: set[tuple[int, int]] = set()
    once = []
    for path in paths:
        status = os.stat(path)
        if (status.st_dev, status.st_ino) not in seen:  # the file itself, whatever path, link or case names it
            seen.add((status.st_dev, status.st_ino))
            once.append(path)
    return once


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
            raise MissingFileError(f"Data file not found: {missing[0]}")
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
        for block in text_blocks(path, self.format):
            for row in exact_rows(block, self.format, self.skip_bad_lines):
                if row is None:
                    bad += 1
                    self.bad_lines += 1
                else:
                    good += 1
                yield row
        if not good:
            raise no_rows_error(path, bad)


def no_rows_error(path: str, bad_lines: int) -> DataFormatError:
    """The error for a file without a single good data row."""
    skipped = f" ({bad_lines} bad lines skipped)" if bad_lines else ""
    return DataFormatError(f"file has no data rows{skipped}", path=path)


def exact_rows(block: TextBlock, data_format: DataFormat, skip_bad_lines: bool) -> Iterator[RawRow | None]:
    """Parses ``block`` line by line: one :class:`RawRow` per data line, ``None`` for a
    skipped bad line; blank lines are ignored. Raises :class:`DataFormatError` at the
    first bad line unless ``skip_bad_lines``."""
    for number, line in block.lines():
        if is_blank(line):
            continue
        try:
            yield data_format.parse(line.split(block.delimiter), block.layout)
        except DataFormatError as error:
            if not skip_bad_lines:
                raise error.at(block.path, number) from None
            yield None
