"""Zero single weight elements (unstructured pruning); shapes and graph are unchanged."""
from __future__ import annotations

import numpy as np

from ..graph import Model

__all__ = ["zero_elements"]


def zero_elements(model: Model, masks: dict[str, np.ndarray]) -> dict[str, int]:
    """Set ``value[mask] = 0`` for each named constant; returns the zeros added per tensor."""
    out = {}
    for name, mask in masks.items():
        value = np.array(model.const(name), copy=True)
        before = int((value == 0).sum())
        value[mask] = 0
        model.set_const(name, value)
        out[name] = int((value == 0).sum()) - before
    return out
