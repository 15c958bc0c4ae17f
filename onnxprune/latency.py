"""A latency model measured on the target: which kept widths actually save time.

Fewer MACs is not less time: onnxruntime's CPU convolutions run in NCHWc blocks of 8/16
channels, GPU kernels prefer multiples of 8, and small or memory-bound layers do not shrink with
their MACs. So the planner asks the target instead of the cost model.

1. **Alignment probe** (per machine + provider, cached): one 3×3 convolution timed at 64, 63, 56
   and 48 channels. ``auto`` rounding is 16 when 56 channels are not faster than 64 (the
   kernels work in blocks of 16), else 8. An unaligned default is never chosen.
2. **Latency table** (per machine + provider + threads + input shape + model digest, cached):
   the model's heavy nodes (``Conv ConvTranspose Gemm MatMul``) are each extracted as a one-node
   model at the real input shape. For every prunable group ``g`` and candidate width ``w``
   (multiples of the alignment), each node the group touches is timed with only ``g`` at ``w``.
   Nodes with identical op, attributes and shapes are timed once. The full model is timed end to
   end (``base_ms``).
3. **Prediction** for kept widths ``w_g``: a node touched by groups ``g1, g2`` (input and output
   channels) costs ``t_n · Π_g r_{g,n}(w_g)`` with ``r_{g,n}(w) = t_{g,n}(w) / t_n`` interpolated
   linearly between measured widths. The model is timed at full width and with every group at
   about 3/4 and 1/2 width; a least-squares line through the three fixes
   ``predicted = rest + scale · Σ_n t_n · Π r`` (``rest``: what
   does not shrink, element-wise and memory-bound ops; ``scale``: in-model vs alone, where
   nodes alone carry per-run overheads and miss fusions). If that fit is implausible (noise),
   the model is assumed to scale like its heavy nodes: ``base_ms · Σ t_n Π r / Σ t_n``. ``api.prune`` verifies a latency target
   by timing the result; when it misses by more than 5% the speed-up planned for is corrected by
   measured/predicted (then the secant), replanned at most twice, and the candidates timed again
   together (``check_plan``).
4. **Never slower by default** (``never_slower_by_default``): a ratio/FLOPs/params plan is made
   against the table too (widths that save no time are not cut; groups up to ``FINE_MAX`` wide
   may keep a multiple of ``FINE_STEP`` where it measured as fast as the coarser step) and the
   result is timed; a slower one is replanned once with only widths measured ≥ 5% faster. Not
   when ``round_to`` is pinned (exact widths asked for), for models under ``SMALL_MACS`` (timing
   is noise there) or with ``allow_slower``; ``never_slower`` forces it.

Cache: ``$ONNXPRUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/onnxprune``, else ``~/.cache/onnxprune``
(never the working directory). Entries are JSON, written atomically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from .errors import OnnxPruneError

__all__ = ["TIMED_OPS", "LatencyTable", "LatencyTarget", "alignment", "bisect_latency", "cache_dir", "check_plan", "compare", "measure_table", "never_slower_by_default", "pruned_bytes", "resolve_round_to", "time_models", "time_result"]

log = logging.getLogger(__name__)

TIMED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
TABLE_VERSION = 5  # 5: widths timed as no faster than a wider one are confirmed interleaved (4's took bursts of load)
FRACTIONS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)
FINE_STEP = 8          # with ``auto`` rounding, groups up to FINE_MAX wide are timed at every multiple of 8 too
FINE_MAX = 128
SMALL_MACS = 5_000_000  # below (~0.1 ms a run on a CPU core or less): per-run overhead and noise; never-slower
#                         not by default (the digits CNN's nodes take 5-20 µs alone: its table is noise)


# ----------------------------------------------------------------------------- cache
def cache_dir() -> str:
    """Where measured tables live: ``$ONNXPRUNE_CACHE_DIR`` > ``$XDG_CACHE_HOME/onnxprune`` > ``~/.cache/onnxprune``."""
    d = os.environ.get("ONNXPRUNE_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "onnxprune")
    return d


def machine_id() -> str:
    """CPU model, core count, OS and onnxruntime version: what a measurement depends on."""
    import onnxruntime as ort

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}|{os.cpu_count()}|{platform.system()}-{platform.machine()}|ort{ort.__version__}"


def _cache_path(kind: str, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return os.path.join(cache_dir(), kind, f"{digest}.json")


def _cache_read(kind: str, key: dict) -> dict | None:
    path = _cache_path(kind, key)
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return d if d.get("key") == key else None


def _cache_write(kind: str, key: dict, data: dict) -> None:
    path = _cache_path(kind, key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({**data, "key": key}, f)
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: measure again next time
        log.warning("latency cache not written (%s): %s", path, e)


# ----------------------------------------------------------------------------- timing
def _session(model: bytes, provider: str, threads: int):
    from .validate.runtime import make_session

    return make_session(model, provider, quiet=True, threads=threads)


def _rounds(runners: dict, rounds: int, warmup: int) -> dict[object, list[float]]:
    """Every ms of each ``runners`` callable over ``rounds`` rounds, each running every one once (the
    order rotating): a burst of load slows one round of each, not every run of a few."""
    keys = list(runners)
    for _ in range(warmup):
        for k in keys:
            runners[k]()
    times: dict[object, list[float]] = {k: [] for k in keys}
    for i in range(rounds):
        shift = i % max(len(keys), 1)
        for k in keys[shift:] + keys[:shift]:
            times[k].append(runners[k]())
    return times


def interleaved(runners: dict, rounds: int, warmup: int = 2) -> dict:
    """Best ms of each ``runners`` callable over :func:`_rounds` (the minimum is the least disturbed by
    other processes); one runner: its best of ``rounds`` runs."""
    return {k: min(v) for k, v in _rounds(runners, rounds, warmup).items()}


def time_models(models: dict[str, bytes | str], feeds: dict, *, provider: str = "cpu", threads: int = 0,
                repeats: int = 20, warmup: int = 3, stat: str = "median") -> dict[str, float]:
    """Median (or ``stat="min"``; ``stat="all"``: every round's ms, a list) of each model, timed
    interleaved (:func:`_rounds`)."""
    from .validate.compare import run_timed

    times = _rounds({k: run_timed(_session(v, provider, threads), feeds) for k, v in models.items()}, repeats, warmup)
    if stat == "all":
        return times
    reduce = np.min if stat == "min" else np.median
    return {k: float(reduce(v)) for k, v in times.items()}


def _conv_model(c: int, hw: int) -> bytes:
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, c, hw, hw])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m.SerializeToString()


def alignment(provider: str = "cpu", *, threads: int = 0, refresh: bool = False) -> int:
    """The channel step kernels are fastest at on this machine + provider: 8 or 16 (measured, cached)."""
    key = {"v": TABLE_VERSION, "machine": machine_id(), "provider": provider, "threads": threads}
    if not refresh and (hit := _cache_read("align", key)) is not None:
        return int(hit["round_to"])
    from .validate.compare import run_timed

    rng = np.random.default_rng(0)
    # interleaved: the first session of a process (and a burst of load) must not slow one width only
    times = interleaved({c: run_timed(_session(_conv_model(c, 28), provider, threads),
                                      {"x": rng.standard_normal((1, c, 28, 28)).astype(np.float32)})
                         for c in (64, 63, 56, 48)}, rounds=15)
    # 8-steps pay off when 56 channels are clearly faster than 64 (as 7/8 of the work should be)
    step = 8 if times[56] < times[64] * 0.95 else 16
    log.info("alignment probe on %s: %s ms -> round_to %d", provider,
             {c: round(t, 4) for c, t in times.items()}, step)
    _cache_write("align", key, {"round_to": step, "times_ms": times})
    return step


# ----------------------------------------------------------------------------- sub-models
def _node_model(model, node, shape_of, base_of, seed: int = 0) -> tuple[bytes, dict] | None:
    """``node`` alone at the shapes ``shape_of`` gives, with random weights; None when it cannot be built."""
    import onnx_ir as ir
    from onnx import helper, numpy_helper

    proto = ir.serde.serialize_node(node)
    rng = np.random.default_rng(seed)
    inputs, inits, names, feeds = [], [], [], {}
    for k, v in enumerate(node.inputs):
        if v is None:
            names.append("")
            continue
        s = shape_of(v.name)
        dt = model.dtypes.get(v.name, onnx.TensorProto.FLOAT)
        if s is None or dt not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            return None
        npdt = onnx.helper.tensor_dtype_to_np_dtype(dt)
        arr = (rng.standard_normal(s) * 0.1).astype(npdt)
        name = f"x{k}"
        names.append(name)
        if model.is_const(v.name):
            inits.append(numpy_helper.from_array(arr, name))
        else:
            inputs.append(helper.make_tensor_value_info(name, dt, list(s)))
            feeds[name] = arr
    del proto.input[:]
    proto.input.extend(names)
    outs = [f"y{k}" for k in range(len(proto.output))]
    del proto.output[:]
    proto.output.extend(outs)
    if node.op_type in ("Conv", "ConvTranspose"):  # a depthwise conv keeps group == channels
        x_new, x_old = shape_of(node.inputs[0].name), base_of(node.inputs[0].name)
        for a in proto.attribute:
            if a.name == "group" and a.i > 1 and x_old is not None and a.i == x_old[1]:
                a.i = int(x_new[1])
    g = helper.make_graph([proto], "node", inputs,
                          [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", model.opset)])
    m.ir_version = min(m.ir_version, 10)
    return m.SerializeToString(), feeds


def _signature(node, shape_of, base_of) -> str:
    attrs = sorted((k, str(v.value)) for k, v in node.attributes.items())
    shapes = [tuple(shape_of(v.name) or ()) if v is not None else None for v in node.inputs]
    return json.dumps([node.op_type, attrs, [list(s) if s is not None else None for s in shapes],
                       [bool(v is not None and v.const_value is not None) for v in node.inputs]], default=str)


# ----------------------------------------------------------------------------- the table
@dataclass
class LatencyTable:
    """Measured times of a model's heavy nodes per group width (see the module docstring)."""

    key: dict
    base_ms: float
    round_to: int
    nodes: dict[str, float] = field(default_factory=dict)        # node -> ms at full width
    groups: dict[str, dict] = field(default_factory=dict)        # str(gid) -> {"size", "widths", "nodes": {node: [ms]}}
    measure_s: float = 0.0
    rest_ms: float | None = None  # untimed part of base_ms (calibrated); None: base_ms − Σ nodes
    scale: float | None = None    # in-model ms per ms of nodes timed alone (calibrated)
    fine_step: int | None = None  # small groups also timed at multiples of this (``round_width``)
    min_gain: float = 0.0         # a width must save this fraction of its nodes' time (raised after a slower result)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LatencyTable:
        return cls(d["key"], d["base_ms"], d["round_to"], d["nodes"], d["groups"], d.get("measure_s", 0.0),
                   d.get("rest_ms"), d.get("scale"), d.get("fine_step"))

    def group_ms(self, gid: int, width: int) -> float:
        """The measured time of the group's nodes with the group alone at ``width``."""
        g = self.groups[str(gid)]
        return sum(self.nodes[n] * self.ratio(gid, n, width) for n in g["nodes"])

    def round_width(self, gid: int, want: int, coarse: int) -> int:
        """The kept width for a group that wants ``want`` channels, ``coarse`` being ``want`` rounded up to
        the table's step: the smallest measured multiple of ``fine_step`` in ``[want, coarse)`` that saves at
        least half its proportional share of the time against ``coarse`` (kernels as fast at that step),
        else ``coarse``."""
        g = self.groups.get(str(gid))
        if self.fine_step is None or g is None or coarse <= want:
            return coarse
        t_coarse = self.group_ms(gid, coarse)
        for w in g["widths"]:
            if want <= w < coarse and w % self.fine_step == 0:
                if self.group_ms(gid, w) <= t_coarse * (1 - 0.5 * (coarse - w) / coarse):
                    return int(w)
        return coarse

    def ratio(self, gid: int, node: str, width: int) -> float:
        """``t_{g,n}(w) / t_n``, interpolated between measured widths (proportional below the smallest)."""
        g = self.groups[str(gid)]
        ws, ts = g["widths"], g["nodes"][node]
        full = self.nodes[node]
        if full <= 0:
            return 1.0
        if width >= ws[-1]:
            return ts[-1] / full
        if width <= ws[0]:
            return ts[0] / full * width / ws[0]
        return float(np.interp(width, ws, ts)) / full

    def group_saves(self, gid: int, width: int, min_gain: float = 0.0) -> bool:
        """Whether ``width`` is measurably faster than the full width for this group's nodes."""
        g = self.groups.get(str(gid))
        if g is None:  # not measured (head groups, no heavy node): no opinion
            return True
        full = sum(self.nodes[n] for n in g["nodes"])
        return self.group_ms(gid, width) < full * (1 - max(min_gain, self.min_gain))

    def predict(self, widths: dict[int, int]) -> float:
        """Predicted end-to-end ms with group ``gid`` kept at ``widths[gid]`` channels."""
        s = self.node_sum(widths)
        if self.scale is not None and self.rest_ms is not None:
            return max(self.rest_ms + self.scale * s, 0.02 * self.base_ms)
        # uncalibrated: the model's time scales like its heavy nodes' (onnxruntime fuses the rest in)
        return self.base_ms * s / max(sum(self.nodes.values()), 1e-12)

    def widths_of(self, an, keep: np.ndarray) -> dict[int, int]:
        return {g.id: int(keep[g.atoms].sum()) for g in an.groups if str(g.id) in self.groups}

    def calibrate(self, points: list[tuple[float, float]]) -> None:
        """Fit ``rest + scale · Σ`` through the full model (exactly) and measured pruned models (least
        squares), given as ``(Σ of their nodes' predicted ms, measured ms)``."""
        full = sum(self.nodes.values())
        dx = np.array([p[0] for p in points]) - full
        dy = np.array([p[1] for p in points]) - self.base_ms
        if not dx.size or float(dx @ dx) <= (1e-9 * full) ** 2:
            return
        scale = float(dx @ dy / (dx @ dx))
        rest = self.base_ms - scale * full
        # a negative rest: the model shrinks faster than its nodes alone (fused layout changes)
        if scale <= 0 or rest < -0.5 * self.base_ms:  # noise: keep the uncalibrated model
            log.warning("latency calibration ignored (scale %.3g, rest %.3g ms): timings too noisy", scale, rest)
            return
        self.scale, self.rest_ms = float(scale), float(rest)

    def node_sum(self, widths: dict[int, int]) -> float:
        factor = {n: 1.0 for n in self.nodes}
        for gid, w in widths.items():
            g = self.groups.get(str(gid))
            if g is not None and w < g["size"]:
                for n in g["nodes"]:
                    factor[n] *= self.ratio(gid, n, w)
        return sum(t * factor[n] for n, t in self.nodes.items())


def bisect_latency(an, select, table: LatencyTable, target_ms: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The smallest uniform ratio whose plan (``select(ratio)`` -> keep mask) is predicted ≤ ``target_ms``,
    and the plan of the largest ratio tried that missed it (``planner.bisect_ratio``).

    Raises:
        PlanError: not even removing every prunable channel is predicted to reach the target.
    """
    from .errors import PlanError

    def ms(r: float) -> tuple[float, np.ndarray]:
        k = select(r)
        return table.predict(table.widths_of(an, k)), k

    if target_ms >= table.base_ms:
        return np.ones(an.n_atoms, dtype=bool), None
    low_ms, k_hi = ms(0.99)
    if low_ms > target_ms:
        raise PlanError(f"cannot reach {target_ms:.3f} ms (the model takes {table.base_ms:.3f} ms): removing 99% of "
                        f"every group is predicted to take {low_ms:.3f} ms (pinned channels, widths that save no "
                        "time); relax the target")
    from .planner import bisect_ratio

    return bisect_ratio(ms, target_ms, 0.99, k_hi, steps=20, tol=1e-3)


def _widths(size: int, step: int) -> list[int]:
    ws = {size}
    for f in FRACTIONS:
        w = int(math.ceil(f * size / step) * step)
        if 0 < w < size:
            ws.add(w)
    return sorted(ws)


def pruned_bytes(model, an, keep: np.ndarray) -> bytes:
    """A pruned copy of ``model`` (serialised) with ``an``'s atoms ``keep``; ``model`` is untouched."""
    from . import rewrite
    from .analysis import analyze
    from .graph import Model

    copy = Model(model.to_proto(), model.path)
    copy.infer(concrete=model.concrete or None)
    an2 = analyze(copy, hidden=bool(an.hidden))
    if an2.n_atoms != an.n_atoms or [g.size for g in an2.groups] != [g.size for g in an.groups]:
        raise OnnxPruneError("latency: the model's copy analyses differently (a bug); time it without target_latency")
    rewrite.apply(copy, an2, keep)
    return copy.to_proto().SerializeToString()


def model_digest(model) -> str:
    return hashlib.sha256(model.to_proto().SerializeToString()).hexdigest()[:32]


def full_feeds(model, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs at the model's concrete input shapes."""
    from .validate.inputs import InputSpec, random_dataset

    specs = [InputSpec(n, tuple(model.concrete.get(n) or model.shapes.get(n) or ()),
                       onnx.helper.tensor_dtype_to_np_dtype(model.dtypes.get(n, onnx.TensorProto.FLOAT)))
             for n in model.graph_inputs]
    return random_dataset(specs, seed=seed).batches[0]


def measure_table(model, an, *, provider: str = "cpu", threads: int = 0, round_to: int | None = None,
                  repeats: int = 7, refresh: bool = False, fine: bool = False) -> LatencyTable:
    """Measure (or read from the cache) the latency table of ``model`` (shapes inferred) for ``an``'s groups.

    ``fine``: groups up to ``FINE_MAX`` channels are also timed at every multiple of ``FINE_STEP`` (when
    the step is a larger multiple of it), so that the planner can keep such a width where it measured as
    fast (``LatencyTable.round_width``: 40 of 64 channels instead of 48).
    """
    from .cost import CostModel

    step = round_to or alignment(provider, threads=threads)
    fine_step = FINE_STEP if fine and step > FINE_STEP and step % FINE_STEP == 0 else None
    key = {"v": TABLE_VERSION, "machine": machine_id(), "provider": provider, "threads": threads,
           "inputs": {k: list(v) for k, v in model.concrete.items()}, "model": model_digest(model),
           "signature": an.signature(), "step": step, "fine": fine_step}
    if not refresh and (hit := _cache_read("latency", key)) is not None:
        log.info("latency table from the cache (%s)", _cache_path("latency", key))
        return LatencyTable.from_dict(hit)
    t0 = time.perf_counter()
    cm = CostModel(model, an)
    base_of = cm.shape_fn()
    from .validate.compare import run_timed

    timed = [n for n in model.graph if n.domain == "" and n.op_type in TIMED_OPS and n.outputs[0].name]
    memo: dict[str, float] = {}
    skipped: set[str] = set()

    def node_ms(node, shape_of) -> float | None:
        sig = _signature(node, shape_of, base_of)
        if sig not in memo:
            built = _node_model(model, node, shape_of, base_of)
            if built is None:
                return None
            try:
                memo[sig] = interleaved({0: run_timed(_session(built[0], provider, threads), built[1])}, repeats)[0]
            except Exception as e:  # an extracted node ORT refuses: not timed, logged
                log.warning("latency: node %s not timed alone (%s)", model.node_name(node), " ".join(str(e).split())[:200])
                return None
        return memo[sig]

    def _confirm(name: str, recipes: list[tuple]) -> None:
        """A narrower width timed as no faster than a wider one: time the node's widths again, interleaved
        with its full width round by round, so that a burst of load from another process (which slows
        the few runs of one width timed back to back) slows them all alike; each width keeps the
        lower of its two times, the new one on the full width's scale of the first pass."""
        n = recipes[0][1]
        full = _signature(n, base_of, base_of)
        runners = {}
        for sig, node, shape_of in [*recipes, (full, n, base_of)]:
            if sig not in runners:
                built = _node_model(model, node, shape_of, base_of)
                runners[sig] = run_timed(_session(built[0], provider, threads), built[1])
        best = interleaved(runners, repeats)
        to_first = memo[full] / max(best[full], 1e-12)
        for sig, _, _ in recipes:
            memo[sig] = min(memo[sig], best[sig] * to_first)
        log.debug("latency: %s re-timed interleaved with its full width", name)

    nodes: dict[str, float] = {}
    for n in timed:
        ms = node_ms(n, base_of)
        if ms is None:
            skipped.add(model.node_name(n))
        else:
            nodes[model.node_name(n)] = ms
    groups: dict[str, dict] = {}
    for g in an.groups:
        if not g.prunable:
            continue
        free = np.flatnonzero(~g.pinned)
        # head groups count heads (never rounded); channel groups step by the alignment
        widths = _widths(g.size, 1 if g.kind == "heads" else step)
        if fine_step is not None and g.kind != "heads" and g.size <= FINE_MAX:
            widths = sorted(set(widths) | set(range(fine_step, g.size, fine_step)))
        widths = [w for w in widths if w >= int(g.pinned.sum())]
        if len(widths) < 2:
            continue
        per_node: dict[str, list[float]] = {}
        recipes: dict[str, list[tuple]] = {}  # node -> (signature, node, shape_of) per narrower width
        ok = True
        for w in widths:
            keep = np.ones(an.n_atoms, dtype=bool)
            if w < g.size:
                keep[g.atoms[free[len(free) - (g.size - w):]]] = False
            shape_of = cm.shape_fn(keep)
            for n in timed:
                name = model.node_name(n)
                if name not in nodes:
                    continue
                if w < g.size and name not in per_node and all(
                        shape_of(v.name) == base_of(v.name) for v in n.inputs if v is not None):
                    continue
                if w == g.size:
                    continue
                ms = node_ms(n, shape_of)
                if ms is None:
                    ok = False
                    break
                per_node.setdefault(name, [])
                per_node[name].append(ms)
                recipes.setdefault(name, []).append((_signature(n, shape_of, base_of), n, shape_of))
            if not ok:
                break
        if not ok or not per_node:
            continue
        for name, ts in per_node.items():
            ts.append(nodes[name])  # the full width, last
        if any(len(ts) != len(widths) for ts in per_node.values()):
            continue  # a node touched at some widths only (a pinned remainder): leave the group out
        for name, ts in per_node.items():
            if any(ts[i] >= min(ts[i + 1:]) for i in range(len(ts) - 1)):
                _confirm(name, recipes[name])
        groups[str(g.id)] = {"size": g.size, "widths": widths, "sigs": {k: [r[0] for r in v] for k, v in recipes.items()}}
    for d in groups.values():  # confirmed times (a signature may be shared with a later group), the full width last
        d["nodes"] = {name: [memo[sig] for sig in sigs] + [nodes[name]] for name, sigs in d.pop("sigs").items()}
    feeds = full_feeds(model)
    # the full model and two with every measured group at about 3/4 and 1/2 width, timed interleaved:
    # they fit the untimed part and the alone-vs-in-model scale of the prediction (least squares)
    models = {"full": model.to_proto().SerializeToString()}
    at: dict[str, dict[int, int]] = {}
    for name, frac in (("3/4", 0.75), ("1/2", 0.5)):
        cut = np.ones(an.n_atoms, dtype=bool)
        widths = {}
        for gid, d in groups.items():
            g = an.groups[int(gid)]
            w = min(d["widths"], key=lambda x: abs(x - d["size"] * frac))
            free = np.flatnonzero(~g.pinned)
            if w < g.size:
                cut[g.atoms[free[len(free) - (g.size - w):]]] = False
            widths[int(gid)] = w
        if widths:
            models[name], at[name] = pruned_bytes(model, an, cut), widths
    try:
        # the best run, like the nodes': the statistic least moved by other processes
        ms = time_models(models, feeds, provider=provider, threads=threads, repeats=max(repeats, 5), warmup=2,
                         stat="min")
    except Exception as e:
        raise OnnxPruneError(f"cannot time the model on {provider}: {' '.join(str(e).split())[:200]}") from None
    if skipped:
        log.warning("latency: %d node(s) could not be timed alone and count as fixed time: %s", len(skipped),
                    ", ".join(sorted(skipped)[:5]))
    table = LatencyTable(key, ms["full"], step, nodes, groups, time.perf_counter() - t0, fine_step=fine_step)
    if at:
        table.calibrate([(table.node_sum(w), ms[name]) for name, w in at.items()])
    _cache_write("latency", key, table.to_dict())
    log.info("latency table: %d nodes (%d distinct), %d groups, base %.3f ms, measured in %.1f s", len(nodes),
             len(memo), len(groups), table.base_ms, table.measure_s)
    return table


# ----------------------------------------------------------------------------- targets (used by api)
@dataclass
class LatencyTarget:
    """What ``prune``/``plan`` were asked for on which target; ``table`` once measured.

    ``never_slower``: measure the table for a ratio/FLOPs/params target too (the default, see
    :func:`never_slower_by_default`). ``aim``: the predicted speed-up planned for, corrected by
    :func:`check_plan` from measurements (``None``: the target itself).
    """

    provider: str = "cpu"
    threads: int = 0
    target_ms: float | None = None
    speedup: float | None = None
    never_slower: bool = False
    table: LatencyTable | None = None
    aim: float | None = None

    @property
    def wanted(self) -> bool:
        return self.target_ms is not None or self.speedup is not None or self.never_slower

    def check(self) -> None:
        from .errors import PlanError

        if self.target_ms is not None and self.speedup is not None:
            raise PlanError("give one of target_latency and target_speedup")
        if self.target_ms is not None and not self.target_ms > 0:
            raise PlanError(f"target_latency {self.target_ms} must be > 0 ms")
        if self.speedup is not None and not self.speedup >= 1:
            raise PlanError(f"target_speedup {self.speedup} must be ≥ 1 (e.g. 1.5 for 1.5× faster)")

    def measure(self, model, an, round_to: int, *, fine: bool = False) -> LatencyTable:
        self.table = measure_table(model, an, provider=self.provider, threads=self.threads, round_to=round_to,
                                   fine=fine)
        return self.table

    @property
    def want(self) -> float | None:
        """The speed-up asked for, relative to the table's measured original (None: no latency goal)."""
        if self.table is None:
            return None
        if self.target_ms is not None:
            return self.table.base_ms / self.target_ms
        return self.speedup

    @property
    def goal_ms(self) -> float | None:
        """The predicted ms the planner aims at (a speed-up is relative to the measured original)."""
        want = self.want
        if want is None:
            return None
        return self.table.base_ms / (self.aim if self.aim is not None else want)


def never_slower_by_default(model, an, *, ratio=None, round_to_pinned: bool = False, allow_slower: bool = False,
                            never_slower: bool = False, removes_more: bool = False) -> bool:
    """Whether a ratio/FLOPs/params plan is checked against a measured latency table (never slower).

    Yes by default; no (logged) when the user opted out (``allow_slower``), pinned ``round_to`` (exact
    widths asked for), asked for ratio 0 with nothing else, the model keeps its weights in external
    data (the timed copies are serialised in memory), or the model has fewer than ``SMALL_MACS``
    MACs (a run of microseconds: timing is per-run overhead and noise, the table would thrash).
    ``never_slower`` forces it.
    """
    from .cost import CostModel

    if never_slower:
        return True
    if allow_slower:
        log.info("allow_slower: the plan is not checked against measured times")
        return False
    if not any(g.prunable for g in an.groups):
        return False
    if ratio is not None and ratio == 0 and not removes_more:
        return False
    if round_to_pinned:
        log.info("round_to given: exact widths, not checked against measured times (never_slower checks them)")
        return False
    if model.external_data:  # the timed copies are serialised in memory: no external data (a 2 GB+ model)
        log.info("the model keeps its weights in external data: not checked against measured times")
        return False
    macs = CostModel(model, an).count().macs
    if macs < SMALL_MACS:
        log.info("the model has %d MACs (< %d): a run of microseconds, timing would be noise; not checked "
                 "against measured times (never_slower forces it)", macs, SMALL_MACS)
        return False
    return True


def resolve_round_to(round_to: int | str, provider: str = "cpu", threads: int = 0) -> int:
    """``auto`` -> the measured alignment of ``provider`` (8 or 16); an int is checked and returned."""
    from .errors import PlanError

    if isinstance(round_to, str):
        if round_to.strip().lower() != "auto":
            try:
                return resolve_round_to(int(round_to), provider, threads)
            except ValueError:
                raise PlanError(f"round_to {round_to}: expected a positive integer or 'auto'") from None
        return alignment(provider, threads=threads)
    if round_to < 1:
        raise PlanError("round_to must be ≥ 1 or 'auto'")
    return int(round_to)


def compare(original: bytes, pruned: bytes, feeds: dict, *, provider: str = "cpu", threads: int = 0,
            repeats: int = 20) -> dict:
    """Original and pruned model timed interleaved (in one shared thread pool when the process set one
    up before its first session, ``validate.runtime.use_global_thread_pool``, as the benchmark does; a
    library never does: onnxruntime then refuses every other session of the process)."""
    runs = time_models({"original": original, "pruned": pruned}, feeds, provider=provider, threads=threads,
                       repeats=repeats, warmup=3, stat="all")
    ms = {k: float(np.median(v)) for k, v in runs.items()}
    # how far the speed-up could be off from noise: the spread of the rounds' ratios (a busy machine)
    ratios = np.asarray(runs["original"]) / np.asarray(runs["pruned"])
    q1, q3 = np.percentile(ratios, [25, 75])
    out = {"provider": provider, "original_ms": ms["original"], "pruned_ms": ms["pruned"],
           "speedup": ms["original"] / ms["pruned"], "speedup_noise": float((q3 - q1) / math.sqrt(len(ratios)))}
    if out["speedup"] < 1:
        out["slower"] = True
    return out


def time_result(original: str, pruned, *, provider: str = "cpu", threads: int = 0) -> dict:
    """A finished result (a ``Model``, e.g. of a quality-target search) timed against the original file,
    interleaved; a slower result is said so (the search itself does not plan against times)."""
    out = compare(original, pruned.to_proto().SerializeToString(), full_feeds(pruned), provider=provider,
                  threads=threads)
    if out.get("slower"):
        log.warning("the pruned model measured %.3f× the original's speed on %s: slower (%.3f ms vs %.3f ms); "
                    "a quality target is searched on FLOPs, not times (try a FLOPs target or round_to)",
                    out["speedup"], provider, out["pruned_ms"], out["original_ms"])
    return out


def verify(model, an, keep: np.ndarray, table: LatencyTable, *, provider: str = "cpu", threads: int = 0,
           repeats: int = 20) -> dict:
    """Time the original and the pruned model (interleaved) and compare with the prediction."""
    out = compare(model.to_proto().SerializeToString(), pruned_bytes(model, an, keep), full_feeds(model),
                  provider=provider, threads=threads, repeats=repeats)
    widths = table.widths_of(an, keep)
    pred = table.predict(widths)
    out.update(predicted_ms=pred, predicted_speedup=table.base_ms / pred if pred > 0 else float("nan"),
               table_base_ms=table.base_ms, node_sum=table.node_sum(widths))
    return out


def _next_aim(tried: list[tuple[float, float]], want: float) -> float:
    """The predicted speed-up to plan for next, from (aimed, measured) pairs.

    Once one aim measured below ``want`` and another above, the midpoint of the closest such pair
    (plans move in whole alignment steps, so measured speed-up is a step function of the aim: a
    secant can jump across the target); before that, the secant through the last two when it
    rises, else the last aim scaled by want/measured."""
    under = [a for a, s in tried if s < want]
    over = [a for a, s in tried if s >= want]
    if under and over:
        lo = max(under)
        above = [a for a in over if a > lo]
        if above:
            return 0.5 * (lo + min(above))
    a1, s1 = tried[-1]
    if len(tried) >= 2:
        a0, s0 = tried[-2]
        if s1 != s0 and (s1 - s0) / (a1 - a0 if a1 != a0 else math.nan) > 0:
            return max(1.0, a1 + (want - s1) * (a1 - a0) / (s1 - s0))
    return max(1.0, a1 * want / max(s1, 1e-9))


def _retime(model, an, plans: list, miss, lat: LatencyTarget, repeats: int = 20):
    """The candidate plans and the original timed in one interleaved run; the one closest to the goal."""
    blobs = {"original": model.to_proto().SerializeToString()}
    for i, (_, k, _) in enumerate(plans):
        blobs[f"p{i}"] = pruned_bytes(model, an, k)
    ms = time_models(blobs, full_feeds(model), provider=lat.provider, threads=lat.threads, repeats=repeats,
                     warmup=2)
    best = None
    for i, (p, k, c) in enumerate(plans):
        c = {**c, "original_ms": ms["original"], "pruned_ms": ms[f"p{i}"], "speedup": ms["original"] / ms[f"p{i}"],
             "retimed": len(plans)}
        c.pop("slower", None)
        if best is None or miss(c) < miss(best[2]):
            best = (p, k, c)
    return best


def check_plan(model, an, plan, keep: np.ndarray, lat: LatencyTarget, replan, tolerance: float = 0.05,
               rounds: int = 3):
    """Time a plan's result against the original (interleaved, one thread pool).

    With a latency goal: when the measured speed-up misses it by more than ``tolerance`` and by more
    than twice the timing noise (``speedup_noise``: the rounds' ratios' IQR / √n), the speed-up
    planned for is corrected from the measurements (``aim``: scaled by wanted/measured, then the
    secant, then the midpoint of a bracket) and the model planned again, at most ``rounds`` times; the candidates are then timed again
    together (one interleaved run) and the one closest to the goal is kept (at or above it on a tie).
    Without one (never slower): a result measured
    slower than the original is said so and planned once more with only widths measured ≥ 5% faster;
    the faster of the two is kept.

    Returns ``(plan, keep, report)``; the report holds predicted and measured ms and speed-ups.
    """
    from .errors import PlanError
    from .planner import keep_atoms

    table = lat.table

    def timed(k):
        return verify(model, an, k, table, provider=lat.provider, threads=lat.threads)

    check = timed(keep)
    want = lat.want
    if want is not None:
        check["target_speedup"] = want

        def miss(c: dict) -> float:
            return abs(c["speedup"] / want - 1) + (1e-6 if c["speedup"] < want else 0.0)

        tried = [(lat.aim or want, check["speedup"])]
        plans = [(plan, keep, check)]
        for attempt in range(rounds):
            # within tolerance, or a miss the timing noise explains: no replanning after noise
            if miss(check) <= max(tolerance, 2 * check.get("speedup_noise", 0.0) / want):
                break
            lat.aim = _next_aim(tried, want)
            log.info("latency: measured speed-up %.3f misses %.3f (predicted %.3f); planning for a predicted %.3f",
                     tried[-1][1], want, check["predicted_speedup"], lat.aim)
            try:
                p2 = replan()
            except PlanError as e:
                log.info("latency: no plan for a predicted %.3f (%s); keeping the closest measured plan", lat.aim, e)
                break
            k2 = keep_atoms(an, p2)
            c2 = timed(k2)
            c2.update(target_speedup=want, replanned=attempt + 1)
            tried.append((lat.aim, c2["speedup"]))
            plans.append((p2, k2, c2))
            if miss(c2) < miss(check):
                plan, keep, check = p2, k2, c2
        if len(plans) > 1:  # one measurement each on a busy machine: time the candidates again, together
            plan, keep, check = _retime(model, an, plans, miss, lat)
        check["tried"] = [{"aimed": a, "measured": s} for a, s in tried]
        if miss(check) > 0.10:
            log.warning("latency: measured speed-up %.3f misses the target %.3f by more than 10%% on %s (a busy "
                        "machine, or the target is beyond what the widths give)", check["speedup"], want,
                        lat.provider)
    elif check["speedup"] < 1 and not keep.all():
        log.info("latency: the plan measured %.3f× the original's speed; planning again with only widths measured "
                 "≥ 5%% faster", check["speedup"])
        table.min_gain = 0.05
        try:
            p2 = replan()
        except PlanError as e:
            log.info("latency: no plan with only clearly faster widths (%s)", e)
            p2 = None
        finally:
            table.min_gain = 0.0
        if p2 is not None:
            k2 = keep_atoms(an, p2)
            c2 = timed(k2)
            c2["replanned"] = 1
            if c2["speedup"] > check["speedup"]:
                plan, keep, check = p2, k2, c2
    if check["speedup"] < 1:
        check["slower"] = True
        log.warning("the pruned model measured %.3f× the original's speed on %s: slower (%.3f ms vs %.3f ms)",
                    check["speedup"], lat.provider, check["pruned_ms"], check["original_ms"])
    return plan, keep, check
