"""Shared helpers of the benchmark scripts: environment description and timing."""

from __future__ import annotations

import os
import platform
import re
import time
from contextlib import contextmanager

from tfafm.io_utils import atomic_write_text


def environment() -> str:
    """One line naming the machine and library versions the numbers come from."""
    import keras
    import numpy as np
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, TensorFlow {tf.__version__}, "
            f"Keras {keras.__version__}, NumPy {np.__version__}")


@contextmanager
def stopwatch():
    """Yields a dict whose ``seconds`` is set when the block ends."""
    result = {}
    start = time.perf_counter()
    yield result
    result["seconds"] = time.perf_counter() - start


def write_section(path: str, name: str, text: str) -> None:
    """Puts ``text`` into ``path`` between ``<!-- begin name -->`` and ``<!-- end name -->``,
    replacing that section if the file has it (other sections are kept), else appending it."""
    section = f"<!-- begin {name} -->\n{text.rstrip()}\n<!-- end {name} -->\n"
    old = open(path).read() if os.path.exists(path) else ""
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->\n.*?<!-- end {re.escape(name)} -->\n", re.S)
    new = pattern.sub(lambda _: section, old, count=1) if pattern.search(old) else old + ("\n" if old else "") + section
    atomic_write_text(path, new)


def litert_scores(path: str, dataset) -> dict:
    """AUC and LogLoss of a ``.tflite`` file on a dataset of ``(features, labels)`` batches, through the interpreter."""
    import numpy as np

    from tfafm.export import LiteRTRunner
    from tfafm.metrics import scores

    runner = LiteRTRunner(path)
    predictions, labels = [], []
    for features, batch_labels in dataset:
        predictions.append(runner({k: v.numpy() for k, v in features.items()}).reshape(-1))
        labels.append(batch_labels.numpy().reshape(-1))
    return scores(np.concatenate(labels), np.concatenate(predictions))
