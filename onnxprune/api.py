"""The library entry points: ``inspect``, ``plan``, ``prune`` and ``sensitivity`` (keyword-only options).

    >>> import onnxprune
    >>> result = onnxprune.prune("model.onnx", "small.onnx", ratio=0.5, round_to=8)  # doctest: +SKIP
    >>> result.after.flops / result.before.flops  # doctest: +SKIP

Pipeline of ``prune``: load → (bypass residual blocks) → analyse → (record calibration
statistics) → score → plan (dead channels first; per-group ratios from sensitivity) → (record
Gram matrices for least squares) → rewrite with recovery → checked atomic save.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import rewrite
from .graph import Model, load_model, save_model
from .analysis import Analysis, analyze
from .cost import Cost, CostModel
from .errors import OnnxPruneError, PlanError
from .importance import NEEDS, ScoreData, score_groups
from .planner import Plan, dead_atoms, keep_atoms, make_plan, plan_dead_atoms

__all__ = ["inspect", "plan", "prune", "sensitivity", "PruneResult", "Inspection"]


@dataclass(frozen=True)
class Inspection:
    path: str
    opset: int
    ir_version: int
    nodes: int
    cost: Cost
    analysis: Analysis
    blocks: tuple = ()

    def to_dict(self) -> dict:
        an = self.analysis
        groups = []
        for g in an.groups:
            groups.append({"group": g.id, "name": an.group_name(g), "channels": g.size, "prunable": g.n_prunable,
                           "reasons": g.reasons, "members": an.group_members(g)})
        barriers = [{"node": an.model.node_name(n), "op": n.op_type, "reason": r} for n, r in an.barriers]
        return {"path": self.path, "opset": self.opset, "ir_version": self.ir_version, "nodes": self.nodes,
                "cost": self.cost.as_dict(), "groups": groups, "barriers": barriers,
                "residual_blocks": [b.to_dict() for b in self.blocks],
                "prunable_channels": int(sum(g.n_prunable for g in an.groups)),
                "channels": int(sum(g.size for g in an.groups))}


@dataclass(frozen=True)
class PruneResult:
    output: str
    plan: Plan
    before: Cost
    after: Cost
    recovery: tuple[str, ...] = ()
    removed_blocks: tuple[str, ...] = ()


@dataclass
class _Calib:
    """Calibration options shared by plan/prune/sensitivity."""

    source: str | None = None
    batch_size: int = 32
    image_spec: str | None = None
    limit: int | None = None
    data: object = field(default=None, repr=False)
    gradients: object = None  # path or GradientRecord
    hybrid_weights: tuple = (1.0, 1.0, 1.0)

    def load_gradients(self, model: Model):
        if self.gradients is None:
            return None
        from .gradients import GradientRecord

        rec = GradientRecord.load(self.gradients) if isinstance(self.gradients, str) else self.gradients
        rec.check_model(model)
        return rec

    def load(self, model: Model):
        if self.source is None:
            return None
        if self.data is None:
            from .calib import load_calibration

            self.data = load_calibration(self.source, model, batch_size=self.batch_size,
                                         image_spec=self.image_spec, limit=self.limit)
        return self.data


def inspect(path: str, *, protect: Sequence[str] = (), dims: dict[str, int] | None = None) -> Inspection:
    """Load a model and report its channel groups, barriers, residual blocks and cost.

    ``dims`` sets named dynamic dims (else the defaults of ``graph/shapes.py``) for the concrete
    shapes costs are counted at.
    """
    from .blocks import find_blocks

    m = _inferred(load_model(path), None, dims)
    an = analyze(m, protect=protect)
    return Inspection(path, m.opset, m.ir.ir_version, len(m.graph), CostModel(m).count(), an,
                      tuple(find_blocks(m)))


def _plan(m: Model, an: Analysis, *, criterion: str, ratio, target_flops, target_params, mode, round_to,
          min_channels, reduce, normalize, seed, calib: _Calib, remove_dead: bool | None, dead_tol: float,
          rank_by: str, sensitivity_ratios, need_stats: bool, heads=None, head_ratio=None):
    """Score and plan; returns (plan, recording or None)."""
    cal = calib.load(m)
    sens = criterion == "sensitivity"
    base = rank_by if sens else criterion
    if remove_dead is None:
        remove_dead = cal is not None
    if remove_dead and cal is None:
        raise PlanError("removing dead channels needs calibration data: give --calib")
    recording = None
    if cal is not None and (NEEDS.get(base) == "activations" or base == "hybrid" or remove_dead or need_stats):
        from .record import record_for

        recording = record_for(an, cal)
    grads = calib.load_gradients(m)
    scores = score_groups(an, base, reduce=reduce, normalize=normalize, seed=seed,
                          data=ScoreData(activations=recording, gradients=grads,
                                         hybrid_weights=tuple(calib.hybrid_weights)))
    dead = dead_atoms(an, recording, dead_tol) if remove_dead and recording is not None else None
    group_ratios = None
    if sens:
        from .sensitivity import DEFAULT_RATIOS, allocate, measure

        if cal is None:
            raise PlanError("criterion 'sensitivity' needs calibration data: give --calib")
        if target_flops is None and target_params is None:
            raise PlanError("criterion 'sensitivity' allocates ratios for a target: give --target-flops or "
                            "--target-params")
        table = measure(an, cal, scores, ratios=sensitivity_ratios or DEFAULT_RATIOS)
        metric, target = ("flops", target_flops) if target_flops is not None else ("params", target_params)
        group_ratios = allocate(an, table, scores, target=target, metric=metric, round_to=round_to,
                                min_channels=min_channels)
        ratio = target_flops = target_params = None
    p = make_plan(an, scores, criterion=criterion, ratio=ratio, target_flops=target_flops,
                  target_params=target_params, mode=mode, round_to=round_to, min_channels=min_channels,
                  notes=scores.notes, model_name=os.path.basename(m.path or ""), dead=dead,
                  group_ratios=group_ratios, heads=heads, head_ratio=head_ratio)
    return p, recording


def _options(kw: dict) -> dict:
    calib = _Calib(kw.pop("calib", None), kw.pop("calib_batch", 32), kw.pop("image_spec", None),
                   kw.pop("calib_limit", None), gradients=kw.pop("gradients", None),
                   hybrid_weights=kw.pop("hybrid_weights", (1.0, 1.0, 1.0)))
    return dict(calib=calib, remove_dead=kw.pop("remove_dead", None), dead_tol=kw.pop("dead_tol", 1e-6),
                rank_by=kw.pop("rank_by", "l2"), sensitivity_ratios=kw.pop("sensitivity_ratios", None), **kw)


def plan(path: str, *, criterion: str | None = None, ratio: float | None = None, target_flops: float | None = None,
         target_params: float | None = None, mode: str = "uniform", round_to: int = 1, min_channels: int = 1,
         protect: Sequence[str] = (), reduce: str = "mean", normalize: str = "mean", seed: int = 0,
         heads: int | None = None, head_ratio: float | None = None, dims: dict[str, int] | None = None,
         target_cosine: float | None = None, target_error: float | None = None, metric=None,
         metric_target: float | None = None, recover: str | None = None, **calibration) -> Plan:
    """Make a plan for a model without changing it.

    Calibration keywords (``calib``, ``calib_batch``, ``image_spec``, ``calib_limit``,
    ``remove_dead``, ``dead_tol``, ``rank_by``, ``sensitivity_ratios``, ``gradients``,
    ``hybrid_weights``) are as for :func:`prune`; so are the quality targets (``target_cosine``,
    ``target_error``, ``metric``/``metric_target``, searched with ``recover``): the plan found
    records the search's trajectory in ``settings["trajectory"]``.
    """
    criterion, recover = _defaults(criterion, recover, calibration.get("calib"))
    target = _target(target_cosine, target_error, metric, metric_target)
    if target is not None:
        opts = _options(dict(calibration))
        found = _search(path, target, opts, criterion=criterion, recover=recover, mode=mode, round_to=round_to,
                        min_channels=min_channels, protect=protect, reduce=reduce, normalize=normalize, seed=seed,
                        dims=dims, given=(ratio, target_flops, target_params, heads, head_ratio))
        return found.plan
    m = load_model(path)
    opts = _options(dict(calibration))
    _inferred(m, opts["calib"], dims)
    an = analyze(m, protect=protect)
    if heads is not None or head_ratio is not None:
        ratio = 0.0 if ratio is None and target_flops is None and target_params is None else ratio
    p, _ = _plan(m, an, criterion=criterion, ratio=ratio, target_flops=target_flops, target_params=target_params,
                 mode=mode, round_to=round_to, min_channels=min_channels, reduce=reduce, normalize=normalize,
                 seed=seed, need_stats=False, heads=heads, head_ratio=head_ratio, **opts)
    return p


def prune(path: str, output: str, *, plan: Plan | str | None = None, criterion: str | None = None,
          ratio: float | None = None, target_flops: float | None = None, target_params: float | None = None,
          mode: str = "uniform", round_to: int = 1, min_channels: int = 1, protect: Sequence[str] = (),
          reduce: str = "mean", normalize: str = "mean", seed: int = 0, external_data: bool | None = None,
          calib: str | None = None, calib_batch: int = 32, image_spec: str | None = None,
          calib_limit: int | None = None, recover: str | None = None,
          remove_dead: bool | None = None, dead_tol: float = 1e-6, rank_by: str = "l2",
          sensitivity_ratios: Sequence[float] | None = None, remove_blocks: int = 0,
          block_metric: str = "cosine", block_target_flops: float | None = None,
          gradients=None, hybrid_weights: Sequence[float] = (1.0, 1.0, 1.0), heads: int | None = None,
          head_ratio: float | None = None, dims: dict[str, int] | None = None, target_cosine: float | None = None,
          target_error: float | None = None, metric=None, metric_target: float | None = None) -> PruneResult:
    """Prune a model file structurally and write the result (atomically, fully checked).

    Args:
        path: the input model; never modified.
        output: where to write the pruned model (must not be ``path``).
        plan: a plan (or its JSON path) to apply instead of planning.
        criterion: ``l1 l2 bn random activation apoz wanda sensitivity`` (default: ``l2``; with
            ``calib`` the measured best, ``CALIB_CRITERION``).
        calib: calibration ``.npz`` or image folder (``image_spec`` for preprocessing).
        recover: ``none``, ``bias`` (data-free from BatchNorm without ``calib``), ``lsq`` or ``seq``
            (sequential reconstruction; default with ``calib``, else ``none``).
        target_cosine / target_error: instead of a ratio, remove as much as keeps every output
            within this cosine (relative L2 error) on calibration samples held back from fitting
            (``search.py``); ``metric`` (a callable of original and pruned output lists, higher is
            better) with ``metric_target`` replaces the built-in measures.
        remove_dead: remove channels constant on calibration data (default: when ``calib``).
        rank_by: the within-group ranking used by ``sensitivity``.
        gradients: a gradient record (``.npz`` path or ``GradientRecord``) for ``taylor``,
            ``fisher``, ``grad`` and ``hybrid``; refused when made for another model.
        hybrid_weights: magnitude, gradient, activation weights of ``hybrid``.
        heads: remove this many attention heads per head group (``head_ratio``: a fraction);
            ``ratio``/targets then apply to the other groups.
        remove_blocks: bypass this many residual blocks (ranked by ``block_metric``) first.
        block_target_flops: instead, bypass blocks (least important first) until this fraction of
            the FLOPs is left.
        the rest: as in :func:`plan`.

    Raises:
        OnnxPruneError: bad input, impossible target, stale plan, or a result failing the checker.
    """
    from .rewrite.recover import MODES, Recovery, data_free_means

    criterion, recover = _defaults(criterion, recover, calib)
    if os.path.exists(output) and os.path.exists(path) and os.path.samefile(path, output):
        raise OnnxPruneError(f"-o {output} is the input model; choose another output path (the input is never modified)")
    if recover not in MODES:
        raise OnnxPruneError(f"unknown recovery '{recover}'; use one of {', '.join(MODES)}")
    if recover in ("lsq", "seq") and calib is None:
        raise OnnxPruneError(f"--recover {recover} needs calibration data: give --calib")
    target = _target(target_cosine, target_error, metric, metric_target)
    if target is not None:
        if plan is not None or remove_blocks or block_target_flops is not None:
            raise OnnxPruneError("a quality target plans by itself: drop --plan/--remove-blocks/--block-target-flops")
        opts = _options(dict(calib=calib, calib_batch=calib_batch, image_spec=image_spec, calib_limit=calib_limit,
                             remove_dead=remove_dead, dead_tol=dead_tol, rank_by=rank_by,
                             sensitivity_ratios=sensitivity_ratios, gradients=gradients,
                             hybrid_weights=hybrid_weights))
        found = _search(path, target, opts, criterion=criterion, recover=recover, mode=mode, round_to=round_to,
                        min_channels=min_channels, protect=protect, reduce=reduce, normalize=normalize, seed=seed,
                        dims=dims, given=(ratio, target_flops, target_params, heads, head_ratio))
        if external_data is None and found.model.external_data:
            external_data = True
        save_model(found.model, output, external_data=external_data)
        return PruneResult(output, found.plan, found.before, found.after, found.recovery)
    m = load_model(path)
    cal = _Calib(calib, calib_batch, image_spec, calib_limit, gradients=gradients,
                 hybrid_weights=tuple(hybrid_weights))
    first_cost = CostModel(_inferred(m, cal, dims)).count()
    removed_blocks: tuple[str, ...] = ()
    if (remove_blocks or block_target_flops is not None) and gradients is not None:
        raise OnnxPruneError("a gradient record fits the model before blocks are removed; prune blocks and "
                             "channels in two runs, recording gradients for the second")
    if remove_blocks or block_target_flops is not None:
        m, removed_blocks = _remove_blocks(m, remove_blocks, block_metric, cal, block_target_flops)
    an = analyze(m, protect=protect)
    recording = None
    if plan is None:
        if ratio is None and target_flops is None and target_params is None and criterion != "sensitivity":
            ratio = 0.0 if removed_blocks or heads is not None or head_ratio is not None else None
        p, recording = _plan(m, an, criterion=criterion, ratio=ratio, target_flops=target_flops,
                             target_params=target_params, mode=mode, round_to=round_to, min_channels=min_channels,
                             reduce=reduce, normalize=normalize, seed=seed, calib=cal, remove_dead=remove_dead,
                             dead_tol=dead_tol, rank_by=rank_by, sensitivity_ratios=sensitivity_ratios,
                             need_stats=recover != "none", heads=heads, head_ratio=head_ratio)
    else:
        p = Plan.load(plan) if isinstance(plan, str) else plan
    keep = keep_atoms(an, p)
    cm = CostModel(m, an)
    after = cm.count(keep)
    folds = plan_dead_atoms(an, p)
    recovery = None
    if recover != "none" or folds.any():
        if recording is None and cal.source is not None:
            from .record import record_for

            recording = record_for(an, cal.load(m))
        means = ({k: st.mean for k, st in recording.stats.items()} if recording is not None
                 else data_free_means(an))
        grams = {}
        if recover == "lsq":
            from .record import record_for

            consumers = list(dict.fromkeys(q.node for q in an.params if q.role == "in" and _loses_input(an, q, keep)))
            grams = record_for(an, cal.load(m), with_grams=consumers, stats=False).grams
        recovery = Recovery(recover, means, grams, fold_atoms=folds,
                            calibration=cal.load(m) if recover == "seq" else None)
    if external_data is None and m.external_data:
        external_data = True
    result = rewrite.apply(m, an, keep, recovery=recovery)
    save_model(m, output, external_data=external_data)
    return PruneResult(output, p, first_cost, after, result.recovery, removed_blocks)


def sensitivity(path: str, *, calib: str, rank_by: str = "l2", ratios: Sequence[float] | None = None,
                calib_batch: int = 32, image_spec: str | None = None, calib_limit: int | None = None,
                protect: Sequence[str] = ()):
    """Measure each group's error at several removal ratios (``sensitivity.SensitivityTable``)."""
    from .sensitivity import DEFAULT_RATIOS, measure

    m = load_model(path)
    an = analyze(m, protect=protect)
    cal = _Calib(calib, calib_batch, image_spec, calib_limit).load(m)
    rec = None
    if NEEDS.get(rank_by) == "activations":
        from .record import record_for

        rec = record_for(an, cal)
    scores = score_groups(an, rank_by, data=ScoreData(activations=rec))
    return measure(an, cal, scores, ratios=ratios or DEFAULT_RATIOS)


# Measured best on the dev set with calibration data (scripts/bench_quality.py): see the note of issue 9.
CALIB_CRITERION = "wanda"
CALIB_RECOVER = "seq"


def _defaults(criterion: str | None, recover: str | None, calib) -> tuple[str, str]:
    """Criterion and recovery when not given: the measured best with ``calib``, else l2 / none."""
    if criterion is None:
        criterion = CALIB_CRITERION if calib is not None else "l2"
    if recover is None:
        recover = CALIB_RECOVER if calib is not None else "none"
    return criterion, recover


def _target(cosine, error, metric, metric_target):
    from .validate.quality import Target

    given = [x is not None for x in (cosine, error, metric)]
    if not any(given):
        return None
    if sum(given) > 1:
        raise PlanError("give one quality target: --target-cosine, --target-error or a metric")
    if cosine is not None and not 0 < cosine <= 1:
        raise PlanError(f"--target-cosine {cosine} must be in (0, 1]")
    if error is not None and not 0 <= error < 1:
        raise PlanError(f"--target-error {error} must be in [0, 1): the relative L2 error allowed")
    if metric is not None and (not callable(metric) or metric_target is None):
        raise PlanError("metric must be a callable metric(original_outputs, pruned_outputs) with a metric_target")
    return Target(cosine, error, metric, metric_target)


def _search(path, target, opts, *, criterion, recover, given, dims, protect, **planning):
    from .search import search

    if any(v is not None for v in given):
        raise PlanError("a quality target decides how much to remove: drop --ratio/--target-flops/"
                        "--target-params/--heads/--head-ratio")
    calib = opts.pop("calib")
    if calib.source is None:
        raise PlanError("a quality target is measured on held-back calibration samples: give --calib")
    reduce_kw = {k: planning.pop(k) for k in ("reduce", "normalize", "seed")}
    found = search(path, target, calib=calib, criterion=criterion, recover=recover, protect=protect, dims=dims,
                   planning={**planning, **reduce_kw, **opts})
    if found.model is None:
        steps = "; ".join(f"{s.flops:.3f} -> {s.score:.4f}" for s in found.trajectory)
        raise PlanError(f"no plan meets {target.describe()} on the check samples ({found.stopped}; FLOPs kept -> "
                        f"score: {steps}); relax the target")
    return found


def _inferred(m: Model, cal: _Calib | None = None, dims: dict[str, int] | None = None) -> Model:
    """Infer shapes at the concrete input shape: the calibration data's, else ``dims``/defaults."""
    if m.shapes:
        return m
    concrete = None
    if cal is not None and cal.source is not None:
        data = cal.load(m)
        first = next(iter(data.batches(None)), None) if data is not None else None
        if first:
            concrete = {k: (1, *np.shape(v)[1:]) for k, v in first.items()}
    m.infer(concrete=concrete, dims=dims)
    return m


def _loses_input(an: Analysis, p, keep: np.ndarray) -> bool:
    return not an.keep_mask(p.labels, keep).all()


def _remove_blocks(m: Model, n: int, metric: str, cal: _Calib, target: float | None) -> tuple[Model, tuple[str, ...]]:
    from .blocks import block_flops, find_blocks, rank_blocks
    from .rewrite import finish, run_passes
    from .rewrite.blocks import BypassBlocksPass

    blocks = find_blocks(m)
    if n > len(blocks):
        raise PlanError(f"--remove-blocks {n}: the model has {len(blocks)} removable residual blocks")
    if target is not None and not 0 < target <= 1:
        raise PlanError(f"--block-target-flops {target} must be in (0, 1]: the fraction of FLOPs to keep")
    data = cal.load(m)
    if data is None:
        raise PlanError("ranking residual blocks needs calibration data: give --calib")
    ranked = [b for b, _ in rank_blocks(m, blocks, data, metric)]
    if target is None:
        chosen = ranked[:n]
    else:
        total = CostModel(m).count().flops
        left, chosen = total, []
        for b in ranked:
            if left <= target * total:
                break
            chosen.append(b)
            left -= block_flops(m, b)
        if left > target * total:
            raise PlanError(f"bypassing all {len(blocks)} residual blocks keeps {left / total:.3f} of the FLOPs; "
                            f"--block-target-flops {target} is out of reach (add channel pruning)")
    run_passes(m, [BypassBlocksPass(m, chosen)])
    finish(m)
    m.infer(concrete=m.concrete or None)  # the channel analysis that follows needs the concrete shapes again
    return m, tuple(b.add for b in chosen)
