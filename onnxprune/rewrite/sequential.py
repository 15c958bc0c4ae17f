"""Sequential reconstruction: refit consumers in topological order on the *pruned* model's inputs.

Independent least squares (``lsq``) refits every consumer on the original model's inputs, so
errors of the layers before it build up through the depth. Here (OBC/SparseGPT-style) the
model is first turned into its pruned equivalent at full size — the removed channels'
consumer-side slices zeroed (the correctness oracle: the same outputs as structural removal) —
and then each consumer ``y = A x̃`` that loses inputs is refitted, level by level in
topological order, so that it reproduces the *original* layer's outputs ``Y = A x̃_orig`` from
the inputs ``x̃_p`` of the already reconstructed upstream:

    W'_K = argmin ‖X̃_p[:, K] W'ᵀ − Y‖² + λ‖W'‖²  →  (H_KK + λI) W'ᵀ = B_K,
    H = X̃_pᵀ X̃_p,  B = X̃_pᵀ Y,  with x̃ = [x; 1] (the bias column).

Only H, B and Σ‖Y‖² are kept, streamed over the calibration batches (two halves: even and odd
samples), never the activations; the Gram products are BLAS matmuls on at most ``row_budget``
sampled rows per consumer (im2col patches of a Conv, vectors of a Gemm/MatMul). Per consumer
(per group of a grouped or depthwise Conv) the candidates — the current weights (no refit),
bias correction only, ridge refits over ``RIDGES`` (one eigendecomposition) — are fitted on the
even samples, scored on the odd ones, and the best is refitted on all samples, so the result is never worse than no refit on held-out
calibration data. Consumers at the same level (no one upstream of another) share one pass.

Handled: Conv (group 1: im2col; grouped and depthwise: per group), Gemm and MatMul with a 2-D
constant weight (attention output projections, FFN down-projections). A consumer outside these
(ConvTranspose, a quantized weight…) keeps bias compensation (``recover.py``), applied before
the sequential pass so the refits downstream see it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..analysis import Analysis
from ..graph import Model, inp, out

log = logging.getLogger(__name__)

__all__ = ["reconstruct", "RIDGES"]

RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class _Job:
    node: object
    name: str
    x: str  # input tensor
    spec: object  # record.GramSpec
    a: np.ndarray  # [G, per, d+1]: current weights per group (+ bias column)
    keep_cols: np.ndarray  # [d] kept input columns within a group
    groups_kept: np.ndarray  # indices of groups that keep outputs
    w_shape: tuple
    level: int = 0
    # streamed statistics per half: H [Gk, dk+1, dk+1], B [Gk, dk+1, per], yy [Gk]
    h: list | None = None
    b: list | None = None
    yy: list | None = None
    rows_seen: int = 0


def _job(model: Model, an: Analysis, node, keep_atom: np.ndarray, removed: np.ndarray | None) -> _Job | None:
    from ..record import GramSpec
    from .recover import _current_bias, _layout

    lay = _layout(model, node)
    if lay is None or not model.is_plain_const(inp(node, lay.weight)):
        return None
    w = np.asarray(model.const(inp(node, lay.weight)), np.float64)
    name = model.node_name(node)
    if lay.kind == "conv" and lay.pads is not None:
        g = lay.groups
        o, cg = w.shape[0], w.shape[1]
        k = int(np.prod(w.shape[2:]))
        per = o // g
        a_w = w.reshape(g, per, cg * k)
        spec = GramSpec("conv", 1, lay.kernel, lay.strides, lay.pads, lay.dilations)
        if g == 1:
            keep_in = ~removed if removed is not None else np.ones(cg, bool)
            groups_kept = np.arange(1)
        else:  # grouped/depthwise: the outputs' keep mask says which groups survive
            oc = an.chan.get(out(node, 0))
            keep_out = an.keep_mask(oc.labels, keep_atom) if oc is not None else np.ones(o, bool)
            groups_kept = np.flatnonzero(keep_out.reshape(g, per).any(axis=1))
            keep_in = ~removed if removed is not None else np.ones(cg, bool)
        keep_cols = np.repeat(keep_in, k)
        bias = _current_bias(model, an, node, o).reshape(g, per)
    elif lay.kind == "dense" and w.ndim == 2:
        a_w = (lay.alpha * np.moveaxis(w, lay.out_axis, 0))[None]  # [1, N, K]
        spec = GramSpec("dense", lay.x_axis)
        keep_cols = ~removed if removed is not None else np.ones(a_w.shape[2], bool)
        groups_kept = np.arange(1)
        bias = _current_bias(model, an, node, a_w.shape[1])[None] * lay.beta
    else:
        return None
    if keep_cols.size != a_w.shape[2] or not keep_cols.any() or groups_kept.size == 0:
        return None
    a = np.concatenate([a_w, bias[:, :, None]], axis=2)
    return _Job(node, name, inp(node, 0), spec, a, keep_cols, groups_kept, w.shape)


def plan_jobs(model: Model, an: Analysis, keep_atom: np.ndarray) -> list[_Job]:
    """Consumers to refit: every weight that loses input channels, and every grouped/depthwise
    Conv whose channels are pruned; each with its level (1 + the deepest refit upstream)."""
    jobs: dict[int, _Job] = {}
    for p in an.params:
        if p.role != "in" or id(p.node) in jobs:
            continue
        if an.chan.get(inp(p.node, 0)) is None:
            continue
        removed = ~an.keep_mask(p.labels, keep_atom)  # per input position of the weight (a group's, grouped)
        if not removed.any():
            continue
        j = _job(model, an, p.node, keep_atom, removed)
        if j is not None:
            jobs[id(p.node)] = j
    for p in an.params:  # grouped/depthwise convs: channels leave with their groups
        if p.role != "out" or id(p.node) in jobs or p.node.op_type != "Conv":
            continue
        if int(model.attr(p.node, "group", 1) or 1) == 1 or an.keep_mask(p.labels, keep_atom).all():
            continue
        j = _job(model, an, p.node, keep_atom, None)
        if j is not None:
            jobs[id(p.node)] = j
    depth: dict[str, int] = {}
    ordered = []
    for node in model.graph:  # topological order
        d_in = max((depth.get(v.name, 0) for v in node.inputs if v is not None), default=0)
        j = jobs.get(id(node))
        if j is not None:
            j.level = d_in + 1
            ordered.append(j)
        for v in node.outputs:
            depth[v.name] = j.level if j is not None else d_in
    return ordered


def _n_rows(job: _Job, x: np.ndarray) -> tuple[int, tuple[int, ...]]:
    """(rows x gives, output spatial dims) without building them."""
    sp = job.spec
    if sp.kind == "dense":
        return x.size // x.shape[sp.axis], ()
    nd = len(sp.kernel)
    dims = tuple((x.shape[2 + i] + sp.pads[i] + sp.pads[i + nd] - (sp.kernel[i] - 1) * sp.dilations[i] - 1)
                 // sp.strides[i] + 1 for i in range(nd))
    return x.shape[0] * int(np.prod(dims)), dims


def _rows(job: _Job, x: np.ndarray, idx: np.ndarray | None, dims: tuple[int, ...]) -> np.ndarray:
    """[n, G, d] rows of the consumer's input, per group; only rows ``idx`` when given (a Conv's
    patches are then gathered directly, not unfolded whole)."""
    sp = job.spec
    g = job.a.shape[0]
    if idx is None or sp.kind == "dense":
        r = sp.rows(x)
        if idx is not None:
            r = r[idx]
        return r.reshape(r.shape[0], g, -1)
    nd = len(sp.kernel)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(sp.pads[i], sp.pads[i + nd]) for i in range(nd)])
    pos = np.unravel_index(idx, (x.shape[0], *dims))
    ix = [pos[0][:, None, None]]  # sample
    ch = np.arange(x.shape[1])[None, :, None]
    offs = np.stack(np.meshgrid(*[np.arange(k) for k in sp.kernel], indexing="ij"), 0).reshape(nd, -1)
    for i in range(nd):
        ix.append((pos[1 + i] * sp.strides[i])[:, None, None] + (offs[i] * sp.dilations[i])[None, None, :])
    r = xp[ix[0], ch, *ix[1:]]  # [rows, C, prod(kernel)]
    return r.reshape(r.shape[0], g, -1)


def _accumulate(job: _Job, half: int, xp: np.ndarray, xo: np.ndarray, rng, cap: int) -> None:
    total, dims = _n_rows(job, xp)
    idx = np.sort(rng.choice(total, cap, replace=False)) if total > cap else None
    rp, ro = _rows(job, xp, idx, dims), _rows(job, xo, idx, dims)
    gk = job.groups_kept
    a = job.a[gk]  # [Gk, per, d+1]
    n = rp.shape[0]
    ones = np.ones((len(gk), n, 1))
    p = np.concatenate([rp[:, gk][:, :, job.keep_cols].transpose(1, 0, 2).astype(np.float64), ones], axis=2)
    o = np.concatenate([ro[:, gk].transpose(1, 0, 2).astype(np.float64), ones], axis=2)
    y = o @ a.transpose(0, 2, 1)  # [Gk, n, per]: the original layer's outputs
    pt = p.transpose(0, 2, 1)
    if job.h is None:
        dk = p.shape[2]
        job.h = [np.zeros((len(gk), dk, dk)) for _ in range(2)]
        job.b = [np.zeros((len(gk), dk, a.shape[1])) for _ in range(2)]
        job.yy = [np.zeros(len(gk)) for _ in range(2)]
    job.h[half] += pt @ p
    job.b[half] += pt @ y
    job.yy[half] += np.einsum("gnp,gnp->g", y, y)
    job.rows_seen += n


def _fixed(job: _Job, h: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """No refit (the current weights over K) and bias correction only, [Gk, per, dk+1] each."""
    a = job.a[job.groups_kept]
    plain = np.concatenate([a[:, :, :-1][:, :, job.keep_cols], a[:, :, -1:]], axis=2)
    n = np.maximum(h[:, -1, -1], 1e-30)
    bias = plain.copy()
    bias[:, :, -1] = (b[:, -1, :] - np.einsum("gpd,gd->gp", plain[:, :, :-1], h[:, -1, :-1])) / n[:, None]
    return [plain, bias]


def _ridge_scale(h: np.ndarray) -> np.ndarray:
    return np.trace(h, axis1=1, axis2=2) / h.shape[1]


def _ridges(h: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Ridge refits for every λ in RIDGES from one eigendecomposition of h: [Gk, per, dk+1] each."""
    lam, q = np.linalg.eigh(h)
    qb = q.transpose(0, 2, 1) @ b  # [Gk, dk, per]
    scale = _ridge_scale(h)
    out = []
    for r in RIDGES:
        d = 1.0 / np.maximum(lam + (r * scale)[:, None], 1e-300)
        out.append((q @ (d[:, :, None] * qb)).transpose(0, 2, 1))
    return out


def _err(x: np.ndarray, h: np.ndarray, b: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Σ‖X̃ xᵀ − Y‖² per group from the streamed statistics (matmuls only)."""
    return yy - 2 * np.sum(x * b.transpose(0, 2, 1), axis=(1, 2)) + np.sum((x @ h) * x, axis=(1, 2))


NAMES = ("no refit", "bias correction", *(f"ridge {r:g}" for r in RIDGES))


def _solve(job: _Job) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights [Gk, per, dk+1], chosen candidate per group, held-out error per candidate).

    Candidates are fitted on the even samples and scored on the odd ones (one sample: no
    refit or bias correction, scored in-sample); the chosen one is refitted on all samples.
    """
    h0, h1 = job.h
    b0, b1 = job.b
    held_out = h1[:, -1, -1].min() > 0
    errs = np.full((len(NAMES), len(job.groups_kept)), np.inf)
    ht, bt, yt = (h1, b1, job.yy[1]) if held_out else (h0, b0, job.yy[0])
    cands = _fixed(job, h0, b0) + (_ridges(h0, b0) if held_out else [])
    for k, x in enumerate(cands):
        errs[k] = _err(x, ht, bt, yt)
    errs = np.where(np.isfinite(errs), errs, np.inf)
    choice = np.argmin(errs, axis=0)
    h, b = h0 + h1, b0 + b1
    fixed = _fixed(job, h, b)
    x = np.empty_like(fixed[0])
    for k in np.unique(choice):
        sel = choice == k
        if k < 2:
            x[sel] = fixed[k][sel]
        else:
            hs = h[sel]
            reg = RIDGES[k - 2] * _ridge_scale(hs)
            x[sel] = np.linalg.solve(hs + reg[:, None, None] * np.eye(hs.shape[1]), b[sel]).transpose(0, 2, 1)
    return x, choice, errs


def _write(model: Model, an: Analysis, job: _Job, x: np.ndarray) -> None:
    from .recover import _add_to_bias, _layout

    node = job.node
    lay = _layout(model, node)
    a = job.a.copy()
    gk = job.groups_kept
    new_w = a[:, :, :-1].copy()
    new_w[:, :, ~job.keep_cols] = 0.0
    sub = new_w[gk]
    sub[:, :, job.keep_cols] = x[:, :, :-1]
    new_w[gk] = sub
    new_b = a[:, :, -1].copy()
    new_b[gk] = x[:, :, -1]
    old_b = a[:, :, -1]
    dtype = model.const(inp(node, lay.weight)).dtype
    if lay.kind == "conv":
        model.set_const(inp(node, lay.weight), new_w.reshape(job.w_shape).astype(dtype))
        delta = (new_b - old_b).reshape(-1)
    else:
        model.set_const(inp(node, lay.weight), np.moveaxis(new_w[0] / lay.alpha, 0, lay.out_axis).astype(dtype))
        delta = (new_b - old_b).reshape(-1) / lay.beta
    if np.any(delta != 0):
        _add_to_bias(model, an, node, delta)


def reconstruct(model: Model, an: Analysis, keep_atom: np.ndarray, calibration, *, row_budget: int = 16384,
                seed: int = 0, progress: bool = True) -> list[str]:
    """Zero the removed channels' consumer slices, then refit consumers level by level.

    ``model`` is changed in place at full size (the slicing that follows removes the zeroed
    slices); ``calibration`` is a :class:`~onnxprune.calib.Calibration`.
    """
    from ..validate.runtime import make_session

    jobs = plan_jobs(model, an, keep_atom)
    inputs = list(dict.fromkeys(j.x for j in jobs))
    original = model.serialized_with_outputs([x for x in inputs if x not in model.graph_inputs], only=True) \
        if jobs else None
    # the pruned equivalent at full size (later sliced: zeroed slices go)
    for p in an.params:
        if p.role in ("in", "recurrent"):
            drop = ~an.keep_mask(p.labels, keep_atom)
            if drop.any() and model.is_plain_const(p.tensor):
                model.zero_const(p.tensor, p.axis, drop)
    if not jobs:
        return []
    report: list[str] = []
    levels = sorted({j.level for j in jobs})
    orig_sess = make_session(original, "cpu") if len(inputs) > len(set(inputs) & set(model.graph_inputs)) else None
    orig_names = [o.name for o in orig_sess.get_outputs()] if orig_sess is not None else []
    rng = np.random.default_rng(seed)
    n_batches = max(len(calibration), 1)
    from ..progress import progress as _progress

    for level in (_progress(levels, "reconstruction (seq)", unit="levels") if progress else levels):
        todo = [j for j in jobs if j.level == level]
        names = list(dict.fromkeys(j.x for j in todo))
        fetch = [n for n in names if n not in model.graph_inputs]
        cur = make_session(model.serialized_with_outputs(fetch, only=True), "cpu") if fetch else None
        want_o = [n for n in fetch if n in orig_names]
        for feeds in calibration.batches(None):
            got_p = dict(zip(fetch, cur.run(fetch, feeds))) if cur is not None else {}
            got_o = dict(zip(want_o, orig_sess.run(want_o, feeds))) if want_o else {}
            for n in names:
                if n in feeds:
                    got_p[n] = got_o[n] = feeds[n]
            for j in todo:
                xp, xo = got_p[j.x], got_o[j.x]
                for half in (0, 1):
                    sp = xp[half::2] if xp.shape[0] > 1 else (xp if half == 0 else xp[:0])
                    if sp.shape[0] == 0:
                        continue
                    so = xo[half::2] if xo.shape[0] > 1 else xo
                    cap = max(1, -(-max(row_budget, 64 * (int(j.keep_cols.sum()) + 1)) // (2 * n_batches)))
                    _accumulate(j, half, sp, so, rng, cap)
        for j in todo:
            x, choice, errs = _solve(j)
            _write(model, an, j, x)
            picked = np.bincount(choice, minlength=len(NAMES))
            what = ", ".join(f"{NAMES[k]}" + (f" ×{c}" if len(choice) > 1 else "")
                             for k, c in enumerate(picked) if c)
            plain = float(errs[0].sum())
            best = float(errs[choice, np.arange(len(choice))].sum())
            report.append(f"{j.name}: sequential reconstruction (level {level}): {what}; held-out error "
                          f"{plain:.4g} no refit -> {best:.4g} over {int(j.keep_cols.sum())} kept inputs"
                          + (f" per group, {len(choice)} groups" if len(choice) > 1 else ""))
            j.h = j.b = j.yy = None  # free the statistics
    log.info("sequential reconstruction: %d consumers in %d levels", len(jobs), len(levels))
    return report

