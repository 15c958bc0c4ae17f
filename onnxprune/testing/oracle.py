"""The correctness oracle for structural pruning.

Removing a set of channels structurally must give the same outputs, to float tolerance, as the
original model with those channels' *consumer-side* slices zeroed: every weight axis that reads
the channels (the next Conv's input slices, a Gemm's columns after a Flatten, a MatMul's rows).
Zeroing the producer instead is not equivalent: a BatchNorm bias leaks through the activation.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..graph import Model
from ..analysis import Analysis

__all__ = ["zero_consumers", "run", "random_feeds", "check_oracle", "OracleResult"]


def zero_consumers(original: onnx.ModelProto, an: Analysis, keep_atom: np.ndarray) -> onnx.ModelProto:
    """A copy of ``original`` with the removed channels' consumer-side weights set to zero."""
    m = Model(original)
    for p in an.params:
        if p.role not in ("in", "recurrent"):  # consumer side: the next layer, and R's columns
            continue
        drop = ~an.keep_mask(p.labels, keep_atom)
        if not drop.any():
            continue
        m.zero_const(p.tensor, p.axis, drop)
    return m.to_proto()


def random_feeds(model: onnx.ModelProto, batch: int = 2, seed: int = 0,
                 other_dim: int | None = None) -> dict[str, np.ndarray]:
    """Random inputs by declared type: floats ~ N(0,1); integers: masks 1, token types 0, positions
    0…n-1, other ids in [0, 100). Dynamic dims: ``batch`` (the first; every one if ``other_dim`` is None)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        tt = v.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                else (batch if i == 0 or other_dim is None else other_dim) for i, d in enumerate(tt.shape.dim)]
        low = v.name.lower()
        if np.issubdtype(dtype, np.floating):
            feeds[v.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_ or "mask" in low:
            feeds[v.name] = np.ones(dims, dtype=dtype)
        elif "type" in low or "segment" in low:
            feeds[v.name] = np.zeros(dims, dtype=dtype)
        elif "position" in low and dims:
            feeds[v.name] = np.broadcast_to(np.arange(dims[-1], dtype=dtype), dims).copy()
        else:
            feeds[v.name] = rng.integers(0, 100, dims).astype(dtype)
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` on the CPU provider, graph optimisations off (exact arithmetic)."""
    from ..validate.runtime import make_session

    return make_session(model.SerializeToString(), "cpu", optimize=False).run(None, feeds)


class OracleResult:
    """What :func:`check_oracle` found: the error, and everything needed to assert more."""

    def __init__(self, max_err, scale, analysis, keep_atom, pruned, reference, original_out, removed, reference_out):
        self.max_err = max_err
        self.scale = scale
        self.analysis = analysis
        self.keep_atom = keep_atom
        self.pruned = pruned
        self.reference = reference
        self.original_out = original_out
        self.removed = removed
        self.reference_out = reference_out


def check_oracle(proto: onnx.ModelProto, *, ratio: float = 0.5, criterion: str = "l2", mode: str = "uniform",
                 round_to: int = 1, protect=(), seed: int = 0, batch: int = 2, keep_atom=None,
                 feeds: dict | None = None, hidden_mode: bool | None = None, **plan_kw) -> OracleResult:
    """Prune ``proto`` (a copy) and compare with the consumer-zeroed original on random inputs.

    In hidden-size mode (``hidden_mode``, default: when ``hidden``/``hidden_ratio`` plan keywords are
    given) the reference is ``hidden.reference``: norms and reductions over the stream read the
    kept channels only.

    The pruned model is also run through ``onnx.checker.check_model(full_check=True)``.
    """
    from .. import rewrite
    from ..analysis import analyze
    from ..importance import score_groups
    from ..planner import keep_atoms, make_plan

    original = onnx.ModelProto()
    original.CopyFrom(proto)
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    m = Model(work)
    if hidden_mode is None:
        hidden_mode = plan_kw.get("hidden") is not None or plan_kw.get("hidden_ratio") is not None
    an = analyze(m, protect=protect, hidden=hidden_mode)
    if keep_atom is None:
        scores = score_groups(an, criterion, seed=seed)
        plan = make_plan(an, scores, criterion=criterion, ratio=ratio, mode=mode, round_to=round_to, **plan_kw)
        keep_atom = keep_atoms(an, plan)
    if an.hidden:
        from ..hidden import reference as hidden_reference

        reference = hidden_reference(original, an, keep_atom)
    else:
        reference = zero_consumers(original, an, keep_atom)
    rewrite.apply(m, an, keep_atom)
    pruned = m.to_proto()
    onnx.checker.check_model(pruned, full_check=True)
    feeds = feeds or random_feeds(original, batch=batch, seed=seed)
    ref_out = run(reference, feeds)
    new_out = run(pruned, feeds)
    orig_out = run(original, feeds)
    max_err = 0.0
    for a, b in zip(ref_out, new_out):
        if a.shape != b.shape:
            raise AssertionError(f"output shape {b.shape} differs from {a.shape}")
        max_err = max(max_err, float(np.abs(a.astype(np.float64) - b).max(initial=0.0)))
    scale = max(float(np.abs(a).max(initial=0.0)) for a in ref_out)
    return OracleResult(max_err, scale, an, keep_atom, pruned, reference, orig_out, int((~keep_atom).sum()), ref_out)
