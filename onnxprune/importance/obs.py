"""``obs``: second-order (structured Optimal Brain Surgeon) scores from input Gram matrices.

For a consumer ``y = W x̃`` (``x̃ = [x; 1]``) whose input Gram on calibration data is
``H = Σ x̃ x̃ᵀ`` (the layer-wise Hessian of the output error; no labels needed), removing the
input columns ``S`` of one channel (a head's block of columns, a Conv channel's k×k patch
columns, a Flatten'ed channel's positions) and refitting the other columns and the bias
optimally costs (Hassibi & Stork 1993; Kurtic et al. 2023 "ZipLM"; Frantar & Alistarh 2022)

    ΔE_S = tr(W_S ((H⁻¹)_SS)⁻¹ W_Sᵀ)        (one column: ‖W[:, j]‖² / [H⁻¹]_jj),

which is the error the sequential reconstruction (``--recover seq``) is left with. Channels are
removed greedily, a few at a time (``STEPS`` rounds per group, fewer for wide consumers), each round taking the channels
of least ΔE summed over the group's consumers, then applying the OBS update to W and the
Schur-complement downdate to H⁻¹, so later channels are scored against the already-refitted
layer. A channel's score is the running maximum of the marginal ΔE along that order (the order
is kept and the score grows with what was removed before).

Calibration sets are small (a few dozen sentences give fewer rows than an FFN's 1536 inputs):
in-sample, any column is then refitted away for free. So (``HELDOUT``) the OBS updates are
fitted on the even calibration samples' Gram and each round's output change is measured on the
odd samples' Gram (``P = H⁻¹ H_odd H⁻¹``, downdated with H⁻¹), the way ``--recover seq`` picks
its ridge by held-out error.

Scores are comparable across groups (``importance.ABSOLUTE``: no per-group normalisation): ΔE
is relative to the consumer's output energy ``tr(W H Wᵀ)`` and divided by the FLOPs one channel
of the group costs, so one global ranking (``mode global``, the default with this criterion) is
a greedy error-per-FLOP allocation of widths across layers — heads against FFN neurons, early
against late layers. A group without a consumer this handles (grouped/depthwise Conv,
ConvTranspose, a weight that is not a constant) is scored by ``wanda`` and scaled to the OBS
groups' median (``importance.score_groups`` notes it).
"""
from __future__ import annotations

import logging

import numpy as np

from ..analysis import Analysis, Group
from ..graph import inp

log = logging.getLogger(__name__)

__all__ = ["obs", "greedy_obs", "DAMP", "STEPS"]

DAMP = 1e-2  # λ·mean(diag H) added to H's diagonal (SparseGPT's default damping)
STEPS = 128  # greedy rounds per group (channels removed per round: ceil(n / STEPS))
HELDOUT = True  # fit the OBS updates on even calibration samples, measure their error on odd ones
HELDOUT_MAX_DIM = 2048  # wider Grams (a Flatten'ed Gemm) are fitted and checked on all rows: the check costs O(d³)
NORM = "stream"  # ΔE relative to the energy of the stream the output lands in ("own": of the output)
WORK = 5e8  # entries updated per group at most (fewer rounds for wide consumers: a Flatten'ed Gemm)
GRAM_BYTES = 1 << 30  # Gram matrices recorded in one calibration pass at most
ROW_BUDGET = 16384  # Gram rows per consumer at most (sampled evenly over batches), as --recover seq


class _Member:
    """One consumer weight of a group: W as [out, d+1] (bias column zero), its Gram, and the
    Gram columns of each of the group's channels it reads ([n_hit, block])."""

    def __init__(self, node, w: np.ndarray, atoms: np.ndarray, cols: np.ndarray, key: str,
                 stream: tuple[str, int] | None = None):
        self.node, self.w, self.atoms, self.cols, self.key = node, w, atoms, cols, key
        self.stream = stream


def _stream(model, node, axis: int) -> tuple[str, int] | None:
    """The tensor the consumer's output lands in: through its bias Add and a residual Add (the
    stream a following norm sees); the output itself when it goes on to anything else."""
    t = node.outputs[0].name
    for _ in range(2):
        uses = model.uses(t)
        if len(uses) != 1 or uses[0][0].op_type != "Add" or uses[0][0].domain not in ("", "ai.onnx"):
            break
        add = uses[0][0]
        nxt = add.outputs[0].name
        if model.shape(nxt) is None or model.shape(t) is None or tuple(model.shape(nxt)) != tuple(model.shape(t)):
            break
        t = nxt
    shape = model.shape(t)
    if not t or shape is None:
        return None
    return t, (axis % len(shape))


def _member(an: Analysis, group: Group, p) -> _Member | None:
    from ..record import gram_spec_for
    from ..rewrite.recover import _layout

    model = an.model
    node = p.node
    lay = _layout(model, node)
    if lay is None or gram_spec_for(model, node) is None or an.chan.get(inp(node, 0)) is None:
        return None
    w = np.asarray(model.const(inp(node, lay.weight)), np.float64)
    if lay.kind == "conv":
        if lay.groups != 1:
            return None
        a = w.reshape(w.shape[0], -1)
        k = int(np.prod(w.shape[2:]))
    elif lay.kind == "dense" and w.ndim == 2:
        a = lay.alpha * np.moveaxis(w, lay.out_axis, 0)
        k = 1
    else:
        return None
    if p.labels.size * k != a.shape[1]:
        return None
    atoms = an.atom_of_label[p.labels]
    mine = an.group_of_atom[atoms] == group.id
    if not mine.any():
        return None
    pos = an.pos_of_atom[atoms[mine]]
    idx = np.flatnonzero(mine)
    order = np.argsort(pos, kind="stable")
    pos, idx = pos[order], idx[order]
    hit, counts = np.unique(pos, return_counts=True)
    if np.unique(counts).size != 1:
        log.debug("obs: %s reads the channels of group %d unevenly; not scored by it", model.node_name(node), group.id)
        return None
    per = int(counts[0])
    cols = (idx[:, None] * k + np.arange(k)[None, :]).reshape(hit.size, per * k)
    axis = 1 if lay.kind == "conv" else -1
    return _Member(node, a, hit, cols, model.node_name(node), _stream(model, node, axis))


def greedy_obs(members: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], n: int,
               alive: np.ndarray | None = None, *, steps: int = STEPS, damp: float = DAMP) -> np.ndarray:
    """Scores (higher = keep) of ``n`` channels from their consumers' weights and Grams.

    Args:
        members: per consumer ``(W [out, d], H [d+1, d+1] (last: the bias' ones column),
            atoms [m] (channel positions it reads), cols [m, b] (its columns per channel)[, norm])``.
        n: channels in the group.
        alive: channels that may go (default all); the others score +inf.
        steps: greedy rounds.
        damp: relative diagonal damping of H.

    Each member's ΔE is divided by ``norm`` (the energy of the stream its output lands in), else
    by its output energy ``tr(W̃ H W̃ᵀ)``. Returns the running
    maximum of the marginal ΔE along the greedy removal order (NaN where no member reaches).
    """
    state = []
    reached = np.zeros(n, bool)
    for w, h, atoms, cols, *extra in members:
        norm = extra[0] if extra else None
        hc = np.asarray(extra[1], np.float64) if len(extra) > 1 and extra[1] is not None else None
        d = w.shape[1]
        h = np.array(h, np.float64)
        diag = np.diag(h)[:d]
        h[np.arange(d), np.arange(d)] += damp * max(float(diag.mean()), 1e-12) + 1e-12
        h[d, d] += 1e-12
        wt = np.concatenate([w, np.zeros((w.shape[0], 1))], axis=1)
        energy = norm if norm else max(float(np.sum((wt @ h) * wt)), 1e-30)
        try:
            hinv = np.linalg.inv(h)
        except np.linalg.LinAlgError:
            hinv = np.linalg.pinv(h)
        slot = np.full(n, -1)
        slot[atoms] = np.arange(atoms.size)
        if hc is not None:  # errors measured on the check rows: P = H⁻¹ Hc H⁻¹, scaled to all rows
            energy = energy * hc[d, d] / max(h[d, d] + hc[d, d], 1e-30)
            hc = [hc, hinv @ hc @ hinv]
        state.append([wt, hinv, slot, cols, energy, hc])
        reached[atoms] = True
    live = reached.copy() if alive is None else (reached & alive)
    score = np.full(n, np.nan)
    score[reached & ~live] = np.inf
    n_live = int(live.sum())
    if n_live == 0:
        return score
    d_max = max(st[1].shape[0] for st in state)
    steps = max(8, min(steps, int(WORK // d_max ** 2)))  # each round downdates a [d+1, d+1] inverse
    per_step = max(1, -(-n_live // steps))
    running = 0.0
    while live.any():
        cand = np.flatnonzero(live)
        de = np.zeros(cand.size)
        for wt, hinv, slot, cols, energy, hc in state:
            s = slot[cand]
            on = s >= 0
            if not on.any():
                continue
            c = cols[s[on]]  # [m, b]
            if c.shape[1] == 1:  # one column per channel: ‖W[:, j]‖² / [H⁻¹]_jj
                j = c[:, 0]
                hjj = np.maximum(hinv[j, j], 1e-300)
                wn = np.einsum("oj,oj->j", wt[:, j], wt[:, j])
                de[on] += (wn / hjj if hc is None else wn * hc[1][j, j] / hjj ** 2) / energy
                continue
            blk = hinv[c[:, :, None], c[:, None, :]]  # [m, b, b]
            ws = wt[:, c].transpose(1, 2, 0)  # [m, b, out]
            try:
                sol = np.linalg.solve(blk, ws)
            except np.linalg.LinAlgError:
                sol = np.einsum("mij,mjo->mio", np.linalg.pinv(blk), ws)
            if hc is None:
                de[on] += np.sum(ws * sol, axis=(1, 2)) / energy
            else:
                pb = hc[1][c[:, :, None], c[:, None, :]]
                de[on] += np.einsum("mbo,mbc,mco->m", sol, pb, sol) / energy
        de = np.maximum(de, 0.0)
        take = np.argsort(de, kind="stable")[:per_step]
        for j, v in zip(cand[take], de[take]):
            running = max(running, float(v))
            score[j] = running
        live[cand[take]] = False
        if not live.any():
            break
        for st in state:  # OBS update of W, Schur downdate of H⁻¹ for the removed columns
            wt, hinv, slot, cols, _, hc = st
            s = slot[cand[take]]
            s = s[s >= 0]
            if s.size == 0:
                continue
            cs = cols[s].reshape(-1)
            blk = hinv[np.ix_(cs, cs)]
            try:
                m = np.linalg.inv(blk)
            except np.linalg.LinAlgError:
                m = np.linalg.pinv(blk)
            rows = hinv[cs, :]  # [|S|, d+1]
            if hc is not None:  # P' = H'⁻¹ Hc H'⁻¹ with H'⁻¹ = H⁻¹ − U M Uᵀ, U = H⁻¹[:, S]
                hcu = hc[0] @ rows.T
                q = hinv @ hcu
                k = rows @ hcu
                um = rows.T @ m
                hc[1] -= um @ q.T + q @ um.T - um @ k @ um.T
            wt -= (wt[:, cs] @ m) @ rows
            wt[:, cs] = 0.0
            hinv -= rows.T @ (m @ rows)
    return score


def _cap(m: _Member, batches: int) -> int:
    """Rows per batch half: ROW_BUDGET (at least 4× the Gram's width) over all batches."""
    return max(64, -(-max(ROW_BUDGET, 4 * (m.w.shape[1] + 1)) // (2 * max(batches, 1))))


class _Sampled:
    """A GramSpec whose rows are sampled down to ``cap`` per batch half (im2col rows of a large
    feature map: the Gram needs a few times its width in rows, not every position)."""

    def __init__(self, spec, cap: int, rng):
        self.spec, self.cap, self.rng = spec, cap, rng

    def rows(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        r = self.spec.rows(x, mask)
        if r.shape[0] > self.cap:
            r = r[np.sort(self.rng.choice(r.shape[0], self.cap, replace=False))]
        return r


def _fit_check(gram) -> tuple[np.ndarray, np.ndarray | None]:
    """(Gram to fit on, Gram to measure errors on): the even and odd samples' halves when both
    have rows (HELDOUT) and the Gram is at most HELDOUT_MAX_DIM wide, else all rows and None."""
    if HELDOUT and min(gram.rows_parts) > 0 and gram.dim <= HELDOUT_MAX_DIM:
        return gram.parts[0], gram.parts[1]
    return gram.g, None


def _energy(rec, m: _Member) -> float | None:
    st = rec.stats.get(m.stream[0]) if m.stream is not None else None
    return float(np.sum(st.sum_sq)) if st is not None and np.sum(st.sum_sq) > 0 else None


def _flops_per_channel(an: Analysis, groups: list[Group]) -> dict[int, float]:
    from ..cost import CostModel

    cm = CostModel(an.model, an)
    base = cm.count().flops
    out = {}
    for g in groups:
        free = np.flatnonzero(~g.pinned)
        if free.size == 0:
            continue
        keep = np.ones(an.n_atoms, bool)
        keep[g.atoms[free[0]]] = False
        out[g.id] = float(max(base - cm.count(keep).flops, 1))
    return out


def all_scores(an: Analysis, data) -> dict[int, np.ndarray]:
    """Scores of every prunable group (computed once per analysis and cached on ``data``)."""
    key = ("obs", id(an))
    if key in data.cache:
        return data.cache[key]
    from ..progress import progress
    from ..record import gram_spec_for, record

    cal = data.calibration
    groups = [g for g in an.groups if g.prunable and g.kind != "hidden"]
    members = {}
    for g in groups:
        ms = [m for m in (_member(an, g, an.params[k]) for k in g.params if an.params[k].role == "in") if m is not None]
        if ms:
            members[g.id] = ms
    cost = _flops_per_channel(an, [g for g in groups if g.id in members])
    out: dict[int, np.ndarray] = {}
    todo = [g for g in groups if g.id in members]
    while todo:  # passes of at most GRAM_BYTES of Grams
        batch, size, nodes = [], 0, {}
        for g in todo:
            extra = {m.key: m for m in members[g.id] if m.key not in nodes}
            b = sum(2 * (m.w.shape[1] + 1) ** 2 * 8 for m in extra.values())
            if batch and size + b > GRAM_BYTES:
                break
            batch.append(g)
            nodes.update(extra)
            size += b
        todo = todo[len(batch):]
        rng = np.random.default_rng(0)
        specs = {k: (inp(m.node, 0), _Sampled(gram_spec_for(an.model, m.node), _cap(m, len(cal)), rng))
                 for k, m in nodes.items()}
        streams = {m.stream[0]: m.stream[1] for m in nodes.values() if m.stream is not None and NORM == "stream"}
        rec = record(an.model, cal, streams, grams=specs, progress="recording Gram matrices (obs)")
        for g in progress(batch, "scoring (obs)", unit="groups"):
            ms = [(m.w, *_fit_check(rec.grams[m.key]), m.atoms, m.cols, _energy(rec, m)) for m in members[g.id]
                  if m.key in rec.grams]
            ms = [(w, h, a, c, e, hc) for w, h, hc, a, c, e in ms]
            s = greedy_obs(ms, g.size, ~g.pinned, steps=STEPS, damp=DAMP)
            out[g.id] = s / cost.get(g.id, 1.0)
        del rec
    data.cache[key] = out
    log.info("obs: %d groups scored from %d consumers' Grams", len(out), sum(len(v) for v in members.values()))
    return out


def obs(an: Analysis, group: Group, data) -> np.ndarray:
    """One member row: the group's OBS scores (NaN where no handled consumer reads a channel:
    those channels are then kept ahead of every scored one of the group)."""
    s = all_scores(an, data).get(group.id)
    if s is None:
        return np.zeros((0, group.size))
    s = s.copy()
    fin = np.isfinite(s)
    if not fin.any():
        return np.full((1, group.size), np.nan)
    s[~fin & ~np.isposinf(s)] = np.max(s[fin])  # unreached channels: kept like the best
    s[np.isposinf(s)] = np.max(s[fin])  # pinned: the planner keeps them anyway
    return s[None, :]
