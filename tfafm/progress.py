"""Progress of long-running steps, on stderr: a live bar on a terminal, a plain line every few seconds in logs."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator, Optional, TextIO

LOG_INTERVAL_S = 10.0


def _plain_lines(description: str, total: Optional[int], stream: TextIO, interval: float,
                 unit: Optional[str] = None) -> Iterator[Callable]:
    """Yields ``advance(n=1)`` that prints ``description: done/total`` at most every ``interval`` seconds
    (with the rate when a ``unit`` is named)."""
    start = last = time.monotonic()
    done = 0
    printed = False

    def line(now: float) -> str:
        count = f"{done}/{total} ({100 * done / total:.0f}%)" if total else f"{done}"
        rate = f", {done / max(now - start, 1e-9):,.0f} {unit}/s" if unit else ""
        return f"{description}: {count}, {now - start:.0f} s{rate}"

    def advance(n: int = 1) -> None:
        nonlocal done, last, printed
        done += n
        now = time.monotonic()
        if now - last >= interval:
            print(line(now), file=stream, flush=True)
            last, printed = now, True

    yield advance
    if printed:  # close with the final count
        print(line(time.monotonic()) + ", done", file=stream, flush=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True,
                 interval: float = LOG_INTERVAL_S, unit: Optional[str] = None) -> Iterator[Callable]:
    """Yields an ``advance(n=1)`` callable that reports progress on stderr.

    On a terminal this draws a transient rich bar; otherwise (a log file, CI)
    it prints one plain line at most every ``interval`` seconds, and a final
    line if it printed any, so a step shorter than ``interval`` prints nothing.
    ``enabled=False`` prints nothing at all. With a ``unit`` (e.g. ``"rows"``)
    both also show the rate.
    """
    if not enabled:
        yield lambda n=1: None
        return
    stream = sys.stderr
    if not stream.isatty():
        yield from _plain_lines(description, total, stream, interval, unit)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if unit:
        columns.append(TextColumn("{task.fields[rate]}"))
    with Progress(*columns, console=Console(file=stream), transient=True) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            bar.advance(task, n)
            speed = bar.tasks[0].speed if unit else None  # the only task
            if speed:
                bar.update(task, rate=f"{speed:,.0f} {unit}/s")

        yield advance
