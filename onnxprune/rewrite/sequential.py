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
samples), never the refitted layers' activations; the Gram products are BLAS matmuls on at most ``row_budget``
sampled rows per consumer (im2col patches of a Conv, vectors of a Gemm/MatMul). Per consumer
(per group of a grouped or depthwise Conv) the candidates — the current weights (no refit),
bias correction only, ridge refits over ``RIDGES`` (one LU solve each; above ``WALK_DIM`` inputs
tried outward from the middle λ) — are fitted on the even samples, scored on the odd ones, and
the best is refitted on all samples, so the result is never worse than no refit on held-out
calibration data. Consumers at the same level (no one upstream of another) share one pass, and
each level runs only the part of the model between the activations cached at the previous
level's frontier and its own inputs (``_Frontier``; at most ``CACHE_BYTES`` kept), so the whole
reconstruction runs each node about once per model instead of once per level.

Handled: Conv (group 1: im2col; grouped and depthwise: per group), Gemm and MatMul with a 2-D
constant weight (attention output projections, FFN down-projections). A consumer outside these
(ConvTranspose, a quantized weight…) keeps bias compensation (``recover.py``), applied before
the sequential pass so the refits downstream see it.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import onnx

from ..analysis import Analysis
from ..errors import OnnxPruneError
from ..graph import Model, inp, out
from ..record import halves, select_rows

log = logging.getLogger(__name__)

__all__ = ["BLAS_THREADS", "CACHE_BYTES", "LAST_PHASES", "RIDGES", "reconstruct"]

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


def _n_rows(job: _Job, x: np.ndarray, spec=None) -> tuple[int, tuple[int, ...]]:
    """(rows x gives, output spatial dims) without building them."""
    sp = spec or job.spec
    if sp.kind == "dense":
        return x.size // x.shape[sp.axis], ()
    nd = len(sp.kernel)
    dims = tuple((x.shape[2 + i] + sp.pads[i] + sp.pads[i + nd] - (sp.kernel[i] - 1) * sp.dilations[i] - 1)
                 // sp.strides[i] + 1 for i in range(nd))
    return x.shape[0] * int(np.prod(dims)), dims


def _rows(job: _Job, x: np.ndarray, idx: np.ndarray | None, dims: tuple[int, ...],
          groups: int | None = None, spec=None) -> np.ndarray:
    """[n, G, d] rows of the consumer's input, per group (``groups`` of them in x: default all of
    the consumer's); only rows ``idx`` when given (a Conv's patches are then gathered directly,
    not unfolded whole)."""
    sp = spec or job.spec
    g = job.a.shape[0] if groups is None else groups
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


def _channels(job: _Job, x: np.ndarray, kept_only: bool) -> np.ndarray:
    """A Conv's input reduced to the channels of its kept groups (and only their kept channels):
    unfolding after the selection gives the kept columns, in their order, for less work."""
    k = int(np.prod(job.spec.kernel))
    keep_in = job.keep_cols.reshape(-1, k)[:, 0]
    cg = keep_in.size
    within = np.flatnonzero(keep_in) if kept_only else np.arange(cg)
    ch = (job.groups_kept[:, None] * cg + within[None, :]).ravel()
    return x if ch.size == x.shape[1] else x[:, ch]


def _accumulate(job: _Job, half: int, xp: np.ndarray, xo: np.ndarray, rng, cap: int,
                mask: np.ndarray | None = None) -> None:
    spec = job.spec
    if spec.kind == "dense" and mask is not None:  # padded positions out (record.select_rows)
        xp, ax = select_rows(xp, spec.axis, mask)
        xo, _ = select_rows(xo, spec.axis, mask)
        spec = replace(spec, axis=ax)
    total, dims = _n_rows(job, xp, spec)
    idx = np.sort(rng.choice(total, cap, replace=False)) if total > cap else None
    gk = job.groups_kept
    if spec.kind == "conv":
        rp = _rows(job, _channels(job, xp, True), idx, dims, len(gk))
        ro = _rows(job, _channels(job, xo, False), idx, dims, len(gk))
    else:
        rp = _rows(job, xp, idx, dims, spec=spec)[:, gk][:, :, job.keep_cols]
        ro = _rows(job, xo, idx, dims, spec=spec)[:, gk]
    a = job.a[gk]  # [Gk, per, d+1]
    n = rp.shape[0]
    p = np.empty((len(gk), n, rp.shape[2] + 1))
    p[:, :, :-1] = rp.transpose(1, 0, 2)
    p[:, :, -1] = 1.0
    # the original layer's outputs [Gk, n, per], in the activations' precision (float32: the
    # targets' relative error ~1e-6 is far below any refit's); the Gram products stay float64
    ft = np.promote_types(ro.dtype, np.float32)
    o = np.empty((len(gk), n, ro.shape[2] + 1), ft)
    o[:, :, :-1] = ro.transpose(1, 0, 2)
    o[:, :, -1] = 1.0
    y = (o @ a.transpose(0, 2, 1).astype(ft)).astype(np.float64)
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


def _ridge(h: np.ndarray, b: np.ndarray, r: float) -> np.ndarray | None:
    """The ridge refit for λ = r·tr(H)/d: [Gk, per, dk+1] (None where the system is singular).

    One LU solve (``np.linalg.solve``, batched over groups): for the kept block of a full-size
    Conv ~3× cheaper than the eigendecomposition that used to serve every λ at once. ``H + λI``
    is positive definite (the bias row holds the row count > 0, so λ > 0).
    """
    reg = r * _ridge_scale(h)
    a = h.copy()
    idx = np.arange(h.shape[1])
    a[:, idx, idx] += reg[:, None]
    try:
        return np.linalg.solve(a, b).transpose(0, 2, 1)
    except np.linalg.LinAlgError:
        log.debug("ridge %g: singular system, candidate skipped", r)
        return None


WALK_DIM = 512
"""Above this many kept inputs, ridges are tried outward from the middle of RIDGES (see _ridge_errors)."""


def _ridge_errors(h0: np.ndarray, b0: np.ndarray, ht: np.ndarray, bt: np.ndarray, yt: np.ndarray,
                  errs: np.ndarray) -> None:
    """Held-out error of the ridge refit for each λ in RIDGES, fitted on (h0, b0): into errs [len(RIDGES), Gk].

    Small systems try every λ. Above :data:`WALK_DIM` inputs each solve costs seconds, so the
    candidates are tried from the middle λ outward, one step further while some group's best
    error is still at an end of the tried range; left-out λ keep an infinite error. Where the
    held-out error is unimodal in λ over the grid (the usual U: variance at small λ, bias at
    large), this picks the same λ as trying all; it saves 1–3 of the 5 solves.
    """
    def try_(i: int) -> None:
        x = _ridge(h0, b0, RIDGES[i])
        if x is not None:
            errs[i] = _err(x, ht, bt, yt)

    if h0.shape[1] <= WALK_DIM:
        for i in range(len(RIDGES)):
            try_(i)
        return
    lo = hi = len(RIDGES) // 2
    try_(lo)
    while True:
        best = lo + np.argmin(errs[lo:hi + 1], axis=0)
        grow_lo, grow_hi = lo > 0 and bool((best == lo).any()), hi < len(RIDGES) - 1 and bool((best == hi).any())
        if not (grow_lo or grow_hi):
            return
        if grow_lo:
            lo -= 1
            try_(lo)
        if grow_hi:
            hi += 1
            try_(hi)


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
    for k, x in enumerate(_fixed(job, h0, b0)):
        errs[k] = _err(x, ht, bt, yt)
    if held_out:
        _ridge_errors(h0, b0, ht, bt, yt, errs[2:])
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
            fit = _ridge(h[sel], b[sel], RIDGES[k - 2])
            if fit is None:  # H + λI is positive definite: a singular system here is a bug
                raise np.linalg.LinAlgError(f"{job.name}: the chosen ridge refit is singular")
            x[sel] = fit
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


class _Clock:
    """Wall and CPU seconds per phase (``reconstruct`` logs them; benchmarks read LAST_PHASES)."""

    def __init__(self):
        self.phases: dict[str, list[float]] = {}

    def __call__(self, phase: str):
        return _Tick(self, phase)


class _Tick:
    def __init__(self, clock: _Clock, phase: str):
        self.clock, self.phase = clock, phase

    def __enter__(self):
        self.t = (time.perf_counter(), time.process_time())

    def __exit__(self, *exc):
        v = self.clock.phases.setdefault(self.phase, [0.0, 0.0])
        v[0] += time.perf_counter() - self.t[0]
        v[1] += time.process_time() - self.t[1]


BLAS_THREADS: int | None = 1
"""numpy's BLAS threads during the reconstruction (None: leave as is; see _blas_threads)."""

CACHE_BYTES = 1 << 30
"""Activations (both models, all calibration batches) kept between levels at most."""

LAST_PHASES: dict[str, tuple[float, float]] = {}
"""Phase -> (wall s, CPU s) of the last :func:`reconstruct` call (for benchmarks)."""


def _is_graph_attr(a) -> bool:
    return a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


class _Side:
    """One model (the original, or the current partly refitted one) run segment by segment."""

    def __init__(self):
        self.cache: dict[str, list[np.ndarray]] = {}  # frontier tensor -> value per batch
        self.computed: set[str] = set()  # tensors final at their values in ``cache`` or dropped
        self.sess = None
        self.feeds: list[str] = []
        self.outs: list[str] = []
        self.keep: list[str] = []  # outputs kept as the next frontier
        self.new: dict[str, list[np.ndarray]] = {}  # the next frontier, filled batch by batch


class _Frontier:
    """Runs both models level by level, caching the activations at the frontier of what was computed.

    Running the whole prefix up to each level's inputs costs depth² / 2 layer passes; instead
    each level runs only the *segment* between the cached frontier tensors and its inputs, for
    the original model and for the current one (the refits of earlier levels applied). The
    frontier holds, per calibration batch, the tensors computed so far that a node still to run
    reads; graph inputs come from the calibration batches. A tensor computed in a level's segment
    is upstream of that level's inputs only, so no later refit changes it. When the frontier of
    both models would exceed ``cache_bytes``, nothing is cached and the next level runs from the
    graph inputs again (memory stays bounded). A graph with subgraphs (If, Loop, Scan: names read
    from an outer scope) is never cut: each level runs the whole model with the wanted outputs.
    """

    def __init__(self, model: Model, original: onnx.ModelProto, targets_per_level: list[list[str]],
                 n_batches: int, cache_bytes: int):
        self.model = model
        self.inputs = set(model.graph_inputs)
        self.levels = targets_per_level
        self.n_batches = n_batches
        self.cache_bytes = cache_bytes
        self.cut = not any(_is_graph_attr(a) for n in original.graph.node for a in n.attribute)
        self.protos = [original, None]
        self.sides = [_Side(), _Side()]  # original, current
        self.caching = True
        self.peak = 0  # the largest frontier kept (bytes, both models, all batches; estimated from the first)

    @staticmethod
    def _slice(proto: onnx.ModelProto, targets, have: set[str]) -> list[int]:
        """Indices of the nodes of ``proto`` that compute ``targets`` from ``have``, graph inputs and constants."""
        g = proto.graph
        free = have | {i.name for i in g.input} | {t.name for t in g.initializer}
        want = {t for t in targets if t not in free}
        nodes = []
        for i in range(len(g.node) - 1, -1, -1):
            n = g.node[i]
            if not want.intersection(n.output):
                continue
            nodes.append(i)
            want.update(x for x in n.input if x and x not in free)
        return nodes[::-1]

    def _type(self, name: str, side: _Side) -> int:
        """A tensor's element type: from its cached value, else as the model knows it."""
        if side.cache.get(name):
            return onnx.helper.np_dtype_to_tensor_dtype(side.cache[name][0].dtype)
        return self.model.dtypes.get(name, onnx.TensorProto.FLOAT)

    def _segment(self, proto: onnx.ModelProto, side: _Side, nodes: list[int]) -> bytes:
        m = onnx.ModelProto()
        m.ir_version = proto.ir_version
        m.opset_import.extend(proto.opset_import)
        m.functions.extend(proto.functions)
        g = m.graph
        g.name = proto.graph.name
        g.node.extend(proto.graph.node[i] for i in nodes)
        read = {x for i in nodes for x in proto.graph.node[i].input}
        g.initializer.extend(t for t in proto.graph.initializer if t.name in read)
        g.sparse_initializer.extend(t for t in proto.graph.sparse_initializer if t.values.name in read)
        declared = {i.name: i for i in proto.graph.input}
        for n in side.feeds:
            g.input.append(declared[n] if n in declared else
                           onnx.helper.make_tensor_value_info(n, self._type(n, side), None))
        for n in side.outs:
            g.output.append(onnx.helper.make_tensor_value_info(n, self._type(n, side), None))
        return m.SerializeToString()

    def prepare(self, level: int) -> None:
        """Sessions for level ``level`` (an index into the targets per level), current weights."""
        from ..validate.runtime import make_session

        targets = [t for t in self.levels[level] if t not in self.inputs]
        later = [t for ts in self.levels[level + 1:] for t in ts if t not in self.inputs]
        self.protos[1] = self.model.to_proto()
        for side, proto in zip(self.sides, self.protos):
            side.sess = None
            side.feeds, side.outs, side.keep = [], [], []
            if not self.cut:
                if targets:
                    side.feeds = [i.name for i in proto.graph.input if i.name in self.inputs]
                    side.outs = list(targets)
                    side.sess = make_session(self._with_outputs(proto, side, targets), "cpu")
                continue
            nodes = self._slice(proto, targets, set(side.cache))
            made = {o for i in nodes for o in proto.graph.node[i].output if o}  # "": an optional output left out
            read = {x for i in nodes for x in proto.graph.node[i].input if x} | set(targets)
            side.feeds = [n for n in side.cache if n in read] + [i.name for i in proto.graph.input
                                                                  if i.name in self.inputs and i.name in read]
            side.outs = [t for t in targets if t not in side.cache]
            if self.caching:  # the next frontier: what the rest reads of all computed so far
                done = side.computed | made | set(side.cache)
                rest = self._slice(proto, later, done)
                reads = {x for i in rest for x in proto.graph.node[i].input} | set(later)
                side.keep = [n for n in dict.fromkeys([*side.cache, *made]) if n in reads]
                side.outs = list(dict.fromkeys([*side.outs, *(n for n in side.keep if n in made)]))
                side.computed = done
            if not side.outs:
                continue
            try:
                side.sess = make_session(self._segment(proto, side, nodes), "cpu")
            except OnnxPruneError as e:  # a segment onnxruntime will not load alone: run the whole model
                log.info("sequential reconstruction runs the whole model at each level: %s", e)
                self.cut = False
                return self.prepare(level)

    def _with_outputs(self, proto: onnx.ModelProto, side: _Side, names: list[str]) -> bytes:
        m = onnx.ModelProto()
        m.CopyFrom(proto)
        del m.graph.output[:]
        for n in names:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, self._type(n, side), None))
        return m.SerializeToString()

    def run(self, batch: int, feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Both models' values of the level's targets (and graph inputs) for one batch."""
        got = []
        for side in self.sides:
            vals = {n: feeds[n] for n in feeds}
            if side.sess is not None:
                inp_ = {n: (feeds[n] if n in feeds else side.cache[n][batch]) for n in side.feeds}
                vals.update(zip(side.outs, side.sess.run(side.outs, inp_)))
            for n in side.feeds:
                if n not in vals:
                    vals[n] = side.cache[n][batch]
            if batch == 0:
                side.new = {}
            for n in side.keep:
                side.new.setdefault(n, []).append(vals[n] if n in vals else side.cache[n][batch])
            got.append(vals)
        if batch == 0 and self.caching and self.cut:
            size = sum(a.nbytes for side in self.sides for v in side.new.values() for a in v) * self.n_batches
            self.peak = max(self.peak, size)
            if size > self.cache_bytes:
                log.info("sequential reconstruction: frontier of %.0f MB over the cache budget of %.0f MB; "
                         "levels run from the inputs", size / 2**20, self.cache_bytes / 2**20)
                self.caching = False
        if not self.caching:
            for side in self.sides:
                side.keep, side.new = [], {}
        return got

    def advance(self) -> None:
        """The level's batches are done: its new frontier replaces the old one."""
        for side in self.sides:
            side.cache = side.new
            side.new = {}
            side.sess = None
            if not self.caching:
                side.cache, side.computed = {}, set()


def reconstruct(model: Model, an: Analysis, keep_atom: np.ndarray, calibration, *, row_budget: int = 16384,
                seed: int = 0, progress: bool = True, cache_bytes: int | None = None, original=None) -> list[str]:
    """Zero the removed channels' consumer slices, then refit consumers level by level.

    ``model`` is changed in place at full size (the slicing that follows removes the zeroed
    slices); ``calibration`` is a :class:`~onnxprune.calib.Calibration`. ``cache_bytes``
    bounds the activations kept between levels (default :data:`CACHE_BYTES`; see :class:`_Frontier`).
    ``original``: the model whose layer outputs are the targets (an ``onnx.ModelProto``; default
    ``model`` as it is now) — given when ``model`` was already changed (bias compensation).
    """
    with _blas_threads(BLAS_THREADS):
        return _reconstruct(model, an, keep_atom, calibration, row_budget=row_budget, seed=seed, progress=progress,
                            cache_bytes=CACHE_BYTES if cache_bytes is None else cache_bytes, original=original)


def _blas_threads(n: int | None):
    """numpy's BLAS limited to ``n`` threads (None: as it is) for the reconstruction.

    Its products and solves are a few hundred to a few thousand wide and alternate with
    onnxruntime's own thread pool; OpenBLAS's spinning threads then fight onnxruntime's and
    each other on a busy machine: one BLAS thread measured 2–3× less CPU (and less wall time)
    for the full-size ResNet-18 on 2 shared cores (scripts/bench_recovery.py).
    """
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a declared dependency
        log.info("threadpoolctl is not installed: BLAS keeps its own thread count")
        return contextlib.nullcontext()
    return threadpool_limits(n, user_api="blas")


def _reconstruct(model: Model, an: Analysis, keep_atom: np.ndarray, calibration, *, row_budget: int, seed: int,
                 progress: bool, cache_bytes: int, original=None) -> list[str]:
    clock = _Clock()
    jobs = plan_jobs(model, an, keep_atom)
    with clock("serialise"):
        original = (original if original is not None else model.to_proto()) if jobs else None
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
    per_level = [list(dict.fromkeys(j.x for j in jobs if j.level == lv)) for lv in levels]
    rng = np.random.default_rng(seed)
    n_batches = max(len(calibration), 1)
    front = _Frontier(model, original, per_level, n_batches, cache_bytes)
    del original
    from ..progress import progress as _progress

    for li, level in enumerate(_progress(levels, "reconstruction (seq)", unit="levels") if progress else levels):
        todo = [j for j in jobs if j.level == level]
        with clock("sessions"):
            front.prepare(li)
        for bi, feeds in enumerate(calibration.batches(None)):
            with clock("onnxruntime"):
                got_o, got_p = front.run(bi, feeds)
            mask = calibration.row_mask(feeds)
            with clock("statistics"):
                for j in todo:
                    xp, xo = got_p[j.x], got_o[j.x]
                    cap = max(1, -(-max(row_budget, 64 * (int(j.keep_cols.sum()) + 1)) // (2 * n_batches)))
                    for half, part_mask, sp, so in halves(mask, xp, xo):
                        _accumulate(j, half, sp, so, rng, cap, part_mask)
        front.advance()
        for j in todo:
            with clock("solves"):
                x, choice, errs = _solve(j)
            with clock("write"):
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
    LAST_PHASES.clear()
    LAST_PHASES.update({k: (v[0], v[1]) for k, v in clock.phases.items()})
    log.info("sequential reconstruction: %d consumers in %d levels; %s; activations cached between levels: "
             "at most %.0f MB", len(jobs), len(levels),
             ", ".join(f"{k} {v[0]:.1f} s ({v[1]:.1f} s CPU)" for k, v in clock.phases.items()), front.peak / 2**20)
    return report
