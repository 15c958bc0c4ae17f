"""Reductions across a group's members, and normalisations across groups, as tables."""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

__all__ = ["REDUCE", "NORMALIZE"]


def _quiet(fn: Callable[..., np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def run(m: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            return fn(m, axis=0)

    return run


# members: array [n_members, n_channels] with NaN where a member does not cover a channel
REDUCE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": _quiet(np.nanmean),
    "sum": _quiet(np.nansum),
    "max": _quiet(np.nanmax),
}


def _by(stat: Callable[[np.ndarray], float]) -> Callable[[np.ndarray], np.ndarray]:
    def run(s: np.ndarray) -> np.ndarray:
        d = stat(s)
        return s / d if d > 0 and np.isfinite(d) else s

    return run


# one group's scores -> scores comparable with other groups'
NORMALIZE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": _by(lambda s: float(np.mean(s))),
    "max": _by(lambda s: float(np.max(s))),
    "sum": _by(lambda s: float(np.sum(s))),
    "none": lambda s: s,
}
