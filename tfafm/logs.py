"""Dropping or collecting known third-party log lines around the one call that emits them, and nothing else."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


class _DropContaining(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@contextlib.contextmanager
def dropping(logger_name: str, *fragments: str) -> Iterator[None]:
    """Within the block, records of ``logger_name`` containing one of ``fragments`` are dropped.

    The filter sits on that one logger (records of other loggers, and other
    messages of this one, pass) and is removed when the block ends, so the
    process's logging is as it was.
    """
    logger = logging.getLogger(logger_name)
    drop = _DropContaining(fragments)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]):
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def collecting(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Within the block, the records of ``logger_name`` and its children are collected into the list
    yielded instead of reaching the root logger (whose last-resort handler prints warnings to stderr):
    the caller reports what matters in its own words. Handlers the user put on that logger still get
    them; the logger is as it was when the block ends."""
    logger = logging.getLogger(logger_name)
    records: list[logging.LogRecord] = []
    handler, propagate = _Collect(records), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
