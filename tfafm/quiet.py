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


def import_tensorflow(initialize_devices: bool = False) -> None:
    """Imports TensorFlow without its native start-up notes.

    Does nothing special when the user set ``TF_CPP_MIN_LOG_LEVEL`` (they chose
    their logging) or already imported TensorFlow.
    """
    import sys

    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or ("tensorflow" in sys.modules and not initialize_devices):
        import tensorflow  # noqa: F401

        return
    with native_stderr_silenced():
        import tensorflow as tf

        if initialize_devices:
            tf.config.list_logical_devices("CPU")
