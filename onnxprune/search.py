"""Pruning to a quality target: the largest FLOPs reduction whose outputs stay within the target.

The calibration samples are split (``Calibration.split``): three quarters *fit* (scores,
statistics, recovery), every fourth sample is held back to *check*. Every candidate plan is
judged *after* recovery: the model is pruned for real (planned, recovered, sliced) and the check
samples' outputs are compared with the original's (``validate.quality.Target``: cosine or
relative error, plus top-1 agreement / thresholded-decision agreement by kind of output, or a
user metric). Two phases:

1. **global**: the fraction of FLOPs kept is walked down in coarse steps (``step``) until a
   plan misses the target, then bisected (``refine`` times) between the last plan that met it
   and the first that missed. Plans come from the same scoring and planning code as a fixed
   ``--target-flops`` (``api._score`` once on the fit part, ``api._plan_scored`` per fraction).
2. **per group** (``per_group``; greedy by measured error): starting from the best global plan,
   each prunable group's next step (``group_step`` of its width, at least ``round_to``
   channels or one head) is a *move*. Moves are ranked by their error per FLOP saved, the error
   measured on fit samples by zeroing the removed channels' consumer-side weights of the
   original (the plan so far plus the move; the oracle's equivalent of removal, one
   onnxruntime session with overridable weights, no rebuild). The best ``k`` moves are tried
   together, pruned and recovered for real and judged on the check part: met, they are kept
   (and the moved groups re-measured); missed, ``k`` is halved; a single move that misses
   retires its group. At most ``group_budget`` candidates; moves only ever remove more.

It returns the model of the candidate that kept the fewest FLOPs among those that met the
target — never one that missed — with the trajectory of every candidate tried. Costs are
counted at the calibration input's shape. (Quality targets and latency targets exclude each
other, so the cost searched is FLOPs.)
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from .analysis import analyze
from .cost import CostModel
from .errors import PlanError
from .graph import Model, load_model
from .validate.quality import Target, output_kind

log = logging.getLogger(__name__)

__all__ = ["SearchResult", "Step", "producer_op", "search"]


@dataclass(frozen=True)
class Step:
    flops_target: float | None  # the fraction asked of the global phase (None: a per-group candidate)
    flops: float  # fraction of the original FLOPs kept (at the calibration shape)
    params: float
    score: float
    met: bool
    seconds: float
    outputs: tuple = ()
    phase: str = "global"  # or "per-group"
    moved: tuple = ()  # per-group: names of the groups cut further

    def to_dict(self) -> dict:
        return {"phase": self.phase,
                "flops_target": None if self.flops_target is None else round(self.flops_target, 4),
                "flops": round(self.flops, 4), "params": round(self.params, 4), "score": round(self.score, 6),
                "met": self.met, "seconds": round(self.seconds, 2), "moved": list(self.moved),
                "outputs": [q.to_dict() for q in self.outputs]}


@dataclass
class SearchResult:
    model: Model | None  # the pruned model that met the target (None: none did)
    plan: object
    trajectory: list[Step] = field(default_factory=list)
    recovery: tuple[str, ...] = ()
    stopped: str = ""
    before: object = None  # Cost of the original, at the calibration shape
    after: object = None  # Cost of the model found


def _outputs(blob: bytes, cal) -> list[np.ndarray]:
    from .validate.runtime import make_session

    sess = make_session(blob, "cpu")
    names = [o.name for o in sess.get_outputs()]
    parts = [sess.run(names, feeds) for feeds in cal.batches(None)]
    return [np.concatenate([p[k] for p in parts]) if parts[0][k].ndim else parts[0][k] for k in range(len(names))]


def search(path: str, target: Target, o, *, calib, round_to: int = 1, dims=None, step: float = 0.1,
           refine: int = 3, min_flops: float = 0.05, per_group: bool = True, group_budget: int = 6,
           group_step: float = 0.125, progress: bool = True) -> SearchResult:
    """Search the plan for ``target`` (see the module docstring).

    Args:
        o: the resolved options (``options.Resolved``) of ``plan``/``prune``: criterion, recover,
            mode, min_channels, scoring and dead-channel options, protect.
        calib: the ``api._Calib`` options (its data is split into fit and check parts).
        round_to: the resolved channel step of kept widths.
        per_group: run the per-group phase after the global one.
        group_budget: at most this many per-group candidates (each one pruned and recovered).
        group_step: a move removes this fraction of a group's width (at least one step).
    """
    from . import api, rewrite
    from .planner import keep_atoms

    m0 = load_model(path)
    cal_all = calib.load(m0)
    if cal_all is None:
        raise PlanError("a quality target needs calibration data: give calib")
    api._inferred(m0, calib, dims)
    fit, check = cal_all.split()
    an0 = analyze(m0, protect=o.protect)
    before = CostModel(m0).count()
    fit_opts = api._Calib(calib.source, calib.batch_size, calib.image_spec, calib.limit, data=fit,
                          gradients=calib.gradients, hybrid_weights=calib.hybrid_weights)
    sc = api._score(m0, an0, o, fit_opts, need_stats=o.recover != "none")
    orig = _outputs(m0.serialized_with_outputs([]), check)
    names = [v.name for v in m0.graph.outputs]
    kinds = [output_kind(a, producer_op(m0, m0.producer(n))) for a, n in zip(orig, names)]
    log.info("quality search: output kinds %s; %d fit / %d check samples", dict(zip(names, kinds)),
             fit.n_samples, check.n_samples)
    trajectory: list[Step] = []
    best: tuple | None = None

    def trial(plan, asked: float | None, phase: str = "global", moved: tuple = ()) -> bool:
        nonlocal best
        t0 = time.perf_counter()
        m = load_model(path)
        api._inferred(m, calib, dims)
        an = analyze(m, protect=o.protect)
        keep = keep_atoms(an, plan)
        after = CostModel(m, an).count(keep)
        recovery = api._recovery(an, o.recover, fit, sc.recording, keep, plan)
        res = rewrite.apply(m, an, keep, recovery=recovery)
        new = _outputs(m.serialized_with_outputs([]), check)
        met, score, qs = target.check(names, kinds, orig, new)
        s = Step(asked, after.flops / max(before.flops, 1), after.params / max(before.params, 1), score, met,
                 time.perf_counter() - t0, tuple(qs), phase, moved)
        trajectory.append(s)
        if progress:
            log.info("  %s: keep %.3f of FLOPs%s: score %.4f %s", phase, s.flops,
                     f" (asked {asked:.3f})" if asked is not None else f" ({len(moved)} groups cut further)",
                     score, "meets the target" if met else "misses the target")
        if met and (best is None or s.flops < best[0].flops):
            best = (s, m, plan, res.recovery, after)
        return met

    def global_trial(f: float) -> bool:
        try:
            plan = api._plan_scored(m0, an0, o, sc, target_flops=f, round_to=round_to)
        except PlanError as e:
            log.info("target flops %.3f: %s", f, e)
            return False
        return trial(plan, f)

    hi, lo = 1.0, None  # hi: last fraction that met (1.0: nothing removed yet); lo: first that missed
    f = 1.0 - step
    while f >= min_flops - 1e-9:
        if global_trial(f):
            hi = f
            f = round(f - step, 6)
        else:
            lo = f
            break
    stopped = (f"reached the smallest fraction tried ({min_flops:g})" if lo is None else "")
    if lo is not None:
        for _ in range(refine):
            mid = (hi + lo) / 2
            if global_trial(mid):
                hi = mid
            else:
                lo = mid
        stopped = (f"the target is met at {hi:.3f} of the FLOPs and missed at {lo:.3f}" if best is not None
                   else f"even keeping {lo:.3f} of the FLOPs misses the target")
    if best is not None and per_group and group_budget > 0:
        g_stop = _per_group(m0, an0, o, sc, fit, best[2], round_to, group_budget, group_step,
                            lambda plan, moved: trial(plan, None, "per-group", moved))
        stopped += f"; per group: {g_stop}"
    if best is None:
        return SearchResult(None, None, trajectory, (), stopped, before)
    _, m, plan, rec, after = best
    traj = [t.to_dict() for t in trajectory]
    settings = {**plan.settings, "quality_target": target.describe(), "trajectory": traj,
                "check_samples": check.n_samples, "fit_samples": fit.n_samples, "stopped": stopped,
                "quality_search": "pergroup" if per_group else "global"}
    plan = replace(plan, settings=settings)
    return SearchResult(m, plan, trajectory, tuple(rec), stopped, before, after)


def producer_op(model: Model, node) -> str | None:
    """The op type that makes an output, looking through layout-only ops."""
    from .graph import inp

    while node is not None and node.op_type in ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze"):
        node = model.producer(inp(node, 0))
    return None if node is None else node.op_type


class _Zeroed:
    """Output change on fit samples when removed channels' consumer-side weights are zeroed (no rebuild).

    The oracle's equivalent of structural removal without recovery; a cheap, relative measure to
    rank per-group moves, never the judge of a candidate.
    """

    def __init__(self, an, data, max_samples: int = 16) -> None:
        from .sensitivity import _overridable
        from .validate.runtime import make_session

        self.an = an
        self.params = [(q.tensor, q.axis, q.labels) for g in an.groups if g.prunable
                       for k in g.params if (q := an.params[k]).role == "in"]
        names = {t for t, _, _ in self.params}
        self.sess = make_session(_overridable(an.model, names), "cpu")
        n = min(data.n_samples, max_samples)
        part = data if n >= data.n_samples or data.fixed_batch else data.subset(np.arange(n))
        self.batches = list(part.batches(None))
        self.base = [self.sess.run(None, b) for b in self.batches]
        self.energy = float(sum(np.sum(np.square(y.astype(np.float64))) for o in self.base for y in o))

    def error(self, keep: np.ndarray) -> float:
        from .sensitivity import zeroed_weights

        feeds = zeroed_weights(self.an, self.params, keep)
        num = 0.0
        for b, o0 in zip(self.batches, self.base):
            out = self.sess.run(None, {**b, **feeds})
            num += sum(float(np.sum(np.square(y.astype(np.float64) - y0))) for y, y0 in zip(out, o0))
        return num / max(self.energy, 1e-30)


def _per_group(m0: Model, an, o, sc, fit, start_plan, round_to: int, budget: int, frac: float, judge) -> str:
    """Greedy per-group phase (see the module docstring); returns why it stopped."""
    from . import api
    from .planner import keep_atoms

    removed = {gp.group: len(gp.remove) for gp in start_plan.groups}
    groups = [g for g in an.groups if g.prunable and g.kind in ("channels", "heads") and g.id in sc.scores]
    if not groups:
        return "no group to cut further"
    cm = CostModel(m0, an)
    zeroed = _Zeroed(an, fit)

    def plan_for(rm: dict[int, int]):
        ratios = {g.id: rm.get(g.id, 0) / g.size for g in groups}
        return api._plan_scored(m0, an, o, sc, group_ratios=ratios, round_to=round_to)

    def next_count(g, n_rm: int) -> int | None:
        """Channels removed after the group's next step (None: the group cannot give more)."""
        if g.kind == "heads":
            stepn = max(1, round(frac * g.size))
        else:
            stepn = max(round_to, math.ceil(frac * g.size / round_to) * round_to)
        kept = max(g.size - n_rm - stepn, o.min_channels if g.kind != "heads" else 1, int(g.pinned.sum()))
        if g.kind != "heads" and round_to > 1:  # as the planner rounds kept widths (up)
            kept = min(int(math.ceil(kept / round_to) * round_to), g.size)
        n = min(g.size - kept, g.n_prunable)
        return n if n > n_rm else None

    cur_keep = keep_atoms(an, start_plan)
    cur_flops = cm.count(cur_keep).flops
    cur_err = zeroed.error(cur_keep)
    retired: set[int] = set()
    rank: dict[int, tuple[float, int, float]] = {}  # group -> (error per FLOP saved, count after move, flops saved)

    def measure_move(g) -> None:
        n = next_count(g, removed.get(g.id, 0))
        if n is None:
            rank.pop(g.id, None)
            retired.add(g.id)
            return
        keep = cur_keep.copy()
        s = np.where(g.pinned | ~cur_keep[g.atoms], np.inf, sc.scores[g.id])
        extra = n - removed.get(g.id, 0)
        order = np.argsort(s, kind="stable")[:extra]
        keep[g.atoms[order]] = False
        saved = cur_flops - cm.count(keep).flops
        if saved <= 0:
            rank.pop(g.id, None)
            retired.add(g.id)
            return
        rank[g.id] = (max(zeroed.error(keep) - cur_err, 0.0) / saved, n, saved)

    for g in groups:
        measure_move(g)
    by_id = {g.id: g for g in groups}
    k = max(1, len(rank) // 2)
    used = 0
    while used < budget:
        order = sorted((gid for gid in rank if gid not in retired), key=lambda gid: rank[gid][0])
        if not order:
            return f"no group can give more ({used} candidates)"
        k = min(k, len(order))
        batch = order[:k]
        trial_rm = dict(removed)
        for gid in batch:
            trial_rm[gid] = rank[gid][1]
        try:
            plan = plan_for(trial_rm)
        except PlanError as e:
            log.info("per-group candidate refused: %s", e)
            retired.update(batch)
            continue
        used += 1
        if judge(plan, tuple(an.group_name(by_id[gid]) for gid in batch)):
            removed = {gp.group: len(gp.remove) for gp in plan.groups}
            cur_keep = keep_atoms(an, plan)
            cur_flops = cm.count(cur_keep).flops
            cur_err = zeroed.error(cur_keep)
            for gid in batch:
                measure_move(by_id[gid])
        elif k == 1:
            retired.add(batch[0])
        else:
            k = max(1, k // 2)
    return f"the budget of {budget} candidates is spent"
