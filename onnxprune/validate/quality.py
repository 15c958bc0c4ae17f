"""How close a pruned model's outputs stay to the original's, per output and per kind of output.

Cosine similarity alone misses what a user acts on: a detection map at cosine 0.97 whose
thresholded regions changed, or a classifier whose top-1 flipped. Each output is therefore
also judged by its *decisions*, by the kind read off the original's values:

* ``distribution`` (the last axis sums to 1, e.g. softmax per frame or per sample): top-1
  agreement along the last axis;
* ``probability`` (every value in [0, 1], e.g. a sigmoid detection map, per-frame voice
  probabilities): agreement of the decisions at ``threshold`` as intersection over union of
  the positive sets (the agreement fraction when the original has no positive);
* ``classifier`` (2-D ``[N, classes]`` made by a final Gemm/MatMul/Softmax): top-1 agreement;
* ``values`` (anything else, e.g. embeddings, features): cosine and relative error only.

Cosine is the mean over samples of the per-sample cosine; relative error is
‖a − b‖ / ‖a‖ over the whole output.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["OutputQuality", "output_kind", "measure", "Target"]

_CLASSIFIER_OPS = {"Gemm", "MatMul", "Softmax", "LogSoftmax", "Add"}
_LAYOUT_OPS = {"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Cast"}


@dataclass(frozen=True)
class OutputQuality:
    name: str
    kind: str
    cosine: float
    rel_error: float
    decision: float | None  # top-1 agreement or thresholded IoU; None for plain values

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "cosine": round(self.cosine, 6),
                "rel_error": round(self.rel_error, 6),
                "decision": None if self.decision is None else round(self.decision, 6)}


def output_kind(a: np.ndarray, producer_op: str | None = None) -> str:
    """The kind of an output from the original model's values (and its producer's op type)."""
    if not np.issubdtype(a.dtype, np.floating) or a.size == 0:
        return "values"
    if a.ndim >= 2 and a.shape[-1] > 1 and np.all(a >= 0) and np.allclose(a.sum(axis=-1), 1.0, atol=1e-3):
        return "distribution"
    if np.all(a >= 0) and np.all(a <= 1) and float(a.max()) > float(a.min()):
        return "probability"
    if a.ndim == 2 and a.shape[1] > 1 and producer_op in _CLASSIFIER_OPS:
        return "classifier"
    return "values"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(a.shape[0], -1).astype(np.float64) if a.ndim else a.reshape(1, 1).astype(np.float64)
    b = b.reshape(a.shape).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-30))
    return float(np.mean(cos))


def measure(name: str, a: np.ndarray, b: np.ndarray, kind: str, threshold: float = 0.5) -> OutputQuality:
    """Quality of output ``b`` against the original ``a``."""
    if a.shape != b.shape:
        return OutputQuality(name, kind, 0.0, np.inf, 0.0 if kind != "values" else None)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    rel = float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(a64), 1e-30))
    decision = None
    if kind in ("distribution", "classifier"):
        decision = float(np.mean(a.argmax(axis=-1) == b.argmax(axis=-1)))
    elif kind == "probability":
        pa, pb = a > threshold, b > threshold
        union = np.logical_or(pa, pb).sum()
        decision = float(np.logical_and(pa, pb).sum() / union) if pa.any() else float(np.mean(pa == pb))
    return OutputQuality(name, kind, _cosine(a, b), rel, decision)


@dataclass(frozen=True)
class Target:
    """What a pruned model must keep on the check samples.

    ``cosine``: every output's cosine ≥ C and its decisions agree on ≥ C (top-1 agreement or
    thresholded IoU); ``error``: every output's relative L2 error ≤ E and its decisions agree on
    ≥ 1 − E; ``metric``: a callable ``metric(original_outputs, pruned_outputs) -> float`` (lists
    of arrays in output order, higher is better) that must reach ``metric_target``.
    """

    cosine: float | None = None
    error: float | None = None
    metric: Callable | None = None
    metric_target: float | None = None
    threshold: float = 0.5

    def describe(self) -> str:
        if self.metric is not None:
            return f"metric ≥ {self.metric_target:g}"
        if self.cosine is not None:
            return f"cosine ≥ {self.cosine:g} (and decisions agree ≥ {self.cosine:g})"
        return f"relative error ≤ {self.error:g} (and decisions agree ≥ {1 - self.error:g})"

    def check(self, names, kinds, orig: list, new: list) -> tuple[bool, float, list[OutputQuality]]:
        """(met, score: higher is better, per-output measures)."""
        qs = [measure(n, a, b, k, self.threshold) for n, k, a, b in zip(names, kinds, orig, new)]
        if self.metric is not None:
            score = float(self.metric(orig, new))
            return score >= self.metric_target, score, qs
        if self.cosine is not None:
            score = min(min(q.cosine, q.decision if q.decision is not None else 1.0) for q in qs)
            return score >= self.cosine, score, qs
        err = max(q.rel_error for q in qs)
        agree = min((q.decision for q in qs if q.decision is not None), default=1.0)
        return err <= self.error and agree >= 1 - self.error, -max(err, 1 - agree), qs
