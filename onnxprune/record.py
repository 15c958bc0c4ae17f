"""Activation recorder (onnxruntime only): running per-channel statistics of chosen tensors.

The recorder exposes intermediate tensors as extra graph outputs of a serialised copy of the
model, streams calibration batches through onnxruntime on the CPU, and keeps running sums only,
so memory does not grow with the number of batches:

* per channel (positions of the tensor's channel axis): count, Σa, Σ|a|, Σa², zeros (APoZ),
  min and max (constant-channel detection);
* on demand, the input Gram matrix of a consumer, ``G = Σ x̃ x̃ᵀ`` with ``x̃ = [x; 1]``, where x
  is one row of the consumer's input as the consumer reads it: an unfolded C·kh·kw patch for a
  Conv (im2col with its strides, pads and dilations), a K-vector for Gemm/MatMul — in two halves
  (even and odd samples) for held-out model selection. Least-squares reconstruction needs only G.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .graph import Model, inp
from .errors import OnnxPruneError

__all__ = ["ChannelStats", "GramSpec", "Gram", "Recording", "halves", "record", "select_rows"]


def halves(mask: np.ndarray | None, *arrays: np.ndarray):
    """The even and odd samples of a batch (held-out model selection: fit on one, score on the other):
    yields ``(half, mask part, array parts…)`` for each non-empty half; a one-sample batch is all in half 0."""
    many = arrays[0].ndim > 0 and arrays[0].shape[0] > 1
    for half in (0, 1):
        if not many and half:
            return
        parts = [a[half::2] if many else a for a in arrays]
        if parts[0].size == 0:
            continue
        yield half, (None if mask is None else mask[half::2] if many else mask), *parts


def select_rows(x: np.ndarray, axis: int, mask: np.ndarray | None) -> tuple[np.ndarray, int]:
    """``x`` without its padded positions: a tensor laid out [N, S, …] like the token mask [N, S]
    (channels on a later axis) becomes [kept positions, …]; anything else is returned as it is.

    Tensors that do not start with the mask's shape (a head-split [N, H, S, D], a Conv's
    [N, C, H, W]) keep every row."""
    if mask is None or x.ndim < 3:
        return x, axis
    ax = axis % x.ndim
    if ax < 2 or x.shape[:2] != mask.shape:
        return x, axis
    return x[mask], ax - 1


@dataclass
class ChannelStats:
    """Running statistics of one tensor per position of its channel axis."""

    axis: int
    count: np.ndarray
    sum: np.ndarray
    sum_abs: np.ndarray
    sum_sq: np.ndarray
    zeros: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, axis: int, n: int) -> ChannelStats:
        z = lambda: np.zeros(n, np.float64)  # noqa: E731
        return cls(axis, z(), z(), z(), z(), z(), np.full(n, np.inf), np.full(n, -np.inf))

    def update(self, a: np.ndarray, zero_tol: float, mask: np.ndarray | None = None) -> None:
        a, ax = select_rows(a, self.axis, mask)
        axes = tuple(i for i in range(a.ndim) if i != ax)
        a64 = a.astype(np.float64, copy=False)
        self.count += a.size // a.shape[ax]
        self.sum += a64.sum(axis=axes)
        self.sum_abs += np.abs(a64).sum(axis=axes)
        self.sum_sq += np.square(a64).sum(axis=axes)
        self.zeros += (np.abs(a64) <= zero_tol).sum(axis=axes)
        np.minimum(self.min, a64.min(axis=axes), out=self.min)
        np.maximum(self.max, a64.max(axis=axes), out=self.max)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / np.maximum(self.count, 1)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.sum_abs / np.maximum(self.count, 1)

    @property
    def rms(self) -> np.ndarray:
        return np.sqrt(self.sum_sq / np.maximum(self.count, 1))

    @property
    def apoz(self) -> np.ndarray:
        """Average percentage of zeros (fraction, 0..1)."""
        return self.zeros / np.maximum(self.count, 1)

    def constant(self, tol: float) -> np.ndarray:
        """Positions whose value never moved by more than ``tol`` (× the tensor's scale)."""
        scale = max(float(np.max(np.abs(self.mean))), float(np.max(self.rms)), 1e-12)
        return (self.max - self.min) <= tol * scale


@dataclass(frozen=True)
class GramSpec:
    """How a consumer reads its input: ``dense`` (last axis, or axis 1 for Gemm) or ``conv``."""

    kind: str
    axis: int = -1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()

    def rows(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The consumer's input rows: (n_rows, D); a dense consumer's without padded positions (``mask``)."""
        if self.kind == "dense":
            x, axis = select_rows(x, self.axis, mask)
            return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
        return _im2col(x, self.kernel, self.strides, self.pads, self.dilations)


@dataclass
class Gram:
    """Σ x̃ x̃ᵀ over all rows, x̃ = [x; 1] (the last row/column holds Σx and the row count).

    Kept in two halves — rows of even and of odd calibration samples — so recovery can pick
    its regularisation by held-out error (``parts``), and summed as ``g``.
    """

    parts: list
    rows_parts: list

    @property
    def g(self) -> np.ndarray:
        return self.parts[0] + self.parts[1]

    @property
    def rows(self) -> int:
        return int(sum(self.rows_parts))

    @property
    def dim(self) -> int:
        return self.parts[0].shape[0] - 1


@dataclass
class Recording:
    stats: dict[str, ChannelStats] = field(default_factory=dict)
    grams: dict[str, Gram] = field(default_factory=dict)
    samples: int = 0
    batches: int = 0


def _im2col(x: np.ndarray, kernel, strides, pads, dilations) -> np.ndarray:
    """[N, C, *spatial] -> [N·out_positions, C·prod(kernel)] (channel-major, like W.reshape(O, -1))."""
    nd = len(kernel)
    pad_width = [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)]
    xp = np.pad(x, pad_width)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(
        slice(None, None, d) for d in dilations)
    win = win[sl]  # N, C, *out, *kernel
    n, c = win.shape[:2]
    out_dims = win.shape[2:2 + nd]
    perm = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    return np.ascontiguousarray(win.transpose(perm)).reshape(n * int(np.prod(out_dims)), c * int(np.prod(kernel)))


def gram_spec_for(model: Model, node) -> GramSpec | None:
    """How a consumer reads its input rows, from its rule's weight layout (None: no Gram)."""
    from .rules import rule_for

    rule = rule_for(node)
    lay = rule.layout(model, node) if rule is not None else None
    if lay is None:
        return None
    if lay.kind == "conv" and lay.groups == 1 and lay.pads is not None:
        return GramSpec("conv", 1, lay.kernel, lay.strides, lay.pads, lay.dilations)
    if lay.kind == "dense":
        return GramSpec("dense", lay.x_axis)
    return None


def record(model: Model, calibration, tensors: dict[str, int], *, grams: dict[str, tuple[str, GramSpec]] | None = None,
           zero_tol: float = 0.0, progress: str | None = "recording") -> Recording:
    """Stream calibration batches through the model and keep running statistics.

    Args:
        model: the model (not changed: outputs are added to a serialised copy).
        calibration: a :class:`~onnxprune.calib.Calibration`.
        tensors: tensor name -> channel axis, for per-channel statistics.
        grams: key -> (tensor, GramSpec) for input Gram matrices.
        zero_tol: |a| at most this counts as zero for APoZ.
    """
    grams = grams or {}
    wanted = list(dict.fromkeys([*tensors, *(t for t, _ in grams.values())]))
    blob = model.serialized_with_outputs(wanted)
    from .validate.runtime import make_session

    sess = make_session(blob, "cpu")
    if progress == "recording":  # say what is recorded: statistics and Grams are separate passes
        progress = "recording " + " and ".join(w for w, on in (("statistics", tensors), ("Gram matrices", grams)) if on)
    out_names = [o.name for o in sess.get_outputs()]
    rec = Recording()
    for feeds in calibration.batches(progress):
        mask = calibration.row_mask(feeds)
        outs = dict(zip(out_names, sess.run(out_names, feeds)))
        outs.update({k: v for k, v in feeds.items() if k in tensors or any(k == t for t, _ in grams.values())})
        for name, axis in tensors.items():
            a = outs[name]
            st = rec.stats.get(name)
            if st is None:
                st = rec.stats[name] = ChannelStats.empty(axis, a.shape[axis])
            st.update(a, zero_tol, mask)
        for key, (name, spec) in grams.items():
            x = outs[name]
            g = rec.grams.get(key)
            for half, part_mask, part in halves(mask, x):
                rows = spec.rows(part, part_mask)
                if g is None:
                    d = rows.shape[1] + 1
                    g = rec.grams[key] = Gram([np.zeros((d, d)), np.zeros((d, d))], [0, 0])
                _accumulate(g, half, rows)
        rec.batches += 1
        rec.samples += next(iter(feeds.values())).shape[0]
    if rec.batches == 0:
        raise OnnxPruneError("calibration data produced no batch")
    return rec


def _accumulate(g: Gram, half: int, rows: np.ndarray, chunk: int = 8192) -> None:
    d = rows.shape[1]
    m = g.parts[half]
    for start in range(0, rows.shape[0], chunk):
        r = rows[start:start + chunk].astype(np.float64)
        m[:d, :d] += r.T @ r
        s = r.sum(axis=0)
        m[:d, d] += s
        m[d, :d] += s
        m[d, d] += r.shape[0]
    g.rows_parts[half] += rows.shape[0]


def consumer_inputs(an) -> dict[str, int]:
    """Tensors read by consumer-side ("in") weights, with their channel axis."""
    out: dict[str, int] = {}
    for p in an.params:
        if p.role != "in":
            continue
        name = inp(p.node, 0)
        c = an.chan.get(name)
        if c is not None:
            out[name] = c.axis
    return out


def record_for(an, calibration, *, with_grams: Iterable[int] = (), zero_tol: float = 0.0,
               stats: bool = True) -> Recording:
    """Record statistics of every consumer input of ``an`` (and Grams of the given consumer nodes).

    ``stats=False`` records the Grams only (a second pass after the statistics were taken).
    """
    grams = {}
    for i in with_grams:
        spec = gram_spec_for(an.model, i)
        if spec is not None:
            grams[an.model.node_name(i)] = (inp(i, 0), spec)
    return record(an.model, calibration, consumer_inputs(an) if stats else {}, grams=grams, zero_tol=zero_tol)
