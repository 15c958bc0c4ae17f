"""Magnitude criteria read from the weights the analysis found for each group.

* ``l1``: Σ|w| over a channel's slice of every producer (``out``) and consumer (``in``)
  weight, per member, then reduced over members (Li et al., "Pruning Filters for Efficient
  ConvNets"; Torch-Pruning's group magnitude).
* ``l2``: the same with √Σw².
* ``bn``: |γ| of the BatchNorm/InstanceNorm scale (network slimming, Liu et al. 2017). A group
  without a normalisation scale falls back to ``l2`` and says so.
* ``random``: a seeded baseline.

Each member's vector is divided by its own mean first, so a 3×3×512 consumer does not drown a
1×1×64 producer; channels a member does not cover are NaN and ignored by the reduction.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..analysis import Analysis, Group, ParamAxis

__all__ = ["member_matrix", "per_label_l1", "per_label_sq"]


_BLOCK_BYTES = 32 << 20  # float64 temporaries per block: memory stays flat on multi-GB weights


def _per_label(w: np.ndarray, axis: int, fn) -> np.ndarray:
    """Sum of ``fn(w)`` (in float64) over every axis but ``axis``, a block of rows at a time."""
    if w.ndim <= 1:
        return fn(w.astype(np.float64, copy=False))
    split = 0 if axis != 0 else 1
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    step = max(1, int(_BLOCK_BYTES // max(1, (w.size // max(w.shape[split], 1)) * 8)))
    out = np.zeros(w.shape[axis], dtype=np.float64)
    idx = [slice(None)] * w.ndim
    for start in range(0, w.shape[split], step):
        idx[split] = slice(start, start + step)
        out += fn(w[tuple(idx)].astype(np.float64)).sum(axis=reduce)
    return out


def per_label_l1(w: np.ndarray, axis: int) -> np.ndarray:
    return _per_label(w, axis, np.abs)


def per_label_sq(w: np.ndarray, axis: int) -> np.ndarray:
    return _per_label(w, axis, np.square)


def member_matrix(an: Analysis, group: Group, roles: set[str],
                  per_label: Callable[[ParamAxis], np.ndarray | None],
                  finish: Callable[[np.ndarray], np.ndarray] = lambda v: v) -> np.ndarray:
    """One row per parameter axis of ``group`` with a role in ``roles``.

    ``per_label(p)`` gives a value per position of ``p``'s axis (or None to skip ``p``); values
    of positions that map to the same channel are summed, then ``finish`` is applied (e.g. √).
    Channels a member does not reach are NaN.
    """
    rows = []
    for k in group.params:
        p = an.params[k]
        if p.role not in roles:
            continue
        vals = per_label(p)
        if vals is None:
            continue
        atoms = an.atom_of_label[p.labels]
        mine = an.group_of_atom[atoms] == group.id
        pos = an.pos_of_atom[atoms[mine]]
        acc = np.bincount(pos, weights=vals[mine], minlength=group.size)
        row = np.full(group.size, np.nan)
        hit = np.bincount(pos, minlength=group.size) > 0
        row[hit] = finish(acc[hit])
        rows.append(row)
    return np.array(rows) if rows else np.zeros((0, group.size))


def _weights(an: Analysis, fn: Callable[[np.ndarray, int], np.ndarray]):
    def per_label(p: ParamAxis) -> np.ndarray | None:
        w = an.model.const(p.tensor)
        if w is None:
            return None
        out = fn(w, p.axis)
        an.model.release_pages(p.tensor)
        return out

    return per_label


def l1(an: Analysis, group: Group, data=None) -> np.ndarray:
    return member_matrix(an, group, {"out", "in"}, _weights(an, per_label_l1))


def l2(an: Analysis, group: Group, data=None) -> np.ndarray:
    return member_matrix(an, group, {"out", "in"}, _weights(an, per_label_sq), np.sqrt)


def bn_scale(an: Analysis, group: Group, data=None) -> np.ndarray:
    return member_matrix(an, group, {"scale"}, _weights(an, per_label_l1))
