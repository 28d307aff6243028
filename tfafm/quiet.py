"""Silencing TensorFlow's native start-up notes (oneDNN, CUDA probing) on stderr."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null for the duration of the block.

    TensorFlow's C++ runtime prints its start-up notes before any log level
    applies, straight to the file descriptor; Python's ``sys.stderr`` is not
    involved and Python exceptions are unaffected.
    """
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


_logging_chosen_by_tfafm = False


def import_tensorflow(initialize_devices: bool = False) -> None:
    """Imports TensorFlow without its native start-up notes and INFO lines.

    Sets ``TF_CPP_MIN_LOG_LEVEL=1`` (warnings and errors still show) unless
    the user set it (they chose their logging) or imported TensorFlow first.
    ``initialize_devices`` also creates the devices quietly (CUDA probing).
    """
    import sys

    global _logging_chosen_by_tfafm
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "tensorflow" not in sys.modules:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
        _logging_chosen_by_tfafm = True
        with native_stderr_silenced():
            import tensorflow  # noqa: F401
    import tensorflow as tf

    if initialize_devices:
        with tensorflow_notes_silenced():
            tf.config.list_logical_devices("CPU")


def tensorflow_notes_silenced():
    """Silences native notes (converter, interpreter) unless the user chose TF's logging."""
    return native_stderr_silenced() if _logging_chosen_by_tfafm else contextlib.nullcontext()
