"""Atomic file and directory writes: a crash never leaves a half-written output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path``; renames it to ``path`` on success.

    Works for files and directories. On an exception the temporary is removed and
    an existing ``path`` is left untouched.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    tmp_dir = tempfile.mkdtemp(prefix=f".{stem}.tmp-", dir=parent)
    tmp = os.path.join(tmp_dir, stem + ext)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise RuntimeError(f"Nothing was written for {path}.")
        if os.path.isdir(path) and not os.path.islink(path):
            backup = tempfile.mkdtemp(prefix=f".{stem}.old-", dir=parent)
            os.replace(path, os.path.join(backup, base))
            os.replace(tmp, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
