"""Recurrent models exported by both torch exporters, pruned at ``--ratio``: validity, hidden size,
MACs, the oracle, ratio 0.

Models (random weights, seeded; defined in ``tests/test_recurrent_torch.py``): a BiLSTM tagger,
a GRU classifier, a CNN + BiLSTM text recogniser with a CTC head.

Usage: python scripts/bench_recurrent.py [--ratio 0.5] [--json out.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _models():
    spec = importlib.util.spec_from_file_location("rt", os.path.join(ROOT, "tests", "test_recurrent_torch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    import onnxprune
    from onnxprune.testing import check_oracle, run

    rt = _models()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cls, shape, dynamic, op, hidden) in rt.MODELS.items():
            for exporter in ("torchscript", "dynamo"):
                torch.manual_seed(1)
                proto = rt._export(cls(), torch.randn(*shape), exporter, dynamic)
                feeds = rt._feeds(shape)
                res = check_oracle(proto, ratio=args.ratio, feeds=feeds)
                node = next(n for n in res.pruned.graph.node if n.op_type == op)
                kept = onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "hidden_size"))
                zero = check_oracle(proto, ratio=0.0, feeds=feeds)
                exact = all(np.array_equal(a, b) for a, b in zip(run(proto, feeds), run(zero.pruned, feeds)))
                src, dst = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "p.onnx")
                onnx.save(proto, src)
                r = onnxprune.prune(src, dst, ratio=args.ratio)
                rows.append({"model": name, "exporter": exporter, "hidden": f"{hidden} -> {kept}",
                             "macs_kept": r.after.macs / r.before.macs, "oracle_rel_err": res.max_err / max(res.scale, 1),
                             "ratio0_exact": exact, "checker": True})
    print(f"{'model':<16} {'exporter':<12} {'hidden':<9} {'MACs kept':>9} {'oracle err':>11} {'ratio 0 exact':>13}")
    for r in rows:
        print(f"{r['model']:<16} {r['exporter']:<12} {r['hidden']:<9} {r['macs_kept']:>9.3f} "
              f"{r['oracle_rel_err']:>11.2e} {str(r['ratio0_exact']):>13}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
