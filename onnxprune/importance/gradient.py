"""Gradient criteria from a recorded calibration run (``gradients.GradientRecord``).

Every parameter of a group with recorded statistics is a member (producer and consumer weights,
biases, normalisation scales); a channel's value sums the member's entries for that channel:

* ``taylor``: the first-order Taylor estimate of the loss change when the channel's parameters
  are zeroed (Molchanov et al. 2019, group form): √(Σ_batches (Σ_channel g·w)² / B) where the
  record has per-batch slice sums (``taylor_sq_ax0/1``), else |Σ g·w|. Activation-side Taylor
  Σ|a·∂L/∂a| of the producing layer joins as a member where recorded.
* ``fisher``: ½·Σ E[g²]·w² (second order, OBD with the empirical Fisher diagonal).
* ``grad``: mean |g| over the channel's entries.
* ``hybrid``: a weighted blend of normalised magnitude (l2), taylor, and — when recorded —
  activation magnitude; weights ``ScoreData.hybrid_weights`` (default equal).
"""
from __future__ import annotations

import numpy as np

from ..analysis import Analysis, Group, ParamAxis
from .magnitude import member_matrix

__all__ = ["taylor", "fisher", "grad", "hybrid"]

ROLES = {"out", "in", "bias", "scale", "affine"}


def _reduce_axis(v: np.ndarray, axis: int, how=np.sum) -> np.ndarray:
    return how(v, axis=tuple(i for i in range(v.ndim) if i != axis)) if v.ndim > 1 else v


def _stat(an: Analysis, rec, fn):
    def per_label(p: ParamAxis):
        d = rec.stats.get(p.tensor)
        if not d:
            return None
        return fn(d, an.model.const(p.tensor), p.axis, rec.batches or 1)

    return per_label


def taylor(an: Analysis, group: Group, data) -> np.ndarray:
    rec = data.gradients

    def has_sq(p):
        return f"taylor_sq_ax{p.axis}" in rec.stats.get(p.tensor, {})

    per_batch = member_matrix(an, group, ROLES, lambda p: rec.stats[p.tensor][f"taylor_sq_ax{p.axis}"] /
                              (rec.batches or 1) if has_sq(p) else None, np.sqrt)
    summed = member_matrix(an, group, ROLES, lambda p: None if has_sq(p) or p.tensor not in rec.stats else
                           _reduce_axis(rec.stats[p.tensor]["sum_gw"], p.axis), np.abs)
    weights = np.concatenate([per_batch, summed])
    act = member_matrix(an, group, {"out"}, lambda p: rec.stats.get(p.tensor, {}).get("act_taylor")
                        if p.axis == 0 and p.tensor in rec.stats else None)
    return np.concatenate([weights, act]) if act.size else weights


def fisher(an: Analysis, group: Group, data) -> np.ndarray:
    rec = data.gradients
    return member_matrix(an, group, ROLES, _stat(an, rec, lambda d, w, ax, n: 0.5 * _reduce_axis(
        d["sum_g2"] / n * np.square(w.astype(np.float64)), ax)))


def grad(an: Analysis, group: Group, data) -> np.ndarray:
    rec = data.gradients
    return member_matrix(an, group, ROLES, _stat(an, rec, lambda d, w, ax, n: _reduce_axis(
        d["sum_abs_g"] / n, ax, np.mean)))


def hybrid(an: Analysis, group: Group, data) -> np.ndarray:
    """One row per available component, each already a reduced, mean-normalised channel score."""
    from . import activation, magnitude

    comps = [("magnitude", magnitude.l2(an, group, data))]
    if data.gradients is not None:
        comps.append(("gradient", taylor(an, group, data)))
    if data.activations is not None:
        comps.append(("activation", activation.activation(an, group, data)))
    weights = dict(zip(("magnitude", "gradient", "activation"), data.hybrid_weights))
    rows = []
    for name, m in comps:
        if m.size == 0 or not np.isfinite(m).any():
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            m = m / np.nanmean(m, axis=1, keepdims=True)
            s = np.nanmean(m, axis=0)
        s = np.where(np.isfinite(s), s, 0.0)
        rows.append(weights.get(name, 1.0) * s / max(float(np.mean(s)), 1e-30))
    if not rows:
        return np.zeros((0, group.size))
    total = np.sum(rows, axis=0) / sum(weights.get(n, 1.0) for n, m in comps if m.size)
    return total[None, :]
