"""Training-free recovery, applied to the full-size weights before channels are sliced away.

For a consumer ``y = W x + b`` whose input channels R are removed:

* **bias compensation**: ``b'[o] = b[o] + Σ_{c∈R} E[x_c] · Σ_k W[o, c, k]`` — the removed channels'
  expected contribution moves into the bias. Exact when the removed channels are constant and
  the consumer reads no padding (1×1/unpadded convs, Gemm, MatMul); padded convs are exact in the
  interior. E[x_c] comes from calibration (recorded means) or, data-free, from BatchNorm
  statistics: ``E[act(z)]``, ``z ~ N(β, γ²)`` by quadrature on a dense grid, carried forward
  through mean-preserving ops (layout ops, average pooling, Concat).
* **least squares** (ridge): with the consumer's input Gram ``G = Σ x̃x̃ᵀ`` (x̃ = [x; 1], im2col
  rows for a Conv), the weights over the kept inputs K that best reproduce the original output
  are ``W'_K = A G[:, K] (G_KK + λI)⁻¹`` with ``A = [W b]``; the bias column absorbs the removed
  channels' means. λ — and whether to refit at all rather than compensate the bias or just
  remove — is chosen per consumer by 2-fold held-out error on the calibration samples (Gram
  halves of even/odd samples), then refitted on all of them; so it never does worse on held-out
  calibration data than plain removal.

Consumers: Conv (group 1; grouped convs get bias compensation only), ConvTranspose (bias,
averaged over the stride phases), Gemm (alpha/beta honoured), MatMul (its bias ``Add`` or a new
one). A missing bias is created and registered with the node's output channels, so it is
sliced with them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..graph import Model, inp, out
from ..rules import rule_for
from ..rules.elementwise import activation_fn
from ..analysis import Analysis, ParamAxis
from ..errors import UnsupportedModelError

log = logging.getLogger(__name__)

__all__ = ["Recovery", "recover", "data_free_means", "MODES"]

MODES = ("none", "bias", "lsq", "seq")


@dataclass
class Recovery:
    """What the recovery pass needs.

    Attributes:
        mode: ``none``, ``bias``, ``lsq`` or ``seq`` (sequential reconstruction, ``sequential.py``).
        means: consumer input tensor -> mean per position of its channel axis.
        grams: consumer node name -> ``record.Gram`` (for ``lsq``).
        fold_atoms: atoms whose constant is folded even in mode ``none`` (dead channels).
    """

    mode: str = "none"
    means: dict[str, np.ndarray] = field(default_factory=dict)
    grams: dict = field(default_factory=dict)
    fold_atoms: np.ndarray | None = None
    report: list[str] = field(default_factory=list)
    calibration: object = None  # for ``seq``: the calibration batches
    skip: set = field(default_factory=set)  # consumer node names left to another pass


# ------------------------------------------------------------------------ the pass
def recover(model: Model, an: Analysis, keep_atom: np.ndarray, rec: Recovery) -> list[str]:
    """Update consumer weights/biases (full size) for the channels about to be removed."""
    if rec.mode == "none" and (rec.fold_atoms is None or not rec.fold_atoms.any()):
        return []
    if rec.mode == "seq":
        return _sequential(model, an, keep_atom, rec)
    from ..progress import progress

    done = set()
    consumers = [p for p in an.params if p.role == "in"]
    for p in progress(consumers, f"reconstruction ({rec.mode})", unit="weights"):
        if p.node in done:
            continue
        node = p.node
        x = inp(node, 0)
        c = an.chan.get(x)
        if c is None:
            continue
        removed = ~an.keep_mask(c.labels, keep_atom)
        if not removed.any():
            continue
        done.add(p.node)
        name = model.node_name(p.node)
        if name in rec.skip:
            continue
        if rec.mode == "lsq" and name in rec.grams and _lsq(model, an, p, removed, rec):
            continue  # the refit's bias column absorbed the removed channels, dead ones included
        if rec.mode in ("bias", "lsq"):  # lsq falls back to bias compensation where it cannot refit
            fold = removed
        elif rec.fold_atoms is not None:  # mode none: only dead (constant) channels are folded
            fold = removed & rec.fold_atoms[an.atom_of_label[c.labels]]
        else:
            continue
        if not fold.any():
            continue
        means = rec.means.get(x)
        if means is None:
            rec.report.append(f"{name}: no mean known for '{x}'; removed channels not compensated")
            continue
        _bias(model, an, p, fold, means, rec)
    return rec.report


def _sequential(model: Model, an: Analysis, keep_atom: np.ndarray, rec: Recovery) -> list[str]:
    """Bias compensation where no refit is possible, then the sequential refits downstream of it."""
    from .sequential import plan_jobs, reconstruct

    if rec.calibration is None:
        raise ValueError("sequential reconstruction needs calibration data")
    if any(g.kind == "hidden" and not keep_atom[g.atoms].all() for g in an.groups):
        # its full-size equivalent (removed slices zeroed) is not the pruned model when norms
        # re-normalise over the kept hidden channels: refits aimed at it measured worse than none
        # (MiniLM --hidden-ratio 0.25: held-out embedding cosine 0.709 with seq, 0.747 without)
        log.warning("sequential reconstruction skipped: the plan prunes the hidden size, whose norms re-normalise "
                    "over the kept channels (the norms' gamma/beta are refitted instead)")
        rec.report.append("seq: skipped (hidden-size pruning)")
        return rec.report
    refit = {j.name for j in plan_jobs(model, an, keep_atom)}
    original = model.to_proto() if refit else None  # the refits' targets: the layers before any compensation
    recover(model, an, keep_atom, Recovery("bias", rec.means, fold_atoms=rec.fold_atoms, skip=refit,
                                           report=rec.report))
    rec.report.extend(reconstruct(model, an, keep_atom, rec.calibration, original=original))
    return rec.report


def _layout(model: Model, node):
    rule = rule_for(node)
    lay = rule.layout(model, node) if rule is not None else None
    return lay if lay is not None and model.const(inp(node, lay.weight)) is not None else None


def _bias(model: Model, an: Analysis, p: ParamAxis, fold: np.ndarray, means: np.ndarray, rec: Recovery) -> None:
    node = p.node
    lay = _layout(model, node)
    if lay is None:
        return
    w = model.const(inp(node, lay.weight)).astype(np.float64)
    mu = np.where(fold, means, 0.0)
    if lay.kind == "conv":
        g = lay.groups
        o, cg = w.shape[0], w.shape[1]
        ksum = w.reshape(o, cg, -1).sum(axis=2)  # [O, C/g]
        if g == 1:
            delta = ksum @ mu
        elif cg == 1:
            return  # depthwise: inputs and outputs go together
        else:
            per = o // g
            delta = np.array([ksum[i] @ mu[(i // per) * cg:(i // per + 1) * cg] for i in range(o)])
    elif lay.kind == "conv_transpose":
        if lay.groups != 1:
            return
        delta = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2).T @ mu / float(np.prod(lay.strides))
    elif lay.kind == "dense":
        b = np.moveaxis(w, lay.in_axis, 0)  # [K, N]
        delta = lay.alpha * (mu @ b)
    else:
        return
    _add_to_bias(model, an, p.node, delta)
    rec.report.append(f"{model.node_name(p.node)}: bias compensation for {int(fold.sum())} input position(s)")


RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _fit(a: np.ndarray, g: np.ndarray, kidx: np.ndarray, removed_cols: np.ndarray, how: str, lam: float = 0.0):
    """Weights over the kept inputs K (plus the bias column) from a normalised Gram g.

    ``plain``: drop the removed columns; ``bias``: fold their mean contribution into the bias;
    ``lsq``: ridge least squares ``A G[:, K] (G_KK + λ·mean(diag G_KK)·I)⁻¹``.
    """
    if how == "plain":
        return a[:, kidx]
    if how == "bias":
        x = a[:, kidx].copy()
        mean = g[:-1, -1] / max(g[-1, -1], 1e-30)
        x[:, -1] += a[:, :-1][:, removed_cols] @ mean[removed_cols]
        return x
    gkk = g[np.ix_(kidx, kidx)]
    reg = lam * float(np.trace(gkk)) / len(kidx)
    return np.linalg.solve(gkk + reg * np.eye(len(kidx)), (a @ g[:, kidx]).T).T


def _err(x: np.ndarray, a: np.ndarray, g: np.ndarray, kidx: np.ndarray) -> float:
    """Mean squared output error per row of weights x (over K) against the original A, on g."""
    gkk = g[np.ix_(kidx, kidx)]
    return float(np.sum((x @ gkk) * x) - 2 * np.sum(x * (a @ g[:, kidx])) + np.sum((a @ g) * a))


def _lsq(model: Model, an: Analysis, p: ParamAxis, removed: np.ndarray, rec: Recovery) -> bool:
    """Least-squares recovery with its ridge chosen by 2-fold held-out error.

    Candidates — plain removal, bias compensation, ridge refits over ``RIDGES`` — are fitted on
    one half of the calibration samples and scored on the other (and vice versa); the best is
    refitted on all samples. With few samples per input feature the refit overfits, and then
    bias compensation or plain removal wins: recovery never trades held-out error for
    calibration error.
    """
    node = p.node
    lay = _layout(model, node)
    if lay is None:
        return False
    gram = rec.grams[model.node_name(p.node)]
    w = model.const(inp(node, lay.weight)).astype(np.float64)
    alpha, beta = lay.alpha, lay.beta
    if lay.kind == "conv" and lay.groups == 1:
        o = w.shape[0]
        k = int(np.prod(w.shape[2:]))
        a_w = w.reshape(o, -1)
        keep_cols = np.repeat(~removed, k)
    elif lay.kind == "dense" and w.ndim == 2:
        a_w = alpha * np.moveaxis(w, lay.out_axis, 0)  # [N, K]
        keep_cols = ~removed
    else:
        return False
    if gram.dim != a_w.shape[1]:
        return False
    if not model.is_plain_const(inp(node, lay.weight)):  # e.g. int8 behind DequantizeLinear: keep it quantized
        rec.report.append(f"{model.node_name(node)}: weight is not a plain constant; no least-squares refit")
        return False
    bias = _current_bias(model, an, p.node, a_w.shape[0]) * beta
    a = np.concatenate([a_w, bias[:, None]], axis=1)  # [O, D+1]
    kidx = np.flatnonzero(np.append(keep_cols, True))
    removed_cols = ~keep_cols
    halves = [g / max(n, 1) for g, n in zip(gram.parts, gram.rows_parts) if n > 0]
    full = gram.g / max(gram.rows, 1)
    candidates = [("plain", 0.0), ("bias", 0.0)] + [("lsq", lam) for lam in RIDGES]
    scores = []
    for how, lam in candidates:
        try:
            if len(halves) == 2:
                e = sum(_err(_fit(a, fit_g, kidx, removed_cols, how, lam), a, test_g, kidx)
                        for fit_g, test_g in ((halves[0], halves[1]), (halves[1], halves[0]))) / 2
            else:  # one sample: no held-out half; the strongest ridge is the safe refit
                e = _err(_fit(a, full, kidx, removed_cols, how, lam), a, full, kidx) if how != "lsq" or \
                    lam == RIDGES[-1] else np.inf
        except np.linalg.LinAlgError:
            e = np.inf
        scores.append(e)
    best = int(np.argmin(scores))
    how, lam = candidates[best]
    name = model.node_name(p.node)
    if how == "plain":
        rec.report.append(f"{name}: plain removal has the lowest held-out error; weights unchanged")
        return True
    x = _fit(a, full, kidx, removed_cols, how, lam)
    new_w = np.zeros_like(a_w)
    new_w[:, keep_cols] = x[:, :-1]
    new_b = x[:, -1]
    if lay.kind == "conv":
        model.set_const(inp(node, lay.weight), new_w.reshape(w.shape))
    else:
        model.set_const(inp(node, lay.weight), np.moveaxis(new_w / alpha, 0, lay.out_axis))
    _add_to_bias(model, an, p.node, new_b / beta - bias / beta)
    label = "bias compensation" if how == "bias" else f"least-squares refit (ridge {lam:g})"
    rec.report.append(f"{name}: {label} chosen by held-out error over {len(kidx) - 1} kept inputs "
                      f"(held-out error {scores[0]:.4g} plain -> {scores[best]:.4g})")
    return True


# ------------------------------------------------------------------- bias slots
def _current_bias(model: Model, an: Analysis, node: ir.Node, n: int) -> np.ndarray:
    lay = _layout(model, node)
    if lay is not None and lay.bias is not None:
        if inp(node, lay.bias):
            b = model.const(inp(node, lay.bias))
            return np.broadcast_to(np.asarray(b, np.float64).reshape(-1), (n,)).copy() \
                if b is not None and b.size in (1, n) else np.zeros(n)
        return np.zeros(n)
    add = _bias_add_after(model, node)
    if add is not None:
        return np.asarray(model.const(inp(add[0], add[1])), np.float64).reshape(n).copy()
    return np.zeros(n)


def _bias_add_after(model: Model, node: ir.Node):
    """(Add node, const input index) when a MatMul's only consumer adds a constant [N]."""
    o = out(node, 0)
    uses = model.uses(o)
    if len(uses) != 1 or model.is_graph_output(o):
        return None
    add, index = uses[0]
    if add.op_type != "Add" or index < 0:
        return None
    k = 1 - index
    v = model.const(inp(add, k))
    n = model.const_shape(inp(node, 1))[-1]
    if v is None or v.shape[-1:] != (n,) or v.size != n or len(model.const_users(inp(add, k))) != 1 \
            or not model.is_plain_const(inp(add, k)):
        return None
    return add, k


def _register(an: Analysis, model: Model, tensor: str, node: ir.Node, out_name: str) -> None:
    c = an.chan.get(out_name)
    if c is not None:
        shape = model.const_shape(tensor)
        an.params.append(ParamAxis(tensor, len(shape) - 1, c.labels, node, "bias"))


def _add_to_bias(model: Model, an: Analysis, node: ir.Node, delta: np.ndarray) -> None:
    n = delta.size
    lay = _layout(model, node)
    if lay is not None and lay.bias is not None:
        beta, k = lay.beta, lay.bias
        if inp(node, k):
            name = inp(node, k)
            old = model.const(name)
            if old is None or not model.is_plain_const(name):
                return  # e.g. an int32 bias behind DequantizeLinear: left as it is
            old = np.asarray(old)
            if (old.size == n or old.shape[-1:] == (n,)) and len(model.const_users(name)) == 1:
                model.set_const(name, (old + (delta / beta).reshape((1,) * (old.ndim - 1) + (n,))).astype(old.dtype))
                return
            if old.size != 1:
                raise UnsupportedModelError(f"node '{model.node_name(node)}': bias '{name}' has shape "
                                            f"{list(old.shape)}, the node has {n} output channels; fix or "
                                            "re-export the model")
            new = (np.broadcast_to(old.reshape(-1), (n,)) + delta / beta).astype(old.dtype)  # scalar C: widen
            name = model.add_initializer(name, new)
            node.replace_input_with(k, model.value_of(name))
        else:
            dtype = model.const(inp(node, lay.weight)).dtype
            name = model.add_initializer(f"{model.node_name(node)}.bias", (delta / beta).astype(dtype))
            if len(node.inputs) <= k:
                node.resize_inputs(k + 1)
            node.replace_input_with(k, model.value_of(name))
        _register(an, model, name, node, out(node, 0))
        return
    add = _bias_add_after(model, node)
    if add is not None:
        name = inp(add[0], add[1])
        old = np.asarray(model.const(name))
        model.set_const(name, (old + delta.reshape(old.shape)).astype(old.dtype))
        return
    # MatMul without a bias: y = MatMul(...) + b, the Add taking over the output's name and uses
    old_out = node.outputs[0]
    o = old_out.name
    dtype = model.const(inp(node, 1)).dtype
    name = model.add_initializer(f"{model.node_name(node)}.bias", delta.astype(dtype))
    uses = list(old_out.uses())
    add = ir.Node("", "Add", [old_out, model.value_of(name)], name=f"{model.node_name(node)}_bias")
    model.graph.insert_after(node, add)
    model.take_over(old_out, add.outputs[0], "_prebias", uses)
    if o in an.chan:
        an.chan[old_out.name] = an.chan[o]
    _register(an, model, name, node, o)


# ------------------------------------------------------------------ data-free means
_GRID = np.linspace(-10.0, 10.0, 4001)
_WEIGHTS = np.exp(-0.5 * _GRID**2)
_WEIGHTS /= _WEIGHTS.sum()


def _expect(fn, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """E[fn(z)], z ~ N(mu, sigma²), per channel: a dense grid, accurate for kinks (ReLU, Clip)."""
    z = mu[:, None] + sigma[:, None] * _GRID[None, :]
    return (fn(z) * _WEIGHTS[None, :]).sum(axis=1)


_MEAN_KEEPING = {"Identity", "Dropout", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose",
                 "Squeeze", "Unsqueeze"}
_GAUSS_KEEPING = {"Identity", "Dropout", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze"}


def data_free_means(an: Analysis) -> dict[str, np.ndarray]:
    """Means per channel position of tensors reachable from a BatchNorm through an activation.

    Walks the graph forward: BatchNorm output ~ N(β, γ²) per channel; an element-wise activation
    of it has mean E[act(z)] (x·sigmoid(x) included); layout ops, average pooling and channel
    Concat carry means on by label. Everything else is unknown.
    """
    model = an.model
    gauss: dict[str, dict[int, tuple[float, float]]] = {}
    mean: dict[str, dict[int, float]] = {}

    def by_label(name, table):
        c = an.chan.get(name)
        if c is None or name not in table:
            return None
        t = table[name]
        return np.array([t.get(int(lab), np.nan) for lab in c.labels])

    for node in model.graph:
        op = node.op_type
        x = inp(node, 0)
        c = an.chan.get(x)
        o = out(node, 0)
        oc = an.chan.get(o)
        if op == "BatchNormalization" and c is not None and oc is not None:
            gamma, beta = model.const(inp(node, 1)), model.const(inp(node, 2))
            if gamma is not None and beta is not None:
                gauss[o] = {int(lab): (float(b), abs(float(g))) for lab, g, b in zip(c.labels, gamma, beta)}
                mean[o] = {int(lab): float(b) for lab, b in zip(c.labels, beta)}
            continue
        if oc is None:
            continue
        if x in gauss and (fn := activation_fn(model, node)) is not None:
            labs = list(gauss[x])
            mu = np.array([gauss[x][k][0] for k in labs])
            sd = np.array([gauss[x][k][1] for k in labs])
            mean[o] = dict(zip(labs, _expect(fn, mu, sd).tolist()))
            if op in ("Identity", "Dropout"):
                gauss[o] = gauss[x]
        elif op == "Mul" and len(node.inputs) == 2:  # x * sigmoid(x)
            a, b = inp(node, 0), inp(node, 1)
            for u, v in ((a, b), (b, a)):
                prod = model.producer(v)
                if u in gauss and prod is not None and prod.op_type == "Sigmoid" and inp(prod, 0) == u:
                    labs = list(gauss[u])
                    mu = np.array([gauss[u][k][0] for k in labs])
                    sd = np.array([gauss[u][k][1] for k in labs])
                    mean[o] = dict(zip(labs, _expect(lambda z: z / (1 + np.exp(-z)), mu, sd).tolist()))
        elif op in _MEAN_KEEPING and x in mean:
            mean[o] = mean[x]
            if op in _GAUSS_KEEPING and x in gauss:
                gauss[o] = gauss[x]
        elif op == "Concat" and all(v is not None and v.name in mean for v in node.inputs):
            merged: dict[int, float] = {}
            for v in node.inputs:
                merged.update(mean[v.name])
            mean[o] = merged
    out_means = {}
    for p in an.params:
        if p.role == "in":
            x = inp(p.node, 0)
            arr = by_label(x, mean)
            if arr is not None and np.isfinite(arr).all():
                out_means[x] = arr
    return out_means
