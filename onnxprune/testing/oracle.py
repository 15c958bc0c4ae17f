"""The correctness oracle for structural pruning.

Removing a set of channels structurally must give the same outputs, to float tolerance, as the
original model with those channels' *consumer-side* slices zeroed: every weight axis that reads
the channels (the next Conv's input slices, a Gemm's columns after a Flatten, a MatMul's rows).
Zeroing the producer instead is not equivalent: a BatchNorm bias leaks through the activation.
"""
from __future__ import annotations

import numpy as np
import onnx

from .._ir import Model
from ..analysis import Analysis

__all__ = ["zero_consumers", "run", "random_feeds"]


def zero_consumers(original: onnx.ModelProto, an: Analysis, keep_atom: np.ndarray) -> onnx.ModelProto:
    """A copy of ``original`` with the removed channels' consumer-side weights set to zero."""
    copy = onnx.ModelProto()
    copy.CopyFrom(original)
    m = Model(copy)
    for p in an.params:
        if p.role != "in":
            continue
        drop = ~an.keep_mask(p.labels, keep_atom)
        if not drop.any():
            continue
        w = np.array(m.const(p.tensor), copy=True)
        idx = [slice(None)] * w.ndim
        idx[p.axis] = drop
        w[tuple(idx)] = 0
        m.set_const(p.tensor, w)
    return copy


def random_feeds(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in v.type.tensor_type.shape.dim]
        feeds[v.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)
