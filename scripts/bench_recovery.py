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

* ``resnet18-full``: the same architecture at its real size (224×224, width 64, 1000 classes),
  ``--calib`` seeded Gaussian calibration inputs (64 by default), 64 other inputs to evaluate.

Usage: python scripts/bench_recovery.py [--models digits resnet] [--json out.json]

Timing of one recovery at a fixed ratio (wall and CPU seconds per phase of the sequential
reconstruction, the held-out calibration error it reports, and the evaluation), e.g. the
issue-9 figure:

    python scripts/bench_recovery.py --models resnet18-full --calib 64 --recover none seq --criteria l2 --ratio 0.5

Wall times are pessimistic on a machine shared with other jobs; CPU times are printed beside them.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
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


def setup(name: str, work: str, n_calib: int = 64):
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

    image, kw = (224, {"width": 64, "classes": 1000}) if name == "resnet18-full" else (64, {"width": 16, "classes": 100})
    path = os.path.join(work, f"{name}.onnx")
    onnx.save(resnet(18, image=image, **kw), path)
    calib = os.path.join(work, f"{name}_calib.npz")
    np.savez(calib, input=np.random.default_rng(1).standard_normal((n_calib, 3, image, image)).astype(np.float32))
    evaluation = np.random.default_rng(2).standard_normal((64, 3, image, image)).astype(np.float32)
    return path, calib, evaluation, None


def held_out_error(recovery: list[str]) -> tuple[float, float] | None:
    """Σ of the held-out calibration errors the sequential reconstruction reports: (no refit, chosen)."""
    import re

    pairs = [tuple(map(float, m.groups())) for line in recovery
             if (m := re.search(r"held-out error (\S+) no refit -> (\S+) over", line))]
    return (sum(p[0] for p in pairs), sum(p[1] for p in pairs)) if pairs else None


def timing(a, work: str) -> list[dict]:
    """One pruned model per recovery at ``--ratio``: wall/CPU seconds (per phase for seq) and quality."""
    import logging

    import onnxprune
    from onnxprune.rewrite import sequential

    said = []  # the reconstruction's own summary line (phases, cached activations)

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    seq_log = logging.getLogger(sequential.__name__)
    seq_log.addHandler(Keep(logging.INFO))
    seq_log.setLevel(logging.INFO)
    seq_log.propagate = False
    results = []
    for model_name in a.models:
        path, calib, evaluation, labels = setup(model_name, work, a.calib)
        print(f"\n{model_name}: {path}; {a.calib} calibration samples; ratio {a.ratio}; "
              f"wall times pessimistic on a shared machine, CPU times beside them")
        for crit in a.criteria:
            for rec in a.recover:
                out = os.path.join(work, f"{model_name}-{crit}-{rec}.onnx")
                said.clear()
                phases = getattr(sequential, "LAST_PHASES", {})
                phases.clear()
                t0, c0 = time.perf_counter(), time.process_time()
                res = onnxprune.prune(path, out, criterion=crit, ratio=a.ratio, calib=calib, recover=rec, round_to=1)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                ev = evaluate(path, out, evaluation, labels)
                err = held_out_error(res.recovery)
                row = {"model": model_name, "criterion": crit, "recover": rec, "ratio": a.ratio, "calib": a.calib,
                       "wall_s": wall, "cpu_s": cpu, "phases": dict(phases), **ev}
                if err is not None:
                    row["held_out_error_no_refit"], row["held_out_error"] = err
                results.append(row)
                print(f"  {crit:<10} {rec:<5} prune {wall:6.1f} s wall {cpu:6.1f} s CPU; eval cosine "
                      f"{ev['cosine']:.4f} top-1 agreement {ev['top1_agreement']:.3f}"
                      + (f"; held-out calibration error {err[0]:.4g} no refit -> {err[1]:.4g}" if err else ""))
                import resource

                row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                if row["phases"]:
                    tot = [sum(v[i] for v in row["phases"].values()) for i in (0, 1)]
                    print(f"    reconstruction {tot[0]:.1f} s wall {tot[1]:.1f} s CPU: " + ", ".join(
                        f"{k} {v[0]:.1f}/{v[1]:.1f}" for k, v in row["phases"].items()) + " (wall/CPU s); "
                          f"peak RSS of the process so far {row['peak_rss_mb']:.0f} MB")
                for line in said:
                    if "consumers in" in line:
                        print("    " + line)
    return results


def main() -> int:
    import onnxprune
    from onnxprune.validate.runtime import use_global_thread_pool

    use_global_thread_pool()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits", "resnet", "minilm"])
    ap.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    ap.add_argument("--json")
    ap.add_argument("--calib", type=int, default=64, help="calibration samples of the generated ResNets")
    ap.add_argument("--ratio", type=float, help="timing mode: prune at this ratio with each --recover")
    ap.add_argument("--recover", nargs="+", default=["seq"], help="recoveries of the timing mode")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="onnxprune-recovery-")
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # pruned models are scratch
    if a.ratio is not None:
        results = timing(a, work)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
        return 0
    results = []
    for model_name in a.models:
        path, calib, evaluation, labels = setup(model_name, work, a.calib)
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
