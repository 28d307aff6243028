"""Dropping known third-party log lines around the one call that emits them, and nothing else."""

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
