"""Gradient recorder: a torch calibration run, accumulated onto the ONNX model's initializers.

    from onnxprune.torch import record_gradients
    rec = record_gradients(model, calib_loader, onnx_path="model.onnx", loss="pseudo-label",
                           clip_grad_norm=1.0)
    rec.save("model.grads.npz")     # then: onnxprune prune model.onnx --gradients model.grads.npz ...

``calib_loader`` yields input tensors, tuples ``(inputs, labels)``, or tuples of several inputs
with labels last when ``has_labels=True``. If ``onnx_path`` does not exist, the model is exported
there first (``exporter="dynamo"`` or ``"torchscript"``); otherwise the existing file is matched
against the model by value (see ``_mapping``).

Per parameter the recorder keeps Σg, Σg², Σ|g| (and so Σg·w = w·Σg) over batches (g: the batch gradient after
clipping), and per output channel of Conv/Linear/BatchNorm layers Σ|a·∂L/∂a| through hooks; no
per-sample tensor is stored. Losses: ``cross-entropy`` (labels required), ``pseudo-label`` (the
model's own argmax), ``fisher`` (labels sampled from the model's softmax: the true Fisher at
batch granularity), or a callable ``loss(outputs, labels_or_None) -> scalar``. BatchNorm and
dropout run in eval mode unless ``train_mode=True``.

Requires torch (``pip install onnxprune[torch]``); the rest of onnxprune never imports it.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from ..errors import OnnxPruneError
from ..gradients import FORMAT, GradientRecord, fingerprint
from ._mapping import Mapped, map_parameters

__all__ = ["record_gradients", "GradientRecording", "export", "map_parameters"]


@dataclass
class GradientRecording:
    """What :func:`record_gradients` returns: the record keyed by ONNX names, and how it mapped."""

    record: GradientRecord
    mapping: list[Mapped]
    unmapped: list[str]
    onnx_path: str
    health: dict = field(default_factory=dict)

    def save(self, path: str) -> None:
        self.record.save(path)

    def report(self) -> str:
        m = self.record.meta
        lines = [f"{m['batches']} batches, {m['samples']} samples, loss {m['loss']}, clipping {m['clipping']}",
                 f"{len(self.mapping)} parameters mapped onto {self.onnx_path}:"]
        for x in self.mapping:
            lines.append(f"  {x.param} -> {x.onnx} ({x.transform}{' with ' + x.bn if x.bn else ''})")
        if self.unmapped:
            lines.append(f"{len(self.unmapped)} not mapped:")
            lines.extend(f"  {u}" for u in self.unmapped)
        flagged = {k: v for k, v in self.health.items() if v.get("flag")}
        if flagged:
            lines.append("gradient health:")
            lines.extend(f"  {k}: {v['flag']} (mean norm {v['mean']:.3g}, max {v['max']:.3g})" for k, v in flagged.items())
        return "\n".join(lines)


def export(module, example, path: str, *, exporter: str = "dynamo", input_names: list[str] | None = None,
           dynamic_axes: dict[int, str] | None = None, output_names: list[str] | None = None) -> None:
    """Export ``module`` to ``path`` with torch's exporter.

    Args:
        dynamic_axes: axis -> name of the dims that vary, applied to every input of enough rank
            (default ``{0: "batch"}``). Examples should be ≥ 2 on those axes (dynamo specialises 1).

    The IR version is kept ≤ 10, which onnxruntime accepts.
    """
    import io

    import onnx
    import torch

    from ..outputs import check_output, write_text

    path = check_output(path, "the exported model")
    args = example if isinstance(example, tuple) else (example,)
    names = input_names or [f"input{i}" if len(args) > 1 else "input" for i in range(len(args))]
    axes = dynamic_axes or {0: "batch"}
    if exporter == "dynamo":
        dims = {name: torch.export.Dim(name) for name in set(axes.values())}
        dyn = tuple({k: dims[v] for k, v in axes.items() if k < a.ndim} or None for a in args)
        prog = torch.onnx.export(module, args, dynamo=True, verbose=False, input_names=names,
                                 output_names=output_names, dynamic_shapes=dyn)
        proto = prog.model_proto
    elif exporter == "torchscript":
        buf = io.BytesIO()
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=17, input_names=names,
                          output_names=output_names,
                          dynamic_axes={n: {k: v for k, v in axes.items() if k < a.ndim}
                                        for n, a in zip(names, args) if a.ndim})
        proto = onnx.load_from_string(buf.getvalue())
    else:
        raise OnnxPruneError(f"unknown exporter '{exporter}'; use dynamo or torchscript")
    proto.ir_version = min(proto.ir_version, 10)
    write_text(path, proto.SerializeToString(), "the exported model")


def _split(batch, has_labels: bool | None):
    import torch

    if isinstance(batch, torch.Tensor):
        return (batch,), None
    if isinstance(batch, (tuple, list)):
        if has_labels is None:
            has_labels = len(batch) == 2
        if has_labels:
            return tuple(batch[:-1]), batch[-1]
        return tuple(batch), None
    raise OnnxPruneError(f"calibration batches must be tensors or tuples, got {type(batch).__name__}")


def _loss(kind, outputs, labels):
    import torch
    import torch.nn.functional as F

    logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    if callable(kind):
        return kind(outputs, labels)
    if kind == "cross-entropy":
        if labels is None:
            raise OnnxPruneError("loss='cross-entropy' needs labels: yield (inputs, labels), or use "
                                 "loss='pseudo-label' for unlabeled data")
        return F.cross_entropy(logits, labels)
    if kind == "pseudo-label":
        return F.cross_entropy(logits, logits.detach().argmax(dim=-1))
    if kind == "fisher":
        probs = torch.softmax(logits.detach().reshape(-1, logits.shape[-1]), dim=-1)
        sampled = torch.multinomial(probs, 1).reshape(logits.shape[:-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), sampled.reshape(-1))
    raise OnnxPruneError(f"unknown loss '{kind}'; use cross-entropy, pseudo-label, fisher or a callable")


def record_gradients(module, calib_loader: Iterable, *, onnx_path: str, loss: str | Callable = "cross-entropy",
                     clip_grad_norm: float | None = None, clip_grad_value: float | None = None,
                     train_mode: bool = False, has_labels: bool | None = None, exporter: str = "dynamo",
                     max_batches: int | None = None, activation_taylor: bool = True) -> GradientRecording:
    """Run calibration batches through ``module`` and accumulate gradient statistics.

    Raises:
        OnnxPruneError: empty calibration data, non-finite gradients (naming the parameters),
            missing labels for cross-entropy, an ONNX file that does not match the model.
    """
    import onnx
    import torch
    import torch.nn as nn

    from ..graph import load_model

    if clip_grad_norm is not None and clip_grad_value is not None:
        raise OnnxPruneError("choose one of clip_grad_norm and clip_grad_value")
    module.train(train_mode)
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    acc = {n: {k: torch.zeros_like(p, dtype=torch.float64) for k in ("sum_g", "sum_g2", "sum_abs_g")}
           for n, p in params.items()}
    for n, p in params.items():  # Σ_batches (Σ_slice g·w)² per slice of axis 0 and axis 1 (Molchanov)
        acc[n]["taylor_sq_ax0"] = torch.zeros(p.shape[0] if p.ndim else 1, dtype=torch.float64)
        if p.ndim >= 2:
            acc[n]["taylor_sq_ax1"] = torch.zeros(p.shape[1], dtype=torch.float64)
    norms = {n: [0.0, 0.0, float("inf"), 0.0] for n in params}  # sum, sum of squares, min, max
    act: dict[str, torch.Tensor] = {}
    hooks = []
    if activation_taylor:
        for name, m in module.named_modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
                              nn.BatchNorm3d)):
                axis = -1 if isinstance(m, nn.Linear) else 1

                def fwd(mod, inp, out, name=name, axis=axis):
                    if out.requires_grad:
                        def grad_hook(g, out=out.detach(), name=name, axis=axis):
                            dims = [d for d in range(out.ndim) if d != (axis % out.ndim)]
                            v = (out * g).abs().sum(dim=dims).double()
                            act[name] = act[name] + v if name in act else v
                        out.register_hook(grad_hook)

                hooks.append(m.register_forward_hook(fwd))
    batches = samples = clipped = 0
    example = None
    try:
        for batch in calib_loader:
            if max_batches is not None and batches >= max_batches:
                break
            inputs, labels = _split(batch, has_labels)
            if example is None:
                example = tuple(x[:2] if x.ndim else x for x in inputs)
            module.zero_grad(set_to_none=True)
            out = module(*inputs)
            value = _loss(loss, out, labels)
            value.backward()
            grads = {n: p.grad for n, p in params.items() if p.grad is not None}
            bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
            if bad:
                raise OnnxPruneError(f"non-finite gradients in batch {batches} for {', '.join(bad[:5])}; "
                                     "lower the learning signal, check the inputs, or use clip_grad_value")
            if clip_grad_norm is not None:
                total = float(torch.nn.utils.clip_grad_norm_(list(params.values()), clip_grad_norm))
                clipped += total > clip_grad_norm
            elif clip_grad_value is not None:
                clipped += any(float(g.abs().max()) > clip_grad_value for g in grads.values())
                torch.nn.utils.clip_grad_value_(list(params.values()), clip_grad_value)
            with torch.no_grad():
                for n, p in params.items():
                    if p.grad is None:
                        continue
                    g = p.grad.double()
                    a = acc[n]
                    a["sum_g"] += g
                    a["sum_g2"] += g * g
                    a["sum_abs_g"] += g.abs()
                    gw = g * p.double()
                    if gw.ndim == 0:
                        a["taylor_sq_ax0"] += gw * gw
                    else:
                        a["taylor_sq_ax0"] += gw.reshape(gw.shape[0], -1).sum(1) ** 2
                    if gw.ndim >= 2:
                        a["taylor_sq_ax1"] += gw.transpose(0, 1).reshape(gw.shape[1], -1).sum(1) ** 2
                    gn = float(g.norm())
                    st = norms[n]
                    st[0] += gn
                    st[1] += gn * gn
                    st[2] = min(st[2], gn)
                    st[3] = max(st[3], gn)
            batches += 1
            samples += int(inputs[0].shape[0]) if inputs[0].ndim else 1
    finally:
        for h in hooks:
            h.remove()
    if batches == 0:
        raise OnnxPruneError("the calibration loader yielded no batch; give at least one")
    if not os.path.exists(onnx_path):
        export(module.eval(), example, onnx_path, exporter=exporter)
        module.train(train_mode)
    model = load_model(onnx_path)
    mapped, unmapped = map_parameters(module, model)
    if not mapped:
        raise OnnxPruneError(f"no parameter of the torch model matches an initializer of {onnx_path}; "
                             "is it the same model (and the same weights)?")
    record = GradientRecord()
    health = _health(norms, batches)
    for x in mapped:
        if x.transform.startswith("rnn_"):
            record.stats[x.onnx] = {k: v.astype(np.float32) for k, v in
                                    _assemble_rnn(acc, x, model.const(x.onnx)).items()}
            continue
        a = {k: v.cpu().numpy() for k, v in acc[x.param].items()}
        a = _transform(a, x, model.const(x.onnx))
        owner = x.param.rsplit(".", 1)[0]
        src = x.bn if x.transform in ("bn_fold", "bn_fold_t") else owner
        if x.transform != "bn_bias" and src in act and x.param.endswith("weight"):
            v = act[src].cpu().numpy()
            if v.shape[0] == model.const_shape(x.onnx)[0]:
                a["act_taylor"] = v
        record.stats[x.onnx] = {k: v.astype(np.float32) for k, v in a.items()}
    record.meta = {
        "format": FORMAT, "batches": batches, "samples": samples,
        "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "callable"),
        "clipping": {"mode": "norm" if clip_grad_norm is not None else "value" if clip_grad_value is not None else None,
                     "max": clip_grad_norm if clip_grad_norm is not None else clip_grad_value,
                     "clipped_batches": int(clipped)},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        "fingerprints": {x.onnx: fingerprint(model.const(x.onnx)) for x in mapped},
        "mapping": {x.param: [x.onnx, x.transform] for x in mapped},
        "unmapped": unmapped,
        "health": health,
    }
    return GradientRecording(record, mapped, unmapped, onnx_path, health)


def _assemble_rnn(acc, x: Mapped, onnx_value: np.ndarray) -> dict[str, np.ndarray]:
    """Torch LSTM/GRU/RNN statistics in ONNX's layout: gate blocks reordered, directions stacked
    (``B``: input and hidden biases concatenated per direction).

    ``taylor_sq_ax1`` (per gate row of W/R) sums the per-direction squared row sums: the products
    across directions inside the square are not recorded, an approximation for bidirectional
    layers (exact with one direction).
    """
    from ._mapping import rnn_rows

    stats = {n: {k: v.cpu().numpy().astype(np.float64) for k, v in acc[n].items()} for n in x.parts}
    perm = x.gate_perm
    out = {}
    for k in ("sum_g", "sum_g2", "sum_abs_g"):
        if x.transform == "rnn_B":
            out[k] = np.stack([np.concatenate([rnn_rows(stats[x.parts[2 * d]][k], perm),
                                               rnn_rows(stats[x.parts[2 * d + 1]][k], perm)])
                               for d in range(len(x.parts) // 2)])
        else:
            out[k] = np.stack([rnn_rows(stats[n][k], perm) for n in x.parts])
    if x.transform != "rnn_B":
        out["taylor_sq_ax1"] = sum(rnn_rows(stats[n]["taylor_sq_ax0"], perm) for n in x.parts)
    out["sum_gw"] = onnx_value.astype(np.float64) * out["sum_g"]
    return out


def _transform(a: dict[str, np.ndarray], x: Mapped, onnx_value: np.ndarray) -> dict[str, np.ndarray]:
    """Carry torch-layout statistics onto the ONNX initializer (transpose, BatchNorm fold).

    Weights do not change during calibration, so Σg·w = w·Σg exactly; it is recomputed on the
    ONNX values after the transform (for a fold, g_f·w_f = (g/s)(w·s) = g·w as it should).
    """
    # per-slice Taylor sums are invariant under folding (g_f·w_f = g·w); a transpose swaps the axes
    sq = {k: a[k] for k in ("taylor_sq_ax0", "taylor_sq_ax1") if k in a and a[k].size > 1}
    if x.transform in ("transpose", "bn_fold_t"):
        sq = {{"taylor_sq_ax0": "taylor_sq_ax1", "taylor_sq_ax1": "taylor_sq_ax0"}[k]: v for k, v in sq.items()}
    if x.transform == "identity":
        out = {k: a[k] for k in ("sum_g", "sum_g2", "sum_abs_g")}
    elif x.transform == "transpose":
        out = {k: np.ascontiguousarray(a[k].T) for k in ("sum_g", "sum_g2", "sum_abs_g")}
    elif x.transform == "bn_bias" and x.param.startswith(f"{x.bn}."):
        out = {k: a[k] for k in ("sum_g", "sum_g2", "sum_abs_g")}  # b_f = β − μ·s: ∂b_f/∂β = 1
    else:  # W_f = W·s (per output channel), b_f = (b − μ)·s + β: g_f = g / s
        s = x.scale.astype(np.float64).reshape((-1,) + (1,) * (a["sum_g"].ndim - 1))
        out = {"sum_g": a["sum_g"] / s, "sum_g2": a["sum_g2"] / s**2, "sum_abs_g": a["sum_abs_g"] / np.abs(s)}
        if x.transform == "bn_fold_t":
            out = {k: np.ascontiguousarray(v.T) for k, v in out.items()}
    out["sum_gw"] = onnx_value.astype(np.float64) * out["sum_g"]
    if x.transform != "bn_bias":
        out.update(sq)
    return out


def _health(norms: dict[str, list[float]], batches: int) -> dict:
    means = {n: st[0] / batches for n, st in norms.items()}
    positive = [m for m in means.values() if m > 0]
    median = float(np.median(positive)) if positive else 0.0
    out = {}
    for n, st in norms.items():
        m = means[n]
        flag = ""
        if m == 0:
            flag = "zero gradient"
        elif median and m > 100 * median:
            flag = "exploding"
        elif median and m < 1e-4 * median:
            flag = "vanishing"
        out[n] = {"mean": m, "std": float(np.sqrt(max(st[1] / batches - m * m, 0.0))),
                  "min": st[2], "max": st[3], "flag": flag}
    return out
