"""A small GPT-style decoder (causal self-attention), exported with torch's two exporters.

Pre-norm blocks: x + Attn(LN(x)), x + MLP(LN(x)); token + position embeddings; tied-free LM
head. Attention is written out (Q/K/V projections → view [B,S,H,Dh] → transpose → QKᵀ/√Dh →
causal mask → softmax → ·V → transpose → view [B,S,H·Dh] → output projection), with options:

* ``fused_qkv``: one projection to 3·D split into Q, K, V;
* ``kv_heads``: grouped-query attention (K/V heads shared by ``heads // kv_heads`` query heads);
* ``mlp="swiglu"``: gated MLP ``down(silu(gate(x)) * up(x))`` instead of ``GELU``.

Usage: python scripts/gpt_decoder.py --out /tmp/gpt [--fused-qkv] [--kv-heads 2] [--mlp swiglu]
writes gpt_dynamo.onnx and gpt_torchscript.onnx (random weights, seed 0; input ``input`` int64
[batch, seq]).
"""
from __future__ import annotations

import argparse
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, fused_qkv: bool):
        super().__init__()
        self.heads, self.kv_heads, self.dh = heads, kv_heads, dim // heads
        self.fused = fused_qkv
        kv_dim = kv_heads * self.dh
        if fused_qkv:
            self.qkv = nn.Linear(dim, dim + 2 * kv_dim)
        else:
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, kv_dim), nn.Linear(dim, kv_dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x):
        b, s, d = x.shape
        if self.fused:
            q, k, v = self.qkv(x).split([d, self.kv_heads * self.dh, self.kv_heads * self.dh], dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.view(b, s, self.heads, self.dh).transpose(1, 2)
        k = k.view(b, s, self.kv_heads, self.dh).transpose(1, 2)
        v = v.view(b, s, self.kv_heads, self.dh).transpose(1, 2)
        if self.kv_heads != self.heads:
            rep = self.heads // self.kv_heads
            k = k[:, :, None].expand(b, self.kv_heads, rep, s, self.dh).reshape(b, self.heads, s, self.dh)
            v = v[:, :, None].expand(b, self.kv_heads, rep, s, self.dh).reshape(b, self.heads, s, self.dh)
        att = q @ k.transpose(-2, -1) / math.sqrt(self.dh)
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool, device=x.device), diagonal=1)
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, s, d)
        return self.o(y)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "swiglu":
            self.gate, self.up, self.down = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        else:
            self.fc, self.proj = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        if self.kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, kv_heads, fused_qkv, mlp):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, kv_heads, fused_qkv)
        self.mlp = MLP(dim, 4 * dim, mlp)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab=256, dim=64, heads=8, kv_heads=None, layers=2, seq=32, fused_qkv=False, mlp="gelu"):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, kv_heads or heads, fused_qkv, mlp) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        s = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(s, device=idx.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def build(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    m = GPT(**kw).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so the oracle is not vacuous
        for p in m.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def export_both(model: nn.Module, out: str, batch: int = 2, seq: int = 16) -> dict[str, str]:
    from onnxprune.torch import export

    os.makedirs(out, exist_ok=True)
    example = torch.randint(0, 256, (batch, seq))
    paths = {}
    for exporter in ("dynamo", "torchscript"):
        paths[exporter] = os.path.join(out, f"gpt_{exporter}.onnx")
        export(model, example, paths[exporter], exporter=exporter)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/onnxprune-gpt")
    ap.add_argument("--fused-qkv", action="store_true")
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--mlp", default="gelu", choices=("gelu", "swiglu"))
    a = ap.parse_args()
    paths = export_both(build(fused_qkv=a.fused_qkv, kv_heads=a.kv_heads, mlp=a.mlp), a.out)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))


if __name__ == "__main__":
    main()
