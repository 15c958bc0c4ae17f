"""Hidden-size (residual stream) pruning: what is *not* exact, and how it is checked and compensated.

In hidden mode (``analyze(..., hidden=True)``, ``--hidden-ratio``/``--hidden``) the nodes that read
across the channels of a tensor — ``LayerNormalization`` over the channel axis (its rule in
``rules/norm.py``) and ``Reduce*`` over the channel axis (``rules/spatial.py``: RMSNorm's
``Pow → ReduceMean → Add → Sqrt → Div``, a decomposed LayerNorm's ``ReduceMean → Sub``) — no
longer pin the stream: each is recorded here as a :class:`NormSite`, and every group it touches
is a ``hidden`` group. Embedding tables (``Gather`` of a constant) become producers of the stream
(``rules/concat_split.py``). Everything else in the stream goes through the ordinary rules, so
an op the tool does not understand still pins the group with its reason.

Semantics (the hidden-size oracle): removing hidden channels ≡ the original model where

* consumers' slices of the removed channels are zeroed (as for exact groups), and
* every site reads the kept channels only: LayerNorm normalises over the kept channels (its
  output is zero on the removed ones), a reduction over the channel axis reduces the kept ones
  (a ReduceMean divides by the kept count: the statistics are re-normalised);
* a graph output carrying the stream keeps its width: the pruned model scatters the kept
  channels back (``Pad`` + ``Gather``, no arithmetic), the removed ones read 0.

:func:`reference` builds that model; ``testing.oracle.check_oracle`` compares against it.

Compensation (:func:`compensate`): after removal a LayerNorm's statistics are over fewer
channels. Its γ/β are refitted per kept channel so that the normalised-over-kept output matches
the original output on data: least squares with calibration data, or a rescale that keeps each
kept channel's mean and variance on seeded random inputs without. RMSNorm patterns (γ is a
separate ``Mul``) are not compensated (logged).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from .graph import Model, inp, out

__all__ = ["NormSite", "add_site", "expandable_outputs", "expand_output", "reference", "compensate",
           "summary"]

log = logging.getLogger("onnxprune.hidden")


@dataclass(frozen=True)
class NormSite:
    """A node reading across the hidden channels of its input 0.

    ``kind`` is ``layernorm`` (γ input 1, β input 2, normalised over the last axis) or
    ``reduce`` (a ``Reduce*`` over the channel axis only); ``axis`` is the input's channel axis.
    """

    node: str
    kind: str
    input: str
    output: str
    axis: int
    labels: np.ndarray


def add_site(ctx, kind: str, x) -> None:
    """Record a site for the node of ``ctx`` reading input 0's channels ``x`` (a ``Chan``)."""
    ctx.an.hidden_sites.append(NormSite(ctx.name, kind, ctx.input_name(0), ctx.output_name(0), x.axis, x.labels))


# --------------------------------------------------------------------------- graph outputs
def expandable_outputs(an) -> set[str]:
    """Graph outputs whose channels all belong to the hidden stream, on the last axis of a float
    tensor: re-expanded to full width by the rewrite instead of pinning the stream."""
    if not an.hidden_sites:
        return set()
    uf = an._uf
    roots = {uf.find(int(l)) for s in an.hidden_sites for l in s.labels.tolist()}
    m = an.model
    found = set()
    for name in m.graph_outputs:
        c = an.chan.get(name)
        shape = m.shape(name)
        if c is None or shape is None or c.axis != len(shape) - 1:
            continue
        if m.dtypes.get(name, onnx.TensorProto.FLOAT) not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                                onnx.TensorProto.DOUBLE):
            continue
        if all(uf.find(int(l)) in roots for l in c.labels.tolist()):
            found.add(name)
    return found


def expand_output(an, name: str, c) -> None:
    """Declare the fix that scatters the kept channels of graph output ``name`` back to its width."""
    from .analysis import Fix

    an.expanded_outputs.append(name)
    size = int(c.labels.size)

    rank = len(an.model.shape(name))

    def fix(rw, name=name, labels=c.labels, rank=rank):
        keep = rw.keep(labels)
        if not keep.all():
            scatter_back(rw.model, name, keep, rank, moves="outputs")

    node = an.model.producer(name)
    an.fixes.append(Fix(node, fix))
    log.info("graph output '%s' (%d hidden channels) is re-expanded with zeros after hidden pruning", name, size)


def scatter_back(m: Model, name: str, keep: np.ndarray, rank: int, *, moves: str) -> None:
    """Give tensor ``name`` (kept channels on its last axis) its full width again, zeros at the
    removed positions: ``Pad`` one zero channel, then ``Gather`` (no arithmetic)."""
    pads = np.zeros(2 * rank, np.int64)
    pads[-1] = 1
    if m.opset >= 11:
        _append(m, name, "Pad", [pads], moves=moves, suffix="_kept")
    else:
        _append(m, name, "Pad", [], moves=moves, suffix="_kept", pads=[int(p) for p in pads])
    idx = np.full(keep.size, int(keep.sum()), np.int64)
    idx[keep] = np.arange(int(keep.sum()))
    _append(m, name, "Gather", [idx], moves=moves, suffix="_padded", axis=-1)


def _append(m: Model, name: str, op: str, consts: list[np.ndarray], *, moves: str, suffix: str, **attrs) -> None:
    """Put ``op(name, *consts)`` after tensor ``name``; the new node's output takes the name.

    ``moves``: ``outputs`` (only the graph-output slots read the new value; other readers keep
    the old one, renamed ``name + suffix``) or ``all`` (every reader moves).
    """
    v = m.value_of(name)
    producer = v.producer()
    inputs = [v] + [m.value_of(m.add_initializer(f"{name}{suffix}_c", c)) for c in consts]
    node = ir.Node("", op, inputs, name=m.unique_name(f"{name}{suffix}_{op.lower()}"),
                   attributes=[ir.convenience.convert_attribute(k, a) for k, a in attrs.items()])
    uses = [(u, i) for u, i in v.uses() if u is not node]
    if producer is not None:
        m.graph.insert_after(producer, node)
    else:  # a graph input read straight through
        m.graph.insert_before(next(iter(m.graph)), node)
    m.take_over(v, node.outputs[0], suffix, uses if moves == "all" else (), keep_old_shape=False)


# --------------------------------------------------------------------------- the oracle's reference
def reference(proto: onnx.ModelProto, an, keep_atom: np.ndarray) -> onnx.ModelProto:
    """The model that hidden-size removal must reproduce (consumers zeroed, sites reading the kept
    channels only, re-expanded graph outputs zero on the removed channels); see the module doc."""
    from .testing.oracle import zero_consumers

    m = Model(zero_consumers(proto, an, keep_atom))
    for site in an.hidden_sites:
        keep = an.keep_mask(site.labels, keep_atom)
        if keep.all():
            continue
        idx = np.flatnonzero(keep).astype(np.int64)
        node = m.producer(site.output)
        gathered = m.unique_name(site.input + "_kept")
        g = ir.Node("", "Gather", [m.value_of(site.input), m.value_of(m.add_initializer("kept_idx", idx))],
                    attributes=[ir.AttrInt64("axis", site.axis)], name=gathered)
        m.graph.insert_before(node, g)
        g.outputs[0].name = gathered
        node.replace_input_with(0, g.outputs[0])
        if site.kind == "layernorm":
            for k in (1, 2):
                if inp(node, k):
                    v = np.asarray(m.const(inp(node, k)))
                    node.replace_input_with(k, m.value_of(m.add_initializer(inp(node, k) + "_kept", v[..., idx])))
            m.changed()
            scatter_back(m, site.output, keep, len(an.model.shape(site.input)), moves="all")
        m.changed()
    for name in an.expanded_outputs:
        c = an.chan[name]
        keep = an.keep_mask(c.labels, keep_atom)
        if not keep.all():
            dtype = onnx.helper.tensor_dtype_to_np_dtype(m.dtypes.get(name, onnx.TensorProto.FLOAT))
            _append(m, name, "Mul", [keep.astype(dtype)], moves="outputs", suffix="_full")
    return m.to_proto()


# --------------------------------------------------------------------------- compensation
def compensate(m: Model, an, keep_atom: np.ndarray, batches, *, how: str) -> list[str]:
    """Refit the γ/β of every LayerNorm site that loses channels (on the full-size constants,
    before slicing). ``how``: ``lsq`` (least squares) or ``rescale`` (match mean and variance).

    Returns one note per site handled or skipped.
    """
    from .validate.runtime import make_session

    todo = []
    notes = []
    for site in an.hidden_sites:
        keep = an.keep_mask(site.labels, keep_atom)
        if keep.all():
            continue
        if site.kind != "layernorm":
            notes.append(f"{site.node}: {site.kind} site not compensated (no per-channel γ on the node)")
            continue
        node = m.producer(site.output)
        gname = inp(node, 1)
        if not m.is_plain_const(gname) or len(m.const_users(gname)) != 1 or (
                inp(node, 2) and (not m.is_plain_const(inp(node, 2)) or len(m.const_users(inp(node, 2))) != 1)):
            notes.append(f"{site.node}: γ/β shared or not plain constants; not compensated")
            continue
        todo.append((site, node, keep))
    if not todo:
        return notes
    names = list(dict.fromkeys(s.input for s, _, _ in todo))
    sess = make_session(m.serialized_with_outputs(names, only=True), "cpu", quiet=True)
    feeds_names = {i.name for i in sess.get_inputs()}
    acc = {id(n): np.zeros((5, int(k.sum()))) for _, n, k in todo}
    count = {id(n): 0 for _, n, _ in todo}
    for feeds in batches:
        outs = dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in feeds_names})))
        for site, node, keep in todo:
            x = np.moveaxis(outs[site.input].astype(np.float64), site.axis, -1).reshape(-1, keep.size)
            eps = float(m.attr(node, "epsilon", 1e-5))
            gamma = np.asarray(m.const(inp(node, 1)), np.float64).reshape(-1)
            beta = np.asarray(m.const(inp(node, 2)), np.float64).reshape(-1) if inp(node, 2) else 0.0
            y = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + eps) * gamma + beta
            xk = x[:, keep]
            z = (xk - xk.mean(1, keepdims=True)) / np.sqrt(xk.var(1, keepdims=True) + eps)
            y = y[:, keep]
            a = acc[id(node)]
            a[0] += z.sum(0)
            a[1] += (z * z).sum(0)
            a[2] += y.sum(0)
            a[3] += (y * y).sum(0)
            a[4] += (z * y).sum(0)
            count[id(node)] += x.shape[0]
    for site, node, keep in todo:
        n = count[id(node)]
        if n < 2:
            notes.append(f"{site.node}: no data reached it; not compensated")
            continue
        s = acc[id(node)] / n
        mz, vz = s[0], np.maximum(s[1] - s[0] ** 2, 1e-12)
        my, vy = s[2], np.maximum(s[3] - s[2] ** 2, 0.0)
        if how == "lsq":
            scale = (s[4] - mz * my) / vz
        else:
            scale = np.sqrt(vy / vz) * np.sign(np.asarray(m.const(inp(node, 1)), np.float64).reshape(-1)[keep])
        shift = my - scale * mz
        gname = inp(node, 1)
        g = np.asarray(m.const(gname)).copy()
        gk = g.reshape(-1)
        gk[keep] = scale
        m.set_const(gname, gk.reshape(g.shape).astype(g.dtype))
        if inp(node, 2):
            bname = inp(node, 2)
            b = np.asarray(m.const(bname)).copy()
            bk = b.reshape(-1)
            bk[keep] = shift
            m.set_const(bname, bk.reshape(b.shape).astype(b.dtype))
        else:
            from .analysis import ParamAxis

            full = np.zeros(keep.size, dtype=g.dtype)
            full[keep] = shift
            bname = m.add_initializer(f"{site.node}.bias", full)
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            node.replace_input_with(2, m.value_of(bname))
            an.params.append(ParamAxis(bname, 0, site.labels, node, "norm"))
        m.values_changed()
        notes.append(f"{site.node}: γ/β refitted ({how}) on {n} positions")
    return notes


def data_free_batches(m: Model, n: int = 4, seed: int = 0):
    """Seeded random feeds at the analysis' concrete input shape (integers 0..9 for id inputs)."""
    rng = np.random.default_rng(seed)
    out_batches = []
    for _ in range(n):
        feeds = {}
        for name in m.graph_inputs:
            shape = m.shape(name)
            if shape is None or not all(isinstance(d, int) for d in shape):
                return []
            dtype = onnx.helper.tensor_dtype_to_np_dtype(m.dtypes.get(name, onnx.TensorProto.FLOAT))
            if np.issubdtype(dtype, np.floating):
                feeds[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_:
                feeds[name] = np.ones(shape, bool)
            else:
                feeds[name] = rng.integers(1, 10, size=shape).astype(dtype)
        out_batches.append(feeds)
    return out_batches


# --------------------------------------------------------------------------- reporting
def summary(an, plan) -> list[dict]:
    """One entry per hidden group of a plan: width before/after and the sites it renormalises."""
    rows = []
    for gp in plan.groups:
        g = an.groups[gp.group]
        if g.kind != "hidden":
            continue
        sites = [s.node for s in an.hidden_sites if int(an.group_of_atom[an.atom_of_label[s.labels[0]]]) == g.id]
        rows.append({"group": g.id, "name": gp.name, "channels": g.size, "kept": gp.kept,
                     "prunable": g.n_prunable, "norm_sites": len(sites), "reasons": list(g.reasons)[:3],
                     "expanded_outputs": [n for n in an.expanded_outputs
                                          if int(an.group_of_atom[an.atom_of_label[an.chan[n].labels[0]]]) == g.id]})
    return rows
