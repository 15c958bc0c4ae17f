"""Pruning to a quality target: the largest FLOPs reduction whose outputs stay within the target.

The calibration samples are split (``Calibration.split``): three quarters *fit* (scores,
statistics, recovery), every fourth sample is held back to *check*. The search walks down the
fraction of FLOPs kept — coarse steps (``step``) until a plan misses the target, then bisection
between the last plan that met it and the first that missed — and judges every candidate
*after* recovery: the model is pruned for real (planned, recovered, sliced) and the check
samples' outputs are compared with the original's (``validate.quality.Target``: cosine or
relative error, plus top-1 agreement / thresholded-decision agreement by kind of output, or a
user metric). It returns the last model that met the target, never one that missed it, with the
trajectory of every candidate tried. Costs are counted at the calibration input's shape.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .analysis import analyze
from .cost import CostModel
from .errors import PlanError
from .graph import Model, load_model
from .validate.quality import Target, output_kind

log = logging.getLogger(__name__)

__all__ = ["Step", "SearchResult", "search"]


@dataclass(frozen=True)
class Step:
    flops_target: float
    flops: float  # fraction of the original FLOPs kept (at the calibration shape)
    params: float
    score: float
    met: bool
    seconds: float
    outputs: tuple = ()

    def to_dict(self) -> dict:
        return {"flops_target": round(self.flops_target, 4), "flops": round(self.flops, 4),
                "params": round(self.params, 4), "score": round(self.score, 6), "met": self.met,
                "seconds": round(self.seconds, 2), "outputs": [q.to_dict() for q in self.outputs]}


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


def search(path: str, target: Target, *, calib, criterion: str, recover: str, planning: dict, protect=(),
           dims=None, step: float = 0.1, refine: int = 3, min_flops: float = 0.05,
           progress: bool = True) -> SearchResult:
    """Search the fraction of FLOPs kept for ``target`` (see the module docstring).

    Args:
        calib: the ``api._Calib`` options (its data is split into fit and check parts).
        planning: keyword arguments of ``planner.make_plan`` besides the target (mode, round_to,
            min_channels, reduce/normalize/seed go to scoring).
    """
    from . import api, rewrite
    from .planner import keep_atoms

    m0 = load_model(path)
    cal_all = calib.load(m0)
    if cal_all is None:
        raise PlanError("a quality target needs calibration data: give calib")
    api._inferred(m0, calib, dims)
    fit, check = cal_all.split()
    an0 = analyze(m0, protect=protect)
    before = CostModel(m0).count()
    fit_opts = api._Calib(calib.source, calib.batch_size, calib.image_spec, calib.limit, data=fit,
                          gradients=calib.gradients, hybrid_weights=calib.hybrid_weights)
    scorer = _Scorer(m0, an0, criterion, fit_opts, recover, planning)
    base_blob = m0.serialized_with_outputs([])
    orig = _outputs(base_blob, check)
    names = [v.name for v in m0.graph.outputs]
    producers = [m0.producer(n) for n in names]
    kinds = [output_kind(a, _producer_op(m0, p)) for a, p in zip(orig, producers)]
    log.info("quality search: output kinds %s; %d fit / %d check samples", dict(zip(names, kinds)),
             fit.n_samples, check.n_samples)
    trajectory: list[Step] = []
    best: tuple | None = None

    def trial(f: float) -> bool:
        nonlocal best
        t0 = time.perf_counter()
        try:
            plan = scorer.plan(f)
        except PlanError as e:
            log.info("target flops %.3f: %s", f, e)
            return False
        m = load_model(path)
        api._inferred(m, calib, dims)
        an = analyze(m, protect=protect)
        keep = keep_atoms(an, plan)
        after = CostModel(m, an).count(keep)
        recovery = scorer.recovery(m, an, keep, plan)
        res = rewrite.apply(m, an, keep, recovery=recovery)
        new = _outputs(m.serialized_with_outputs([]), check)
        met, score, qs = target.check(names, kinds, orig, new)
        s = Step(f, after.flops / max(before.flops, 1), after.params / max(before.params, 1), score, met,
                 time.perf_counter() - t0, tuple(qs))
        trajectory.append(s)
        if progress:
            log.info("  keep %.3f of FLOPs (asked %.3f): score %.4f %s", s.flops, f, score,
                        "meets the target" if met else "misses the target")
        if met and (best is None or s.flops < best[0].flops):
            best = (s, m, plan, res.recovery, after)
        return met

    hi, lo = 1.0, None  # hi: last fraction that met (1.0: nothing removed yet); lo: first that missed
    f = 1.0 - step
    while f >= min_flops - 1e-9:
        if trial(f):
            hi = f
            f = round(f - step, 6)
        else:
            lo = f
            break
    stopped = (f"reached the smallest fraction tried ({min_flops:g})" if lo is None else "")
    if lo is not None:
        for _ in range(refine):
            mid = (hi + lo) / 2
            if trial(mid):
                hi = mid
            else:
                lo = mid
        stopped = (f"the target is met at {hi:.3f} of the FLOPs and missed at {lo:.3f}" if best is not None
                   else f"even keeping {lo:.3f} of the FLOPs misses the target")
    if best is None:
        return SearchResult(None, None, trajectory, (), stopped, before)
    s, m, plan, rec, after = best
    traj = [t.to_dict() for t in trajectory]
    settings = {**plan.settings, "quality_target": target.describe(), "trajectory": traj,
                "check_samples": check.n_samples, "fit_samples": fit.n_samples, "stopped": stopped}
    from dataclasses import replace

    plan = replace(plan, settings=settings)
    return SearchResult(m, plan, trajectory, tuple(rec), stopped, before, after)


def _producer_op(model: Model, node) -> str | None:
    from .graph import inp

    while node is not None and node.op_type in ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze"):
        node = model.producer(inp(node, 0))
    return None if node is None else node.op_type


class _Scorer:
    """Scores once on the fit samples; a plan per FLOPs fraction; recovery data per trial."""

    def __init__(self, m: Model, an, criterion: str, calib, recover: str, planning: dict) -> None:
        from .importance import ScoreData, score_groups
        from .planner import dead_atoms
        from .record import record_for

        self.an, self.criterion, self.recover, self.calib = an, criterion, recover, calib
        self.planning = dict(planning)
        cal = calib.data
        sens = criterion == "sensitivity"
        rank_by = self.planning.pop("rank_by", "l2")
        base = rank_by if sens else criterion
        remove_dead = self.planning.pop("remove_dead", None)
        remove_dead = True if remove_dead is None else remove_dead
        self.dead_tol = self.planning.pop("dead_tol", 1e-6)
        self.ratios = self.planning.pop("sensitivity_ratios", None)
        score_kw = {k: self.planning.pop(k) for k in ("reduce", "normalize", "seed") if k in self.planning}
        self.recording = record_for(an, cal)
        grads = calib.load_gradients(m)
        self.scores = score_groups(an, base, data=ScoreData(activations=self.recording, gradients=grads,
                                                           hybrid_weights=tuple(calib.hybrid_weights),
                                                           calibration=cal), **score_kw)
        self.dead = dead_atoms(an, self.recording, self.dead_tol) if remove_dead else None
        self.table = None
        if sens:
            from .sensitivity import DEFAULT_RATIOS, measure

            self.table = measure(an, cal, self.scores, ratios=self.ratios or DEFAULT_RATIOS)
        self.model_name = os.path.basename(m.path or "")

    def plan(self, f: float):
        from .planner import make_plan

        kw = dict(self.planning)
        if self.table is not None:
            from .sensitivity import allocate

            ratios = allocate(self.an, self.table, self.scores, target=f, metric="flops",
                              round_to=kw.get("round_to", 1), min_channels=kw.get("min_channels", 1))
            return make_plan(self.an, self.scores, criterion=self.criterion, group_ratios=ratios,
                             notes=self.scores.notes, model_name=self.model_name, dead=self.dead, **kw)
        return make_plan(self.an, self.scores, criterion=self.criterion, target_flops=f, notes=self.scores.notes,
                         model_name=self.model_name, dead=self.dead, **kw)

    def recovery(self, m: Model, an, keep, plan):
        from .planner import plan_dead_atoms
        from .record import record_for
        from .rewrite.recover import Recovery

        folds = plan_dead_atoms(an, plan)
        if self.recover == "none" and not folds.any():
            return None
        means = {k: st.mean for k, st in self.recording.stats.items()}
        grams = {}
        if self.recover == "lsq":
            consumers = list(dict.fromkeys(q.node for q in an.params if q.role == "in"
                                           and not an.keep_mask(q.labels, keep).all()))
            grams = record_for(an, self.calib.data, with_grams=consumers, stats=False).grams
        return Recovery(self.recover, means, grams, fold_atoms=folds,
                        calibration=self.calib.data if self.recover == "seq" else None)
