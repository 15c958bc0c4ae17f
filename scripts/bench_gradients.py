"""Benchmark: gradient criteria vs magnitude, one-shot (no recovery), at equal FLOPs reduction.

Models (both trained on scikit-learn's digits, judged on its held-out split):
* ``cnn``: the shipped models/digits_cnn.onnx (weights loaded back into its torch module);
* ``mlp``: 64 → 256 → 128 → 10 ReLU MLP trained here (seed 0, 40 epochs), exported with the
  dynamo exporter (so the mapping is exercised on a real export).

Gradients are recorded with ``onnxprune.torch.record_gradients`` on the 256 calibration images
of models/digits_calib.npz (training images, cross-entropy with their labels, batches of 16).
For each model and target (fraction of FLOPs kept: 0.7 and 0.5) and criterion (l2, taylor,
fisher, hybrid), ``onnxprune.prune`` makes a one-shot pruned model; top-1 accuracy is printed
side by side, then averaged per criterion.

Usage: pip install torch==2.13.0 scikit-learn onnxscript && python scripts/bench_gradients.py
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
CRITERIA = ("l2", "taylor", "fisher", "hybrid")
TARGETS = (0.7, 0.5)


def train_mlp(seed: int = 0):
    import torch
    import torch.nn as nn
    from train_digits_cnn import load_split

    torch.manual_seed(seed)
    xtr, xte, ytr, yte = load_split()
    xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    m = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(40):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(m(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval(), xte, yte


def accuracy(path: str, x: np.ndarray, y: np.ndarray) -> float:
    from onnxprune.validate.runtime import make_session

    s = make_session(path, "cpu")
    return float(np.mean(s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1) == y))


def main() -> int:
    import torch
    from train_digits_cnn import build, load_from_onnx

    import onnxprune
    from onnxprune.torch import export, record_gradients
    from onnxprune.validate.runtime import use_global_thread_pool

    use_global_thread_pool()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = tempfile.mkdtemp(prefix="onnxprune-grad-")
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # models and gradients are scratch
    calib = np.load(os.path.join(ROOT, "models", "digits_calib.npz"))
    test = np.load(os.path.join(ROOT, "models", "digits_test.npz"))
    cases = {}
    cnn = load_from_onnx(build(), os.path.join(ROOT, "models", "digits_cnn.onnx"))
    cases["cnn"] = (cnn, os.path.join(ROOT, "models", "digits_cnn.onnx"), calib["input"], test["input"], test["labels"])
    mlp, xte, yte = train_mlp()
    mlp_path = os.path.join(work, "digits_mlp.onnx")
    export(mlp, torch.zeros(2, 64), mlp_path, exporter="dynamo")
    cases["mlp"] = (mlp, mlp_path, calib["input"].reshape(len(calib["input"]), -1), xte, yte)
    results, by_crit = [], {c: [] for c in CRITERIA}
    for name, (module, path, xc, xe, ye) in cases.items():
        loader = [(torch.from_numpy(xc[i:i + 16]), torch.from_numpy(calib["labels"][i:i + 16]))
                  for i in range(0, len(xc), 16)]
        rec = record_gradients(module, loader, onnx_path=path, loss="cross-entropy")
        gpath = os.path.join(work, f"{name}.grads.npz")
        rec.save(gpath)
        print(f"\n{name}: {path}, original accuracy {accuracy(path, xe, ye):.4f}; "
              f"{len(rec.mapping)} parameters mapped, unmapped: {rec.unmapped or 'none'}")
        print(f"  {'FLOPs kept':>10}" + "".join(f"{c:>9}" for c in CRITERIA) + "   (achieved FLOPs)")
        for target in TARGETS:
            row, flops = {}, None
            for crit in CRITERIA:
                out = os.path.join(work, f"{name}-{crit}-{target}.onnx")
                res = onnxprune.prune(path, out, criterion=crit, target_flops=target, gradients=gpath)
                row[crit] = accuracy(out, xe, ye)
                flops = res.after.flops / res.before.flops
                by_crit[crit].append(row[crit])
                results.append({"model": name, "target_flops": target, "criterion": crit, "accuracy": row[crit],
                                "achieved_flops": flops})
            print(f"  {target:>10}" + "".join(f"{row[c]:>9.4f}" for c in CRITERIA) + f"   ({flops:.3f})")
    print("\nmean accuracy over models and targets: " +
          ", ".join(f"{c} {np.mean(v):.4f}" for c, v in by_crit.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
