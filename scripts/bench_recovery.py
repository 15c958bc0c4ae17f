"""Benchmark: criteria × recovery at 30% and 50% FLOPs reduction, side by side.

Models:
* ``digits``: the shipped trained CNN; calibration = models/digits_calib.npz (training images),
  judged by top-1 accuracy on models/digits_test.npz (the held-out split, never calibrated on);
* ``resnet``: the generated ResNet-18-style model (random weights, 64×64), calibration = 64 seeded
  Gaussian inputs, judged by cosine similarity of its outputs to the original's on 64 *other*
  inputs (top-1 agreement too);
* ``minilm``: all-MiniLM-L6-v2 (TorchScript export, scripts/export_minilm.py), FFN neurons and
  attention heads; calibration = 32 English sentences, judged by the cosine similarity of
  sentence embeddings on 32 other sentences. (FLOPs count dynamic dims as 1: per token.)

For each model, target (fraction of FLOPs kept: 0.7 and 0.5), criterion (l2, activation,
wanda, sensitivity [ranked by l2], taylor) and recovery (none, bias, lsq), one pruned model is
made with ``onnxprune.prune`` and evaluated with onnxruntime. Taylor needs gradients recorded
from the model's torch module: the digits CNN has one (scripts/train_digits_cnn.py, weights loaded
from the .onnx; cross-entropy on the calibration images and labels); the generated ResNet has
none, and an embedding model has no task loss, so the ResNet and MiniLM are scored without taylor.

Usage: python scripts/bench_recovery.py [--models digits resnet] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRITERIA = ("l2", "activation", "wanda", "sensitivity", "taylor")
RECOVERY = ("none", "bias", "lsq")
TARGETS = (0.7, 0.5)


def evaluate(original: str, pruned: str, data, labels) -> dict:
    from onnxprune.validate.runtime import make_session

    a = make_session(original, "cpu")
    b = make_session(pruned, "cpu")
    feeds = data if isinstance(data, dict) else {a.get_inputs()[0].name: data}
    n = len(next(iter(feeds.values())))
    chunks = [{k: v[i:i + 64] for k, v in feeds.items()} for i in range(0, n, 64)]
    ya = np.concatenate([a.run(None, c)[0] for c in chunks])
    yb = np.concatenate([b.run(None, c)[0] for c in chunks])
    cos = np.sum(ya * yb, axis=1) / (np.linalg.norm(ya, axis=1) * np.linalg.norm(yb, axis=1))
    out = {"cosine": float(np.mean(cos)), "top1_agreement": float(np.mean(ya.argmax(1) == yb.argmax(1)))}
    if labels is not None:
        out["accuracy"] = float(np.mean(yb.argmax(1) == labels))
        out["accuracy_original"] = float(np.mean(ya.argmax(1) == labels))
    return out


def digits_gradients(path: str, calib: str, work: str) -> str | None:
    try:
        import sys

        import torch

        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        from train_digits_cnn import build, load_from_onnx

        from onnxprune.torch import record_gradients
    except ImportError:
        return None
    d = np.load(calib)
    loader = [(torch.from_numpy(d["input"][i:i + 16]), torch.from_numpy(d["labels"][i:i + 16]))
              for i in range(0, len(d["input"]), 16)]
    rec = record_gradients(load_from_onnx(build(), path), loader, onnx_path=path, loss="cross-entropy")
    out = os.path.join(work, "digits.grads.npz")
    rec.save(out)
    return out


def setup(name: str, work: str):
    import onnx

    if name == "digits":
        test = np.load(os.path.join(ROOT, "models", "digits_test.npz"))
        return (os.path.join(ROOT, "models", "digits_cnn.onnx"), os.path.join(ROOT, "models", "digits_calib.npz"),
                test["input"], test["labels"])
    if name == "minilm":
        import sys

        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        from export_minilm import export_all

        paths = export_all(os.path.join(work, "minilm"))
        ev = dict(np.load(os.path.join(work, "minilm", "eval.npz")))
        return paths["torchscript"], os.path.join(work, "minilm", "calib.npz"), ev, None
    from onnxprune.testing.archs import resnet

    path = os.path.join(work, "resnet18.onnx")
    onnx.save(resnet(18, image=64, width=16, classes=100), path)
    calib = os.path.join(work, "resnet_calib.npz")
    np.savez(calib, input=np.random.default_rng(1).standard_normal((64, 3, 64, 64)).astype(np.float32))
    evaluation = np.random.default_rng(2).standard_normal((64, 3, 64, 64)).astype(np.float32)
    return path, calib, evaluation, None


def main() -> int:
    import onnxprune
    from onnxprune.validate.runtime import use_global_thread_pool

    use_global_thread_pool()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits", "resnet", "minilm"])
    ap.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    ap.add_argument("--json")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="onnxprune-recovery-")
    results = []
    for model_name in a.models:
        path, calib, evaluation, labels = setup(model_name, work)
        grads = digits_gradients(path, calib, work) if model_name == "digits" else None
        metric = "accuracy" if labels is not None else "cosine"
        base = evaluate(path, path, evaluation, labels)
        print(f"\n{model_name}: {path}\n  original {metric}: {base.get('accuracy', base['cosine']):.4f}; "
              f"calibration {calib}; evaluation on a separate set")
        print(f"  {'FLOPs kept':>10} {'criterion':<12}" + "".join(f"{r:>10}" for r in RECOVERY) + "   (achieved FLOPs)")
        for target in TARGETS:
            for crit in a.criteria:
                if crit == "taylor" and grads is None:
                    continue
                row = {}
                flops = None
                for rec in RECOVERY:
                    out = os.path.join(work, f"{model_name}-{crit}-{target}-{rec}.onnx")
                    t0 = time.perf_counter()
                    res = onnxprune.prune(path, out, criterion=crit, target_flops=target, calib=calib,
                                          recover=rec, round_to=1,
                                          sensitivity_ratios=(0.2, 0.4, 0.6, 0.8) if crit == "sensitivity" else None,
                                          gradients=grads if crit == "taylor" else None,
                                          calib_batch=8 if model_name == "minilm" else 32)
                    seconds = time.perf_counter() - t0
                    ev = evaluate(path, out, evaluation, labels)
                    flops = res.after.flops / res.before.flops
                    row[rec] = ev
                    results.append({"model": model_name, "target_flops": target, "criterion": crit, "recover": rec,
                                    "achieved_flops": flops, "seconds": seconds, **ev})
                print(f"  {target:>10} {crit:<12}" + "".join(f"{row[r].get(metric):>10.4f}" for r in RECOVERY)
                      + f"   ({flops:.3f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
