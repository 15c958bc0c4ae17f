"""Logging set-up for the command line: ``onnxprune: message`` lines on stderr.

Levels: INFO by default (phase progress, fallbacks worth knowing), WARNING with ``--quiet``,
DEBUG with ``--verbose``. A library user configures ``logging`` as they like; onnxprune only
adds a handler when :func:`configure` is called (the CLI does).
"""
from __future__ import annotations

import logging
import sys

__all__ = ["configure"]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests and tools replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    """Send the ``onnxprune`` loggers to stderr at the level the flags ask for (idempotent)."""
    root = logging.getLogger("onnxprune")
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        root.addHandler(_StderrHandler())
    for h in root.handlers:
        if isinstance(h, _StderrHandler):
            h.setFormatter(logging.Formatter("onnxprune: %(levelname)s: %(message)s" if verbose
                                             else "onnxprune: %(message)s"))
