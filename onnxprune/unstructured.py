"""Unstructured pruning by recorded gradients: zero single weights, not channels.

Each element of a Conv/ConvTranspose/Gemm/MatMul weight gets a score from the gradient record:
``g`` = mean |∂L/∂w| over calibration batches, or ``gw`` = |w| · mean |∂L/∂w| (the size of the
first-order loss change if that weight were zeroed). Elements below ``threshold``, or the lowest
``ratio`` of them (globally, or per layer), are set to zero.

Honest accounting: zeros in a dense tensor make neither onnxruntime faster nor the ``.onnx``
file smaller; they only help a compressed file (reported as gzip size) or a sparse format and
kernel downstream. The report says so.
"""
from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass

import numpy as np

from .graph import inp, load_model, save_model
from .rules import rule_for
from .errors import OnnxPruneError
from .gradients import GradientRecord

__all__ = ["sparsify", "SparsifyResult"]



@dataclass(frozen=True)
class SparsifyResult:
    output: str
    zeroed: int
    total: int
    per_tensor: dict
    file_bytes: tuple[int, int]
    gzip_bytes: tuple[int, int]

    def summary(self) -> str:
        return (f"zeroed {self.zeroed:,} of {self.total:,} weights ({self.zeroed / max(self.total, 1):.1%}) in "
                f"{len(self.per_tensor)} tensors. Size-only: the file is {self.file_bytes[0]:,} -> "
                f"{self.file_bytes[1]:,} bytes and runs no faster on dense kernels; gzip-compressed "
                f"{self.gzip_bytes[0]:,} -> {self.gzip_bytes[1]:,} bytes. Store it sparse to gain more.")


def _gz(path: str) -> int:
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=6))


def sparsify(path: str, output: str, *, gradients: str | GradientRecord, ratio: float | None = None,
             threshold: float | None = None, by: str = "gw", per_layer: bool = False) -> SparsifyResult:
    """Zero the least important single weights by recorded gradients and write the model."""
    if (ratio is None) == (threshold is None):
        raise OnnxPruneError("give exactly one of ratio and threshold")
    if ratio is not None and not 0 <= ratio < 1:
        raise OnnxPruneError(f"ratio {ratio} must be in [0, 1)")
    if by not in ("g", "gw"):
        raise OnnxPruneError(f"by {by}: use g (|∂L/∂w|) or gw (|w|·|∂L/∂w|)")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise OnnxPruneError(f"threshold {threshold!r}: expected a finite number")
    if os.path.exists(output) and os.path.samefile(path, output):
        raise OnnxPruneError(f"-o {output} is the input model; choose another output path")
    from .outputs import check_output, refuse_input_files

    check_output(output, "the sparsified model")
    m = load_model(path)
    reads = refuse_input_files(output, path, m)
    rec = GradientRecord.load(gradients) if isinstance(gradients, str) else gradients
    rec.check_model(m)
    n = max(rec.batches, 1)
    scores: dict[str, np.ndarray] = {}
    for node in m.graph:
        rule = rule_for(node)
        lay = rule.layout(m, node) if rule is not None else None  # the rule says where the weight is
        if lay is not None and inp(node, lay.weight) and m.is_plain_const(inp(node, lay.weight)):
            name = m.resolve(inp(node, lay.weight))
            d = rec.stats.get(name)
            if d is not None and "sum_abs_g" in d and name not in scores:
                g = d["sum_abs_g"].astype(np.float64) / n
                scores[name] = g if by == "g" else g * np.abs(m.const(name).astype(np.float64))
    if not scores:
        raise OnnxPruneError("the gradient record covers no Conv/Gemm/MatMul weight of this model")
    if threshold is not None:
        cut = {k: threshold for k in scores}
    elif per_layer:
        cut = {k: np.quantile(v, ratio) if ratio > 0 else -1.0 for k, v in scores.items()}
    else:
        allv = np.concatenate([v.ravel() for v in scores.values()])
        q = np.quantile(allv, ratio) if ratio > 0 else -1.0
        cut = {k: q for k in scores}
    from .rewrite.sparsify import zero_elements

    masks = {k: v <= cut[k] if ratio != 0 else np.zeros(v.shape, bool) for k, v in scores.items()}
    zeroed = zero_elements(m, masks)
    save_model(m, output, external_data=True if m.external_data else None, avoid=reads)
    total = sum(v.size for v in scores.values())
    return SparsifyResult(output, sum(zeroed.values()), total, zeroed,
                          (os.path.getsize(path), os.path.getsize(output)), (_gz(path), _gz(output)))
