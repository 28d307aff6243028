"""A data cache's ``manifest.json``: writing it, and reading it back checked as a whole.

Every field a cache's reader uses is checked for presence, type and range
when the manifest is read, so a hand-edited or damaged manifest is one
:class:`~tfafm.errors.UserError` naming the file and the field, never a
``KeyError`` later on.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from tfafm.data.errors import DataFormatError
from tfafm.data.formats import format_from_dict
from tfafm.data.specs import FILE_PREFIXES
from tfafm.errors import UserError
from tfafm.jsonfile import read_json

CACHE_KIND = "data-cache"
CACHE_VERSION = 2
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "validation")
REBUILD = "rebuild the cache with tfafm prepare"


def write_manifest(directory: str, manifest: dict[str, Any]) -> None:
    """Writes ``manifest`` (with the cache's kind and version) into ``directory``, a cache being staged."""
    with open(os.path.join(directory, MANIFEST_FILE), "w") as f:
        json.dump({"kind": CACHE_KIND, "version": CACHE_VERSION, **manifest}, f, indent=2)


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest at ``path``, checked (see the module docstring).

    Raises:
        UserError: naming ``path`` and the first field that is missing or wrong.
    """
    try:
        manifest = read_json(path)
    except UserError as error:
        raise UserError(f"{error}; {REBUILD}.") from None
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror or error}).") from None
    _Checker(path).check(manifest)
    return manifest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class _Checker:
    """Checks a parsed manifest field by field; the first problem is a :class:`UserError`."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, field: str, expected: str, value: Any) -> UserError:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        return UserError(f"{self.path}: {field} must be {expected}, got {shown}; {REBUILD}.")

    def get(self, container: dict, key: str, field: str, accept: Callable[[Any], bool], expected: str) -> Any:
        if key not in container:
            raise UserError(f"{self.path}: {field} is missing; {REBUILD}.")
        value = container[key]
        if not accept(value):
            raise self.fail(field, expected, value)
        return value

    def object(self, container: dict, key: str, field: str) -> dict:
        return self.get(container, key, field, lambda v: isinstance(v, dict), "an object")

    def check(self, manifest: Any) -> None:
        if not isinstance(manifest, dict):
            raise self.fail("the manifest", "an object", type(manifest).__name__)
        if manifest.get("kind") != CACHE_KIND or manifest.get("version") != CACHE_VERSION:
            raise UserError(f"{self.path}: not a version-{CACHE_VERSION} tfafm data cache; {REBUILD}.")
        self.get(manifest, "spec", "spec", lambda v: isinstance(v, str) and v.partition(":")[0] in FILE_PREFIXES
                 and bool(v.partition(":")[2]), "criteo:PATH, avazu:PATH or parquet:PATH")
        self.format(self.object(manifest, "format", "format"))
        source = self.object(manifest, "source", "source")
        files = self.get(source, "files", "source.files", lambda v: isinstance(v, list) and bool(v),
                         "a non-empty list")
        for i, entry in enumerate(files):
            field = f"source.files[{i}]"
            if not isinstance(entry, dict):
                raise self.fail(field, "an object", entry)
            self.get(entry, "path", f"{field}.path", lambda v: isinstance(v, str) and bool(v), "a path")
            self.get(entry, "size", f"{field}.size", _count, "an integer >= 0")
            self.get(entry, "mtime_ns", f"{field}.mtime_ns", _is_int, "an integer")
        split = self.object(manifest, "split", "split")
        self.get(split, "validation_every", "split.validation_every", lambda v: _is_int(v) and v >= 2,
                 "an integer >= 2")
        self.preprocessing(self.object(manifest, "preprocessing", "preprocessing"))
        self.get(manifest, "skip_bad_lines", "skip_bad_lines", lambda v: isinstance(v, bool), "true or false")
        self.get(manifest, "data_lines", "data_lines", _count, "an integer >= 0")
        self.get(manifest, "bad_lines", "bad_lines", _count, "an integer >= 0")
        layout = self.object(manifest, "layout", "layout")
        for key in ("dense", "sparse"):
            self.get(layout, key, f"layout.{key}", _names, "a list of column names")
        splits = self.object(manifest, "splits", "splits")
        for name in SPLITS:
            self.split(self.object(splits, name, f"splits.{name}"), f"splits.{name}")

    def format(self, value: dict) -> None:
        try:
            format_from_dict(value)
        except DataFormatError as error:
            raise UserError(f"{self.path}: format: {error.reason}; {REBUILD}.") from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self.fail("format", "a data format (name, label, dense, categorical)", value) from None

    def preprocessing(self, value: dict) -> None:
        self.get(value, "fitted", "preprocessing.fitted", lambda v: isinstance(v, bool), "true or false")
        self.get(value, "min_count", "preprocessing.min_count", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        self.get(value, "max_vocabulary", "preprocessing.max_vocabulary",
                 lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1")
        self.get(value, "digest", "preprocessing.digest", lambda v: isinstance(v, str), "a digest string")

    def split(self, value: dict, field: str) -> None:
        rows = self.get(value, "rows", f"{field}.rows", _count, "an integer >= 0")
        shards = self.get(value, "shards", f"{field}.shards", lambda v: isinstance(v, list) and bool(v),
                          "a non-empty list")
        total = 0
        for i, shard in enumerate(shards):
            where = f"{field}.shards[{i}]"
            if not isinstance(shard, dict):
                raise self.fail(where, "an object", shard)
            self.get(shard, "file", f"{where}.file", _plain_name, "a file name inside the cache")
            total += self.get(shard, "rows", f"{where}.rows", _count, "an integer >= 0")
            self.get(shard, "bytes", f"{where}.bytes", _count, "an integer >= 0")
            self.get(shard, "digest", f"{where}.digest", lambda v: isinstance(v, str), "a digest string")
        if total != rows:
            raise UserError(f"{self.path}: {field}.rows is {rows} but its shards hold {total} rows; {REBUILD}.")


def _plain_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and value not in (".", "..") and "/" not in value \
        and os.sep not in value
