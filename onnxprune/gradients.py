"""Gradient records: the file format, loading, and the checks that tie a record to a model.

A record is an ``.npz`` whose arrays are keyed by **ONNX initializer name** plus a statistic:

=============================  =========================================================
key                            content (same shape as the initializer unless noted)
=============================  =========================================================
``<name>::sum_g``              Σ g over calibration batches (g = ∂L/∂w of one batch)
``<name>::sum_g2``             Σ g²  (empirical Fisher diagonal, batch granularity)
``<name>::sum_abs_g``          Σ |g|
``<name>::sum_gw``             Σ g·w (first-order Taylor term)
``<name>::taylor_sq_ax0``      optional, 1-D over axis 0: Σ_batches (Σ_slice g·w)² per slice
``<name>::taylor_sq_ax1``      optional, 1-D over axis 1 (weights of rank ≥ 2), the same
``<name>::act_taylor``         optional, 1-D over the initializer's axis 0 (output channels):
                               Σ |a·∂L/∂a| of the layer's output, summed over batch and space
``__meta__``                   a JSON string (0-d array), see below
=============================  =========================================================

``__meta__`` holds: ``format`` ("onnxprune-gradients/1"), ``batches``, ``samples``, ``loss``,
``clipping`` ({"mode", "max", "clipped_batches"}), ``versions`` (framework, onnx...),
``fingerprints`` ({initializer: fingerprint of its values in the ONNX model}),
``unmapped`` (framework parameters with no initializer), ``health`` (per-parameter gradient-norm
statistics and flags). Any framework can write this format (JAX: ``jax.grad`` per batch, sum in
NumPy; TensorFlow: ``GradientTape``), as long as gradients are transformed onto the ONNX
initializers' layout (transposes, folded BatchNorm: ``g_fused = g / s`` for ``W_fused = W·s``).

The fingerprint is the first 16 hex digits of SHA-256 over the initializer's dtype, shape and
raw little-endian bytes; a record whose fingerprints disagree with the model is refused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from .errors import OnnxPruneError

__all__ = ["GradientRecord", "fingerprint", "STATS", "FORMAT"]

FORMAT = "onnxprune-gradients/1"
STATS = ("sum_g", "sum_g2", "sum_abs_g", "sum_gw")


def fingerprint(value: np.ndarray) -> str:
    a = np.ascontiguousarray(value)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass
class GradientRecord:
    """Accumulated gradient statistics keyed by ONNX initializer name."""

    stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def batches(self) -> int:
        return int(self.meta.get("batches", 0))

    def get(self, name: str, stat: str) -> np.ndarray | None:
        return self.stats.get(name, {}).get(stat)

    def save(self, path: str) -> None:
        import os

        arrays = {f"{name}::{k}": v for name, d in self.stats.items() for k, v in d.items()}
        arrays["__meta__"] = np.array(json.dumps(self.meta))
        import tempfile

        from .outputs import check_output, deferred_signals

        path = check_output(path, "the gradient record")
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp.npz", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, **arrays)
            with deferred_signals():
                os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str) -> GradientRecord:
        from .validate.inputs import read_npz

        data = read_npz(path, "the gradient record", "onnxprune.torch.record_gradients(...) (an .npz)")
        if "__meta__" not in data:
            raise OnnxPruneError(f"{path}: no __meta__ entry; not an onnxprune gradient record")
        try:
            meta = json.loads(str(data["__meta__"]))
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise OnnxPruneError(f"{path}: its __meta__ entry is not a JSON object; not an onnxprune gradient record")
        if meta.get("format") != FORMAT:
            raise OnnxPruneError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        rec = cls(meta=meta)
        for key in data:
            if key == "__meta__":
                continue
            name, sep, stat = key.rpartition("::")
            if not sep:
                raise OnnxPruneError(f"{path}: entry '{key}' is not '<initializer>::<statistic>'")
            if data[key].dtype.kind not in "fiu":
                raise OnnxPruneError(f"{path}: entry '{key}' has dtype {data[key].dtype}, expected numbers")
            rec.stats.setdefault(name, {})[stat] = data[key]
        bad = [f"{n}::{k}" for n, d in rec.stats.items() for k, v in d.items() if not np.isfinite(v).all()]
        if bad:
            raise OnnxPruneError(f"{path}: non-finite gradients in {', '.join(bad[:5])}"
                                 f"{' …' if len(bad) > 5 else ''}; record again with gradient clipping")
        return rec

    def check_model(self, model) -> None:
        """Refuse a record made for another model: names, shapes and value fingerprints must match.

        Raises:
            OnnxPruneError: naming the first tensors that differ.
        """
        missing, shapes, prints = [], [], []
        fps = self.meta.get("fingerprints", {})
        for name, d in self.stats.items():
            value = model.const(name)
            if value is None:
                missing.append(name)
                continue
            for k, v in d.items():
                want = value.shape if k in STATS else (value.shape[1],) if k == "taylor_sq_ax1" else \
                    (value.shape[0] if value.ndim else 1,)
                if v.shape != want:
                    shapes.append(f"{name}::{k} {list(v.shape)} vs {list(want)}")
            if name in fps and fps[name] != fingerprint(value):
                prints.append(name)
        if missing:
            raise OnnxPruneError(f"gradient record names initializers the model lacks: {', '.join(missing[:5])}; "
                                 "was it recorded for another model?")
        if shapes:
            raise OnnxPruneError(f"gradient record shapes differ from the model: {'; '.join(shapes[:3])}")
        if prints:
            raise OnnxPruneError(f"gradient record was made for different weights: fingerprint of "
                                 f"{', '.join(prints[:5])} differs; record gradients for this model")
        if not fps:
            raise OnnxPruneError("gradient record has no fingerprints; it cannot be checked against the model")
