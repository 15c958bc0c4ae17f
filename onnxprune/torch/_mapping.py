"""Map torch parameters onto ONNX initializers, by name *and* by value.

Exporters rename and transform weights (measured with torch 2.13):

* dynamo (default): BatchNorm folded into the Conv, the Conv weight keeps its torch name but
  holds the fused values — matching by name alone would be silently wrong; Linear on 3-D inputs
  becomes MatMul with a pre-transposed weight named ``val_N``; all-zero biases may be dropped;
* dynamo with ``optimize=False``: every name kept, BatchNorm unfused;
* TorchScript: fused Convs renamed ``onnx::Conv_N``, MatMul weights ``onnx::MatMul_N`` (transposed);
  identical initializers deduplicated behind ``Identity`` nodes.

So every candidate is verified by value: an exact fingerprint match (as is, or transposed for
2-D weights), or — for a Conv/Linear followed by a BatchNorm — a close match of the folded values
``W·s`` (``s = γ/√(var+ε)`` per output channel) and ``(b − μ)·s + β``. Gradients of a folded
weight transform as ``g_fused = g / s`` (so Σg·w is unchanged), a folded bias takes β's gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..gradients import fingerprint

__all__ = ["Mapped", "map_parameters"]


@dataclass(frozen=True)
class Mapped:
    """One torch parameter mapped onto one ONNX initializer."""

    param: str
    onnx: str
    transform: str  # identity | transpose | bn_fold | bn_bias | rnn_W | rnn_R | rnn_B
    scale: np.ndarray | None = None  # per output channel, for bn_fold
    bn: str | None = None  # the BatchNorm module folded in
    parts: tuple[str, ...] = ()  # rnn_*: the torch parameters stacked (per direction; B: ih, hh pairs)
    gate_perm: tuple[int, ...] = ()  # rnn_*: torch gate block order -> ONNX (LSTM ifgo -> iofc)


# torch gate order -> ONNX gate order: LSTM (i, f, g, o) -> (i, o, f, c), GRU (r, z, n) -> (z, r, h)
RNN_GATE_PERM = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}


def rnn_rows(v: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    """Torch's gate blocks along axis 0 in ONNX's order."""
    h = v.shape[0] // len(perm)
    return np.concatenate([v[g * h:(g + 1) * h] for g in perm], axis=0)


def _rnn_layouts(module, params: dict[str, np.ndarray]):
    """(transform, torch names, ONNX value, gate order) for each nn.LSTM/GRU/RNN layer's W, R, B."""
    import torch.nn as nn

    kinds = {nn.LSTM: "LSTM", nn.GRU: "GRU", nn.RNN: "RNN"}
    for mname, mod in module.named_modules():
        kind = kinds.get(type(mod))
        if kind is None or getattr(mod, "proj_size", 0):
            continue
        perm = RNN_GATE_PERM[kind]
        prefix = f"{mname}." if mname else ""
        for layer in range(mod.num_layers):
            sfx = [f"_l{layer}", f"_l{layer}_reverse"][:2 if mod.bidirectional else 1]
            w = [f"{prefix}weight_ih{s}" for s in sfx]
            r = [f"{prefix}weight_hh{s}" for s in sfx]
            if all(n in params for n in w + r):
                yield "rnn_W", w, np.stack([rnn_rows(params[n], perm) for n in w]), perm
                yield "rnn_R", r, np.stack([rnn_rows(params[n], perm) for n in r]), perm
            b = [n for s in sfx for n in (f"{prefix}bias_ih{s}", f"{prefix}bias_hh{s}")]
            if all(n in params for n in b):
                value = np.stack([np.concatenate([rnn_rows(params[b[2 * d]], perm), rnn_rows(params[b[2 * d + 1]], perm)])
                                  for d in range(len(sfx))])
                yield "rnn_B", b, value, perm


def _float_consts(model) -> dict[str, np.ndarray]:
    out = {}
    for name in list(model.graph.initializers) + [n.outputs[0].name for n in model.constant_nodes()]:
        v = model.const(name)
        if v is not None and v.dtype.kind == "f" and v.size > 1:
            out[name] = v
    return out


def _bn_followers(module) -> dict[str, tuple[str, object]]:
    """Conv/Linear module name -> (BatchNorm name, module) when the BN directly follows it.

    Uses registration order (as nn.Sequential and most blocks define layers), verified later by
    value: a wrong guess simply finds no matching initializer.
    """
    import torch.nn as nn

    mods = list(module.named_modules())
    out = {}
    for (name, m), (bname, b) in zip(mods, mods[1:]):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and isinstance(
                b, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and b.num_features == m.weight.shape[0]:
            out[name] = (bname, b)
    return out


def map_parameters(module, model) -> tuple[list[Mapped], list[str]]:
    """Map ``module``'s parameters onto ``model``'s (an ``_ir.Model``) initializers.

    Returns:
        (mapped, unmapped parameter names with the reason).
    """
    consts = _float_consts(model)
    by_print: dict[str, list[str]] = {}
    by_shape: dict[tuple, list[str]] = {}
    for name, v in consts.items():
        by_print.setdefault(fingerprint(v.astype(np.float32, copy=False)), []).append(name)
        by_shape.setdefault(v.shape, []).append(name)
    params = {n: p.detach().cpu().numpy().astype(np.float32) for n, p in module.named_parameters()}
    followers = _bn_followers(module)
    mapped: list[Mapped] = []
    unmapped: list[str] = []
    taken: set[str] = set()

    def pick(names: list[str], prefer: str) -> str | None:
        free = [n for n in names if n not in taken]
        if not free:
            return None
        return prefer if prefer in free else free[0]

    rnn_params: set[str] = set()
    for transform, names, value, perm in _rnn_layouts(module, params):
        hit = pick(by_print.get(fingerprint(value.astype(np.float32)), []), names[0])
        rnn_params.update(names)
        if hit is None:
            unmapped.append(f"{', '.join(names)}: no initializer holds them stacked in ONNX's recurrent layout")
            continue
        mapped.append(Mapped(names[0], hit, transform, parts=tuple(names), gate_perm=perm))
        taken.add(hit)
    folded_bn: set[str] = set()
    for pname, w in params.items():
        if pname in rnn_params:
            continue
        owner = pname.rsplit(".", 1)[0] if "." in pname else ""
        leaf = pname.rsplit(".", 1)[-1]
        hit = pick(by_print.get(fingerprint(w), []), pname)
        if hit is not None:
            mapped.append(Mapped(pname, hit, "identity"))
            taken.add(hit)
            continue
        if w.ndim == 2:
            hit = pick(by_print.get(fingerprint(np.ascontiguousarray(w.T)), []), pname)
            if hit is not None:
                mapped.append(Mapped(pname, hit, "transpose"))
                taken.add(hit)
                continue
        if owner in followers and leaf in ("weight", "bias"):
            bname, bn = followers[owner]
            s = (bn.weight.detach().numpy() / np.sqrt(bn.running_var.detach().numpy() + bn.eps)).astype(np.float32)
            if leaf == "weight":
                target = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
                cands = by_shape.get(target.shape, [])
                if w.ndim == 2:
                    cands = cands + [c for c in by_shape.get(target.T.shape, []) if c not in cands]
                for c in cands:
                    v = consts[c]
                    for form, t in (("bn_fold", target), ("bn_fold_t", target.T if w.ndim == 2 else None)):
                        if t is not None and c not in taken and v.shape == t.shape and \
                                np.allclose(v, t, rtol=1e-4, atol=1e-6 * float(np.abs(t).max() + 1e-12)):
                            mapped.append(Mapped(pname, c, form, s, bname))
                            taken.add(c)
                            folded_bn.add(bname)
                            break
                    else:
                        continue
                    break
                else:
                    unmapped.append(f"{pname}: no initializer holds its values (as is, transposed, or folded with {bname})")
                continue
            b = w
            mu = bn.running_mean.detach().numpy()
            target = ((b - mu) * s + bn.bias.detach().numpy()).astype(np.float32)
            c = next((c for c in by_shape.get(target.shape, []) if c not in taken and
                      np.allclose(consts[c], target, rtol=1e-4, atol=1e-5)), None)
            if c is not None:
                mapped.append(Mapped(pname, c, "bn_bias", s, bname))
                taken.add(c)
                continue
        unmapped.append(f"{pname}: no initializer holds its values (as is or transposed)")
    # a BatchNorm folded into a conv without bias: its β became the fused bias
    for owner, (bname, bn) in followers.items():
        if bname not in folded_bn or f"{owner}.bias" in params:
            continue
        s = (bn.weight.detach().numpy() / np.sqrt(bn.running_var.detach().numpy() + bn.eps)).astype(np.float32)
        target = (bn.bias.detach().numpy() - bn.running_mean.detach().numpy() * s).astype(np.float32)
        c = next((c for c in by_shape.get(target.shape, []) if c not in taken and
                  np.allclose(consts[c], target, rtol=1e-4, atol=1e-5)), None)
        if c is not None:
            mapped.append(Mapped(f"{bname}.bias", c, "bn_bias", s, bname))
            taken.add(c)
            unmapped[:] = [u for u in unmapped if not u.startswith(f"{bname}.bias:")]
    for bname in folded_bn:  # γ/β of a folded BatchNorm live on inside the conv
        unmapped[:] = [u if not u.startswith((f"{bname}.weight:", f"{bname}.bias:"))
                       else u.split(":")[0] + ": folded into the preceding conv by the exporter" for u in unmapped]
    return mapped, unmapped
