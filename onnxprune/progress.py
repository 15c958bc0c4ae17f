"""Feedback on long phases: a tqdm bar on a terminal, periodic log lines elsewhere.

Every long loop (recording calibration statistics, measuring sensitivity, least-squares
reconstruction, timing) wraps its iterable in :func:`progress` with a phase label::

    for feeds in progress(batches, "recording", total=len(batches), unit="batch"):
        ...

Case 1: stderr is a terminal and the ``onnxprune`` logger shows INFO -> a tqdm bar (one per
phase; it disappears when the phase ends and one INFO line states what was done).
Case 2: otherwise (CI logs, pipes, a library user's process) -> an INFO log line at most every
:data:`LOG_EVERY_S` seconds while the phase runs (count, total, elapsed), and one when it ends
(a phase shorter than that ends with a DEBUG line only: short runs stay quiet).
Case 3: the logger is quieter than INFO (``--quiet``) -> nothing.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress", "LOG_EVERY_S"]

T = TypeVar("T")
log = logging.getLogger("onnxprune.progress")
LOG_EVERY_S = 10.0


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress(items: Iterable[T], label: str, *, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Yield ``items`` while reporting progress of the phase ``label`` (see the module docstring)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not log.isEnabledFor(logging.INFO):
        yield from items
        return
    t0 = time.monotonic()
    done = 0
    if _terminal():
        from tqdm import tqdm

        with tqdm(items, desc=label, total=total, unit=unit, leave=False, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for item in bar:
                yield item
                done += 1
    else:
        of = f"/{total}" if total is not None else ""
        last = t0
        for item in items:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= LOG_EVERY_S:
                last = now
                log.info("%s: %d%s %s, %.0f s", label, done, of, unit, now - t0)
    took = time.monotonic() - t0
    (log.info if took >= LOG_EVERY_S else log.debug)("%s: %d %s in %.1f s", label, done, unit, took)
