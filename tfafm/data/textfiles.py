"""Reading delimited text files (optionally gzipped) as blocks of whole lines.

Both parsers read files through :func:`text_blocks`: the columnar one hands a
block to pyarrow, the exact one walks its lines. Lines end at ``\\n``,
``\\r\\n`` or ``\\r`` (Python's universal newlines, which pyarrow's CSV reader
also follows) and are numbered from 1 in the file. A UTF-8 byte-order mark at
the start of a file is dropped. The delimiter (tab or comma) and an optional
header line are detected from the first non-blank line.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import re
import zlib
from typing import IO, Iterator

from tfafm.data.errors import DataFormatError
from tfafm.data.formats import DataFormat, Layout

BLOCK_BYTES = 32 << 20
_BOM = b"\xef\xbb\xbf"
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n|$)")


@dataclasses.dataclass(frozen=True)
class TextBlock:
    """Whole lines of one file.

    Attributes:
        path: the file.
        first_line: line number (from 1) of the block's first line in the file.
        data: the lines' bytes, header excluded.
        delimiter: the file's field delimiter.
        layout: the file's column layout.
    """

    path: str
    first_line: int
    data: bytes | bytearray
    delimiter: str
    layout: Layout

    def lines(self) -> Iterator[tuple[int, str]]:
        """``(line number, text)`` of every line (blank ones included), decoded as UTF-8
        with undecodable bytes replaced."""
        text = io.StringIO(self.data.decode("utf-8", errors="replace"), newline=None)
        for number, line in enumerate(text, start=self.first_line):
            yield number, line.rstrip("\n")

    def split(self) -> tuple["TextBlock", "TextBlock"] | None:
        """Two blocks of about half the lines each, or None for a block of one line."""
        middle = self.data.find(b"\n", len(self.data) // 2)
        if middle < 0 or middle + 1 >= len(self.data):
            middle = self.data.rfind(b"\n", 0, max(len(self.data) // 2, 1))
        if middle < 0 or middle + 1 >= len(self.data):
            return None
        head, tail = self.data[: middle + 1], self.data[middle + 1 :]
        return (dataclasses.replace(self, data=head),
                dataclasses.replace(self, first_line=self.first_line + count_lines(head), data=tail))


_SPACES = " \f\v\r\n"


def is_blank(line: str) -> bool:
    """Whether a line holds nothing but spaces: such lines are skipped like empty ones (a tab is
    a field separator, so a line of tabs is a line of empty fields)."""
    return not line.strip(_SPACES)


def count_lines(data: bytes | bytearray) -> int:
    """Line ends (``\\n``, ``\\r\\n`` or ``\\r``) in ``data``."""
    ends = data.count(b"\n")
    if b"\r" in data:
        ends += data.count(b"\r") - data.count(b"\r\n")
    return ends


def open_binary(path: str) -> IO[bytes]:
    """``path`` opened for reading bytes, decompressed when it is gzipped."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_after(carry: bytes, f: IO[bytes], size: int, path: str, line: int) -> tuple[bytearray, int]:
    """``carry`` followed by up to ``size`` bytes of ``f`` (read in place, without a second
    copy), and the number of bytes read."""
    data = bytearray(len(carry) + size)
    data[: len(carry)] = carry
    try:
        with memoryview(data) as view:
            read = f.readinto(view[len(carry):])
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataFormatError(
            f"gzip data truncated or corrupt after line {line - 1} ({error}); the file is damaged",
            path=path,
        ) from None
    del data[len(carry) + read:]
    return data, read


def _first_data_line(data: bytes) -> tuple[int, int, int] | None:
    """``(start, end, blank lines before)`` of the first non-blank line in ``data``, or None."""
    blank = 0
    for match in _LINE.finditer(data):
        if match.start() == len(data):
            break
        if match.group().strip(_SPACES.encode()):
            return match.start(), match.end(), blank
        blank += 1
    return None


def text_blocks(path: str, data_format: DataFormat, block_bytes: int = BLOCK_BYTES) -> Iterator[TextBlock]:
    """The lines of ``path`` in blocks of about ``block_bytes``, header removed.

    Raises :class:`DataFormatError` for gzip data that ends early or is corrupt.
    """
    with open_binary(path) as f:
        line, carry, start = 1, b"", True
        delimiter = layout = None
        while True:
            data, read = _read_after(carry, f, block_bytes, path, line + count_lines(carry))
            if start:
                if data.startswith(_BOM):
                    del data[: len(_BOM)]
                start = False
            cut = len(data) if not read else data.rfind(b"\n") + 1 or data.rfind(b"\r") + 1
            carry = bytes(data[cut:])
            del data[cut:]
            if layout is None and data:
                first = _first_data_line(data)
                if first is None:
                    line += count_lines(data)
                    data = bytearray()
                else:
                    begin, end, blank = first
                    fields = data[begin:end].rstrip(b"\r\n").decode("utf-8", errors="replace")
                    delimiter = "\t" if "\t" in fields else ","
                    layout, is_header = data_format.layout(fields.split(delimiter))
                    line += blank + (1 if is_header else 0)
                    del data[: end if is_header else begin]
            if data:
                yield TextBlock(path, line, data, delimiter, layout)
                line += count_lines(data)
            if not read:
                return
