"""What a cache shard holds, read from its TFRecord framing: size, records, rows and a digest.

A TFRecord file is a sequence of records, each framed as an 8-byte
little-endian length, a 4-byte CRC of that length, the data, and a 4-byte
masked CRC-32C of the data. :func:`summarize` walks the framing (seeking over
the data, so it reads 16 bytes per record) and hashes every record's length
and data CRC: the digest identifies the shard's content (a shard of another
cache, or of another format, has other CRCs), and TensorFlow's reader checks
each record's data against its CRC while reading, so together they prove the
rows read are the rows written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from typing import Optional

_HEADER = struct.Struct("<QI")  # length, masked CRC of the length
_FOOTER = struct.Struct("<I")  # masked CRC-32C of the data


@dataclasses.dataclass(frozen=True)
class ShardSummary:
    """A shard file's size in bytes, record count, rows and digest (see the module docstring)."""

    bytes: int
    records: int
    rows: int
    digest: str


class DamagedShard(Exception):
    """The file is not a whole TFRecord file of rows of the expected width (the message says why)."""


def summarize(path: str, row_bytes: int) -> ShardSummary:
    """The :class:`ShardSummary` of the TFRecord file ``path`` whose records hold rows of
    ``row_bytes`` bytes; raises :class:`DamagedShard` when the framing or a record length is wrong."""
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    records = data_bytes = 0
    with open(path, "rb") as f:
        position = 0
        while position < size:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                raise DamagedShard(f"ends inside the header of record {records + 1} (truncated?)")
            length, _ = _HEADER.unpack(header)
            end = position + _HEADER.size + length + _FOOTER.size
            if end > size:
                raise DamagedShard(f"ends inside record {records + 1} (truncated, or not a TFRecord file)")
            if length % row_bytes:
                raise DamagedShard(f"record {records + 1} holds {length} bytes, not whole rows of {row_bytes} "
                                   "bytes (a shard of another cache or format?)")
            f.seek(length, os.SEEK_CUR)
            (crc,) = _FOOTER.unpack(f.read(_FOOTER.size))
            digest.update(struct.pack("<QI", length, crc))
            records += 1
            data_bytes += length
            position = end
    return ShardSummary(size, records, data_bytes // row_bytes, digest.hexdigest())


def mismatch(path: str, expected: dict, row_bytes: int) -> Optional[str]:
    """Why the shard at ``path`` is not the one a manifest entry (``bytes``, ``rows``,
    ``digest``) describes, or None when it is."""
    try:
        summary = summarize(path, row_bytes)
    except DamagedShard as error:
        return str(error)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if summary.bytes != expected["bytes"]:
        return f"has {summary.bytes} bytes, the manifest says {expected['bytes']} (truncated or replaced?)"
    if summary.rows != expected["rows"]:
        return f"holds {summary.rows} rows, the manifest says {expected['rows']}"
    if summary.digest != expected["digest"]:
        return "is not the shard this cache wrote (its records differ: replaced by another cache's shard?)"
    return None
