"""Benchmark: hidden-size (residual stream) pruning, ``--hidden-ratio 0.25``, on MiniLM and a small ViT.

MiniLM (all-MiniLM-L6-v2, both exporters; scripts/export_minilm.py): calibration = the first half
of its sentences, evaluation = the other half (never calibrated on). Variants: magnitude ranking
with the data-free norm rescale; activation ranking + least-squares norm refits on the
calibration half (``calib``); the same without norm compensation (``calib, no comp``). Reported:
mean/min cosine of pruned vs original sentence embeddings on the held-out sentences, MACs and
parameter ratios (onnxprune's counter at the evaluation length).

ViT (HF ViTConfig: hidden 64, 2 layers, patch 8, image 32, random weights; dynamo export):
calibration and evaluation are different seeded N(0,1) image batches; reported: output cosine
(last_hidden_state, flattened per image).

Usage: python scripts/bench_hidden.py [--out DIR] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

VARIANTS = (("magnitude", {}), ("calib", {"calib": True}), ("calib, no comp", {"calib": True, "hidden_compensate": False}))


def run_variants(name: str, src: str, ev: dict, calib: str, out_dir: str, ratio: float) -> list[dict]:
    from _devset_eval import embedding_cosines

    import onnxprune

    rows = []
    for label, kw in VARIANTS:
        out = os.path.join(out_dir, f"{os.path.basename(src)[:-5]}_hidden_{label.replace(' ', '').replace(',', '_')}.onnx")
        kw = dict(kw)
        if kw.pop("calib", False):
            kw["calib"] = calib
        res = onnxprune.prune(src, out, hidden_ratio=ratio, remove_dead=False, **kw)
        cos = embedding_cosines(src, out, ev)
        hid = res.hidden[0] if res.hidden else {}
        row = {"model": name, "variant": label, "hidden": f"{hid.get('channels')}->{hid.get('kept')}",
               "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
               "macs_ratio": res.after.macs / res.before.macs, "params_ratio": res.after.params / res.before.params}
        rows.append(row)
        print(f"{name:<18} {label:<15} {row['hidden']:>8} {row['cosine_mean']:>8.4f} {row['cosine_min']:>8.4f} "
              f"{row['macs_ratio']:>7.3f} {row['params_ratio']:>7.3f}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "onnxprune-hidden"))
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--json")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    print(f"{'model':<18} {'variant':<15} {'hidden':>8} {'cosine':>8} {'min cos':>8} {'MACs':>7} {'params':>7}")
    rows = []
    from export_minilm import export_all

    mdir = os.path.join(a.out, "minilm")
    paths = export_all(mdir)
    ev = dict(np.load(os.path.join(mdir, "eval.npz")))
    for exporter, src in paths.items():
        rows += run_variants(f"minilm/{exporter}", src, ev, os.path.join(mdir, "calib.npz"), a.out, a.ratio)

    import corpus

    src = os.path.join(a.out, "vit_dynamo.onnx")
    if not os.path.exists(src):
        corpus.export(corpus.Spec("vit", "hf", corpus.hf("vit")), "dynamo", src)
    rng = np.random.default_rng(1)
    np.savez(os.path.join(a.out, "vit_calib.npz"), pixel_values=rng.standard_normal((32, 3, 32, 32)).astype(np.float32))
    ev = {"pixel_values": np.random.default_rng(2).standard_normal((32, 3, 32, 32)).astype(np.float32)}
    rows += run_variants("vit/dynamo", src, ev, os.path.join(a.out, "vit_calib.npz"), a.out, a.ratio)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
