"""Data-driven criteria from recorded activations (``record.Recording``).

Members are the tensors read by a group's consumers (one per consumer input):

* ``activation``: mean |a| of the channel (Hu et al.'s activation-magnitude criterion);
* ``apoz``: 1 − average percentage of zeros (Hu et al. 2016: channels that are mostly zero go);
* ``wanda``: Σ_o |W[o, c]| · ‖a_c‖ — weight magnitude times the RMS of the input channel, per
  consumer weight (Sun et al. 2023, "Wanda", reduced over output rows for structured pruning).

A position on a merged axis (Flatten's C·H·W) adds its counts and sums into its channel.
"""
from __future__ import annotations

from ..graph import inp

import numpy as np

from ..analysis import Analysis, Group
from .magnitude import member_matrix, per_label_l1

__all__ = ["activation", "apoz", "wanda"]


def _stat_rows(an: Analysis, group: Group, rec, value) -> np.ndarray:
    rows = []
    for name, st in rec.stats.items():
        c = an.chan.get(name)
        if c is None or c.labels.size != st.count.size:
            continue
        atoms = an.atom_of_label[c.labels]
        mine = an.group_of_atom[atoms] == group.id
        if not mine.any():
            continue
        pos = an.pos_of_atom[atoms[mine]]
        sums = {k: np.bincount(pos, weights=getattr(st, k)[mine], minlength=group.size)
                for k in ("count", "sum_abs", "sum_sq", "zeros")}
        hit = sums["count"] > 0
        row = np.full(group.size, np.nan)
        row[hit] = value(sums, hit)
        rows.append(row)
    return np.array(rows) if rows else np.zeros((0, group.size))


def activation(an: Analysis, group: Group, data) -> np.ndarray:
    return _stat_rows(an, group, data.activations, lambda s, h: s["sum_abs"][h] / s["count"][h])


def apoz(an: Analysis, group: Group, data) -> np.ndarray:
    return _stat_rows(an, group, data.activations, lambda s, h: 1.0 - s["zeros"][h] / s["count"][h] + 1e-6)


def wanda(an: Analysis, group: Group, data) -> np.ndarray:
    rec = data.activations

    def per_label(p):
        if p.role != "in":
            return None
        name = inp(p.node, 0)
        st, c = rec.stats.get(name), an.chan.get(name)
        w = an.model.const(p.tensor)
        if st is None or c is None or w is None:
            return None
        if p.labels.size == c.labels.size:  # position by position (Conv, Gemm after Flatten...)
            norms = np.sqrt(st.sum_sq / np.maximum(st.count, 1))
        else:  # grouped conv: W's per-group axis holds group 0's labels; pool by label
            uniq, inv = np.unique(c.labels, return_inverse=True)
            per = np.sqrt(np.bincount(inv, st.sum_sq) / np.maximum(np.bincount(inv, st.count), 1))
            idx = np.clip(np.searchsorted(uniq, p.labels), 0, uniq.size - 1)
            norms = np.where(uniq[idx] == p.labels, per[idx], 0.0)
        return per_label_l1(w, p.axis) * norms

    return member_matrix(an, group, {"in"}, per_label)
