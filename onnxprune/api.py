"""The library entry points: ``inspect``, ``plan`` and ``prune`` (keyword-only options).

    >>> import onnxprune
    >>> result = onnxprune.prune("model.onnx", "small.onnx", ratio=0.5, round_to=8)  # doctest: +SKIP
    >>> result.after.flops / result.before.flops  # doctest: +SKIP
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from . import rewrite
from ._ir import Model, load_model, save_model
from .analysis import Analysis, analyze
from .cost import Cost, CostModel
from .errors import OnnxPruneError
from .importance import score_groups
from .planner import Plan, keep_atoms, make_plan

__all__ = ["inspect", "plan", "prune", "PruneResult", "Inspection"]


@dataclass(frozen=True)
class Inspection:
    path: str
    opset: int
    ir_version: int
    nodes: int
    cost: Cost
    analysis: Analysis

    def to_dict(self) -> dict:
        an = self.analysis
        groups = []
        for g in an.groups:
            groups.append({"group": g.id, "name": an.group_name(g), "channels": g.size, "prunable": g.n_prunable,
                           "reasons": g.reasons, "members": an.group_members(g)})
        barriers = [{"node": an.model.node_name(i), "op": an.model.nodes[i].op_type, "reason": r}
                    for i, r in an.barriers]
        return {"path": self.path, "opset": self.opset, "ir_version": self.ir_version, "nodes": self.nodes,
                "cost": self.cost.as_dict(), "groups": groups, "barriers": barriers,
                "prunable_channels": int(sum(g.n_prunable for g in an.groups)),
                "channels": int(sum(g.size for g in an.groups))}


@dataclass(frozen=True)
class PruneResult:
    output: str
    plan: Plan
    before: Cost
    after: Cost


def inspect(path: str, *, protect: Sequence[str] = ()) -> Inspection:
    """Load a model and report its channel groups, barriers and cost."""
    m = load_model(path)
    an = analyze(m, protect=protect)
    return Inspection(path, m.opset, m.proto.ir_version, len(m.nodes), CostModel(m).count(), an)


def _plan(m: Model, an: Analysis, *, criterion: str, ratio, target_flops, target_params, mode, round_to,
          min_channels, reduce, normalize, seed) -> Plan:
    scores = score_groups(an, criterion, reduce=reduce, normalize=normalize, seed=seed)
    return make_plan(an, scores, criterion=criterion, ratio=ratio, target_flops=target_flops,
                     target_params=target_params, mode=mode, round_to=round_to, min_channels=min_channels,
                     notes=scores.notes, model_name=os.path.basename(m.path or ""))


def plan(path: str, *, criterion: str = "l2", ratio: float | None = None, target_flops: float | None = None,
         target_params: float | None = None, mode: str = "uniform", round_to: int = 1, min_channels: int = 1,
         protect: Sequence[str] = (), reduce: str = "mean", normalize: str = "mean", seed: int = 0) -> Plan:
    """Make a plan for a model without changing it (see ``planner.make_plan`` for the options)."""
    m = load_model(path)
    an = analyze(m, protect=protect)
    return _plan(m, an, criterion=criterion, ratio=ratio, target_flops=target_flops, target_params=target_params,
                 mode=mode, round_to=round_to, min_channels=min_channels, reduce=reduce, normalize=normalize,
                 seed=seed)


def prune(path: str, output: str, *, plan: Plan | str | None = None, criterion: str = "l2",
          ratio: float | None = None, target_flops: float | None = None, target_params: float | None = None,
          mode: str = "uniform", round_to: int = 1, min_channels: int = 1, protect: Sequence[str] = (),
          reduce: str = "mean", normalize: str = "mean", seed: int = 0, external_data: bool | None = None) -> PruneResult:
    """Prune a model file structurally and write the result (atomically, fully checked).

    Args:
        path: the input model; never modified.
        output: where to write the pruned model (must not be ``path``).
        plan: a plan (or its JSON path) to apply instead of planning.
        the rest: as in :func:`plan`.

    Raises:
        OnnxPruneError: bad input, impossible target, stale plan, or a result failing the checker.
    """
    if os.path.exists(output) and os.path.exists(path) and os.path.samefile(path, output):
        raise OnnxPruneError(f"-o {output} is the input model; choose another output path (the input is never modified)")
    m = load_model(path)
    an = analyze(m, protect=protect)
    if plan is None:
        p = _plan(m, an, criterion=criterion, ratio=ratio, target_flops=target_flops, target_params=target_params,
                  mode=mode, round_to=round_to, min_channels=min_channels, reduce=reduce, normalize=normalize,
                  seed=seed)
    else:
        p = Plan.load(plan) if isinstance(plan, str) else plan
    keep = keep_atoms(an, p)
    cm = CostModel(m, an)
    before, after = cm.count(), cm.count(keep)
    if external_data is None and m.external_data:
        external_data = True
    if rewrite.apply(m, an, keep).modified:
        after = CostModel(m).count()  # counted on the rewritten graph, not estimated
    save_model(m.proto, output, external_data=external_data)
    return PruneResult(output, p, before, after)
