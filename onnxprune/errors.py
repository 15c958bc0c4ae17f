"""Error types.

`OnnxPruneError` is the root of every *user* error (bad input, impossible request): the CLI
prints its one-line message and exits 1. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = [
    "OnnxPruneError",
    "UnsupportedModelError",
    "PlanError",
    "ValidationError",
    "BugError",
]


class OnnxPruneError(Exception):
    """A problem with the user's input or request; the message says what to do."""


class UnsupportedModelError(OnnxPruneError):
    """The model cannot be read or handled (opset, missing weights, invalid graph)."""


class PlanError(OnnxPruneError):
    """A plan cannot be made or applied (bad target, stale or edited-wrongly plan)."""


class ValidationError(OnnxPruneError):
    """A result failed validation (checker, shapes, or a requested tolerance)."""


class BugError(Exception):
    """A broken internal invariant (a rewrite post-condition...): a bug in onnxprune, not a user error.

    Deliberately not an :class:`OnnxPruneError`: the CLI says it is a bug, exits with its own
    code (3) and shows the traceback with ``--debug``.
    """
