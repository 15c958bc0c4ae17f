"""Error-based sensitivity: how much each group's outputs suffer at several removal ratios, and
per-group ratios that meet a FLOPs/parameter target at the least measured error.

Measuring: for each group and ratio, the lowest-ranked channels (by a base criterion) are
removed *by zeroing their consumer-side weights*, which the oracle shows equals structural
removal; the consumer weights are made overridable initializers of one onnxruntime session and
the zeroed copies are fed per trial, so no model is rebuilt. The error is the relative squared
output change ``Σ‖y − y₀‖² / Σ‖y₀‖²`` on the calibration data, or — when the calibration ``.npz``
holds ``labels`` — the top-1 accuracy drop plus 0.001 × that output change (a few hundred samples
give coarse accuracy steps; the small term breaks their ties).

Allocating: start with nothing removed; repeatedly move the group whose next ratio costs the
least extra error per FLOP (or parameter) saved, until the cost model says the target is met.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from onnx import helper, numpy_helper

from .graph import Model
from .analysis import Analysis
from .cost import CostModel
from .errors import PlanError

__all__ = ["SensitivityTable", "measure", "allocate", "DEFAULT_RATIOS"]

DEFAULT_RATIOS = (0.2, 0.4, 0.6, 0.8)


@dataclass
class SensitivityTable:
    ratios: list[float]
    metric: str
    baseline: float
    rows: list[dict] = field(default_factory=list)
    signature: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str) -> None:
        """Write the table as JSON, atomically."""
        from .outputs import write_text

        write_text(path, json.dumps(self.to_dict(), indent=1), "the sensitivity table")

    def format(self) -> str:
        head = f"{'group':>5} {'channels':>8} {'FLOPs saved at max':>18}  " + " ".join(f"{'err@' + format(r, 'g'):>9}"
                                                                            for r in self.ratios) + "  name"
        lines = [f"metric: {self.metric} (baseline {self.baseline:.4g})", head]
        for r in self.rows:
            lines.append(f"{r['group']:>5} {r['size']:>8} {r['flops_saved'][-1]:>18.3f}  "
                         + " ".join(f"{e:>9.4g}" for e in r["errors"]) + f"  {r['name']}")
        return "\n".join(lines)


def _removal(an: Analysis, gid: int, scores: np.ndarray, ratio: float, min_keep: int = 1) -> np.ndarray:
    g = an.groups[gid]
    n = min(int(np.floor(ratio * g.size)), g.size - min_keep, g.n_prunable)
    keep = np.ones(an.n_atoms, dtype=bool)
    if n > 0:
        order = np.argsort(np.where(g.pinned, np.inf, scores), kind="stable")[:n]
        keep[g.atoms[order]] = False
    for s in an.nonempty_sets:
        if not keep[s].any():
            keep[s[0]] = True
    return keep


def _overridable(model: Model, names: set[str]) -> bytes:
    """The model serialised with ``names`` as overridable initializers (Constant nodes moved)."""
    proto = model.to_proto()
    g = proto.graph
    consts = {n.output[0]: k for k, n in enumerate(g.node) if n.op_type == "Constant" and n.output[0] in names}
    for name, k in sorted(consts.items(), key=lambda kv: -kv[1]):
        g.initializer.append(numpy_helper.from_array(model.const(name), name))
        del g.node[k]
    have = {v.name for v in g.input}
    for t in g.initializer:
        if t.name in names and t.name not in have:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    proto.ir_version = max(proto.ir_version, 4)
    return proto.SerializeToString()


def zeroed_weights(an: Analysis, params, keep: np.ndarray) -> dict[str, np.ndarray]:
    """Weights with the removed channels' consumer-side slices zeroed (the oracle's equivalent of
    removal without recovery), as feeds for a session of :func:`_overridable`.

    ``params``: ``(tensor, axis, labels)`` of the consumer-side weights to consider.
    """
    feeds: dict[str, np.ndarray] = {}
    for tensor, axis, labels in params:
        drop = ~an.keep_mask(labels, keep)
        if drop.any():
            w = feeds.get(tensor)
            w = np.array(an.model.const(tensor), copy=True) if w is None else w
            idx = [slice(None)] * w.ndim
            idx[axis] = drop
            w[tuple(idx)] = 0
            feeds[tensor] = w
    return feeds


def squared_change(ys, y0s) -> float:
    """Σ‖y − y₀‖² over matching arrays, in float64 (``y0s`` of zeros: the energy of ``ys``)."""
    return float(sum(np.sum(np.square(y.astype(np.float64) - y0)) for y, y0 in zip(ys, y0s)))


def measure(an: Analysis, calibration, scores: dict[int, np.ndarray], *, ratios=DEFAULT_RATIOS) -> SensitivityTable:
    """Measure every prunable group's error at each ratio (see the module docstring)."""
    from .validate.runtime import make_session

    model = an.model
    consumer = {}  # group -> list of (tensor, axis, labels) of its "in" params
    for g in an.groups:
        if g.prunable and g.id in scores:
            consumer[g.id] = [(an.params[k].tensor, an.params[k].axis, an.params[k].labels)
                              for k in g.params if an.params[k].role == "in"]
    names = {t for lst in consumer.values() for t, _, _ in lst}
    sess = make_session(_overridable(model, names), "cpu")
    batches = list(calibration.batches())
    labels = calibration.labels
    base_out = [sess.run(None, b) for b in batches]
    flat_base = [y for o in base_out for y in o]
    energy = squared_change(flat_base, [0.0] * len(flat_base))
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)[: sum(o[0].shape[0] for o in base_out)]
        preds = np.concatenate([o[0] for o in base_out]).argmax(axis=1)
        baseline = float(np.mean(preds == labels))
        metric = "top-1 accuracy drop + 0.001 x relative output change"
    else:
        baseline = energy
        metric = "relative squared output change"
    cm = CostModel(model, an)
    full = cm.count()
    table = SensitivityTable(list(ratios), metric, baseline, signature=an.signature())
    from .progress import progress as bar

    for gid, params in bar(consumer.items(), "sensitivity", total=len(consumer), unit="groups"):
        g = an.groups[gid]
        errors, flops_saved, params_saved = [], [], []
        for r in ratios:
            keep = _removal(an, gid, scores[gid], r)
            feeds_w = zeroed_weights(an, params, keep)
            outs = [sess.run(None, {**b, **feeds_w}) for b in batches]
            num = squared_change([y for o in outs for y in o], flat_base)
            change = float(num / max(energy, 1e-30))
            if labels is not None:
                preds = np.concatenate([o[0] for o in outs]).argmax(axis=1)
                errors.append(baseline - float(np.mean(preds == labels)) + 1e-3 * change)
            else:
                errors.append(change)
            c = cm.count(keep)
            flops_saved.append((full.flops - c.flops) / max(full.flops, 1))
            params_saved.append((full.params - c.params) / max(full.params, 1))
        table.rows.append({"group": gid, "name": an.group_name(g), "size": g.size, "errors": errors,
                           "flops_saved": flops_saved, "params_saved": params_saved})
    return table


def allocate(an: Analysis, table: SensitivityTable, scores: dict[int, np.ndarray], *, target: float,
             metric: str = "flops", round_to: int = 1, min_channels: int = 1, latency=None) -> dict[int, float]:
    """Per-group ratios meeting ``target`` (fraction of FLOPs/params kept) at the least error.

    ``latency``: the measured table the plan is made against (widths that save no time are not
    cut there, so they must not count here either)."""
    from .planner import _Options, _select

    if table.signature and table.signature != an.signature():
        raise PlanError("the sensitivity table was measured on a different model; measure it again")
    key = "flops_saved" if metric == "flops" else "params_saved"
    rows = {r["group"]: r for r in table.rows}
    level = {gid: -1 for gid in rows}
    cm = CostModel(an.model, an)
    base = getattr(cm.count(), metric)
    opts = _Options(0.0, None, None, "uniform", round_to, min_channels).measured(latency)

    exact: dict[int, float] = {}  # a ratio between two levels, for the last group moved

    def ratios_now() -> dict[int, float]:
        r = {gid: (table.ratios[lv] if lv >= 0 else 0.0) for gid, lv in level.items()}
        r.update(exact)
        return r

    def cost_of(r: dict[int, float]) -> float:
        opts.group_ratios = r
        return getattr(cm.count(_select(an, scores, 0.0, opts)), metric) / base

    def frac() -> float:
        return cost_of(ratios_now())

    best = None
    while frac() > target:
        best, best_cost = None, np.inf
        for gid, lv in level.items():
            if lv + 1 >= len(table.ratios):
                continue
            r = rows[gid]
            prev_err = r["errors"][lv] if lv >= 0 else 0.0
            prev_gain = r[key][lv] if lv >= 0 else 0.0
            gain = r[key][lv + 1] - prev_gain
            if gain <= 0:
                continue
            cost = max(r["errors"][lv + 1] - prev_err, 0.0) / gain
            if cost < best_cost:
                best, best_cost = gid, cost
        if best is None:
            from .options import OptionError

            raise OptionError(f"the sensitivity levels cannot reach {metric} {target:.3f} of the original "
                              f"(best {frac():.3f}); add higher {{sensitivity_ratios}} or relax the target")
        level[best] += 1
    if best is not None:
        moved = best
        # the last step may overshoot: bisect that group's ratio between its two levels
        lo = table.ratios[level[moved] - 1] if level[moved] > 0 else 0.0
        hi = table.ratios[level[moved]]
        for _ in range(12):
            mid = (lo + hi) / 2
            exact[moved] = mid
            if frac() <= target:
                hi = mid
            else:
                lo = mid
        exact[moved] = hi
    return _give_back(an, rows, table.ratios, cost_of, max(round_to, 1), target, ratios_now())


def _give_back(an: Analysis, rows: dict, levels, cost_of, round_to: int, target: float,
               ratios: dict[int, float]) -> dict[int, float]:
    """Widen groups one width step at a time while the target still holds.

    The last move can jump past the target: rounding, and widths measured as no faster than the
    full one (never cut against a latency table) make the cost fall in steps (MiniLM at
    ``--target-flops 0.7``: 0.682 kept). Each round widens the group whose step back removes the
    most interpolated error per unit of cost given back, among the steps that keep the target."""
    def err(gid: int, r: float) -> float:
        return float(np.interp(r, [0.0, *levels], [0.0, *rows[gid]["errors"]]))

    now = cost_of(ratios)
    for _ in range(4 * len(ratios) + 16):
        if now >= target - 1e-6:
            break
        best = None
        for gid, r in ratios.items():
            size = an.groups[gid].size
            if r <= 0 or gid not in rows:
                continue
            step = round_to * max(1, round(size / 32 / round_to))  # ~1/32 of the group, in whole rounding steps
            r2 = max(0.0, (math.floor(r * size + 1e-9) - step) / size)
            trial = {**ratios, gid: r2}
            c = cost_of(trial)
            if c <= now + 1e-12 or c > target + 1e-9:
                continue
            gain = (err(gid, r) - err(gid, r2)) / (c - now)
            if best is None or gain > best[0]:
                best = (gain, trial, c)
        if best is None:
            break
        _, ratios, now = best
    return ratios
