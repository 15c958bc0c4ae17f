"""Range checks of numeric options, shared by the library and the command line.

Each function takes the option's name as the user wrote it (``--calib-batch``) and raises
:class:`~onnxprune.errors.OnnxPruneError` with one line naming the option, the allowed range and
the value given; the library entry points call them, so the API refuses the same values as the CLI.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

from .errors import OnnxPruneError

__all__ = ["integer", "number", "fraction", "fractions"]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu")


def integer(name: str, value, *, low: int | None = None, optional: bool = False) -> int | None:
    """An integer ≥ ``low`` (``None`` passes when ``optional``)."""
    if value is None and optional:
        return None
    if not _is_int(value) or (low is not None and value < low):
        raise OnnxPruneError(f"{name} {value!r}: expected a whole number ≥ {low}" if low is not None
                             else f"{name} {value!r}: expected a whole number")
    return int(value)


def number(name: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, optional: bool = False) -> float | None:
    """A finite number in the interval given (``low_open``/``high_open``: bound excluded)."""
    if value is None and optional:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not math.isfinite(v) or (low is not None and (v < low or (low_open and v == low))) \
            or (high is not None and (v > high or (high_open and v == high))):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        rng = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise OnnxPruneError(f"{name} {value!r}: expected a number in {rng}")
    return v


def fraction(name: str, value, *, optional: bool = False) -> float | None:
    """A removal ratio: in ``(0, 1)``."""
    return number(name, value, low=0, high=1, low_open=True, high_open=True, optional=optional)


def fractions(name: str, values: Iterable | None) -> tuple[float, ...] | None:
    """Removal ratios, each in ``(0, 1)``, at least one, no repeats."""
    if values is None:
        return None
    out = tuple(fraction(name, v) for v in values)
    if not out:
        raise OnnxPruneError(f"{name}: give at least one ratio in (0, 1)")
    if len(set(out)) != len(out):
        raise OnnxPruneError(f"{name} {list(out)}: a ratio is repeated")
    return out
