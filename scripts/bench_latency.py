"""Benchmark: measured speed-up per MACs reduction, default rounding vs ``--target-speedup``.

For each model — generated ResNet-50 and MobileNetV2 (``onnxprune.testing.archs``, random
weights, real sizes at 224×224), MiniLM (all-MiniLM-L6-v2, ``scripts/export_minilm.py``, batch 1 ×
128 tokens) and the shipped digits CNN — and each MACs reduction R (default 1.5, 2, 3):

* ``default``: ``onnxprune.prune(target_flops=1/R)`` with the defaults (``round_to=auto``: the
  measured channel step of the provider; never slower: planned against the measured table and
  timed, from 5M MACs — the digits CNN is below, so it is rounded without a table);
* ``speedup``: ``onnxprune.prune(target_speedup=R)``: planned against the measured latency table,
  verified and corrected once by ``prune`` itself.

Then the original and every pruned variant of a model are timed together: one onnxruntime
thread pool shared by all sessions, interleaved rounds (each round runs every model once, the
order rotating), median of ``--repeats`` rounds. Reported per variant: MACs reduction
(original MACs / pruned MACs), measured speed-up (original ms / pruned ms), their quotient, and
for ``speedup`` variants whether the target was met within 10%. A model slower than its original
is flagged.

The issue's bar (on a quiet machine): ResNet-50 CPU speed-up ≥ 0.95 × the MACs reduction up to 2×
and ≥ 0.9 up to 4×; no model slower than its original; ``--target-speedup 1.5`` within 10%.

Usage:
    python scripts/bench_latency.py [--quick] [--models resnet50 mobilenetv2 minilm digits]
        [--reductions 1.5 2 3] [--repeats 30] [--provider cpu] [--minilm PATH] [--json out.json]

``--quick``: small inputs (64×64 images, 32 tokens), two reductions, few repeats: a smoke test.
Latency tables are cached under ``$ONNXPRUNE_CACHE_DIR`` / ``$XDG_CACHE_HOME/onnxprune``.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)


def build_models(names: list[str], work: str, quick: bool, minilm: str | None) -> dict[str, tuple[str, dict]]:
    """name -> (path, dims for the concrete input shape)."""
    import onnx

    from onnxprune.testing.archs import mobilenetv2, resnet

    image = 64 if quick else 224
    out = {}
    for name in names:
        path = os.path.join(work, f"{name}.onnx")
        if name == "resnet50":
            onnx.save(resnet(50, image=image, width=16 if quick else 64, classes=1000, batch=1), path)
            out[name] = (path, {})
        elif name == "mobilenetv2":
            onnx.save(mobilenetv2(image=image, width=16 if quick else 32, classes=1000), path)
            out[name] = (path, {"N": 1})
        elif name == "digits":
            out[name] = (os.path.join(ROOT, "models", "digits_cnn.onnx"), {})
        elif name == "minilm":
            src = minilm or "/tmp/devcache/minilm/minilm_torchscript.onnx"
            if not os.path.exists(src):
                from export_minilm import export_all

                src = export_all(os.path.join(work, "minilm"))["torchscript"]
            out[name] = (src, {"batch": 1, "seq": 32 if quick else 128})
        else:
            raise SystemExit(f"unknown model {name}")
    return out


def bench_model(name: str, src: str, dims: dict, a, work: str) -> list[dict]:
    import onnxprune
    from onnxprune.cost import count
    from onnxprune.graph import load_model
    from onnxprune.latency import full_feeds, time_models

    m = load_model(src)
    m.infer(dims=dims or None)
    macs0 = count(m).macs
    feeds = full_feeds(m)
    variants: dict[str, dict] = {}
    for r in a.reductions:
        for how in ("default", "speedup"):
            key = f"{how}@{r:g}"
            dst = os.path.join(work, f"{name}.{how}.{r:g}.onnx")
            t0 = time.perf_counter()
            try:
                if how == "default":
                    res = onnxprune.prune(src, dst, target_flops=1 / r, dims=dims or None,
                                          latency_provider=a.provider)
                else:
                    res = onnxprune.prune(src, dst, target_speedup=r, dims=dims or None,
                                          latency_provider=a.provider)
            except onnxprune.OnnxPruneError as e:
                print(f"  {name} {key}: {e}", flush=True)
                variants[key] = {"error": str(e)}
                continue
            variants[key] = {"path": dst, "how": how, "target": r, "macs": res.after.macs,
                             "round_to": res.plan.settings.get("round_to"), "prune_s": time.perf_counter() - t0,
                             "check": res.latency}
            print(f"  {name} {key}: MACs ÷{macs0 / max(res.after.macs, 1):.2f} in {time.perf_counter() - t0:.1f} s",
                  flush=True)
    paths = {"original": src, **{k: v["path"] for k, v in variants.items() if "path" in v}}
    ms = time_models(paths, feeds, provider=a.provider, repeats=a.repeats, warmup=a.warmup)
    rows = []
    for key, v in variants.items():
        row = {"model": name, "variant": key, **{k: x for k, x in v.items() if k != "path"}}
        if "path" in v:
            macs_red = macs0 / max(v["macs"], 1)
            speed = ms["original"] / ms[key]
            row.update(original_ms=ms["original"], pruned_ms=ms[key], macs_reduction=macs_red, speedup=speed,
                       speedup_per_macs=speed / macs_red, slower=speed < 1.0)
            if v["how"] == "speedup":
                row["target_met_10pct"] = abs(speed / v["target"] - 1) <= 0.10
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenetv2", "minilm", "digits"])
    ap.add_argument("--reductions", type=float, nargs="+")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--minilm", help="MiniLM .onnx (default: the dev cache, else exported)")
    ap.add_argument("--work", help="folder for the generated and pruned models (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="small inputs, reductions 1.5 2, 5 repeats")
    ap.add_argument("--json", help="write the rows as JSON")
    a = ap.parse_args()
    a.reductions = a.reductions or ([1.5, 2.0] if a.quick else [1.5, 2.0, 3.0])
    a.repeats = a.repeats or (5 if a.quick else 30)

    from onnxprune.validate.runtime import use_global_thread_pool

    pooled = use_global_thread_pool()
    import onnxruntime as ort

    from onnxprune.latency import alignment, machine_id

    work = a.work or tempfile.mkdtemp(prefix="onnxprune-bench-latency-")
    if not a.work:  # a temporary folder goes at exit; --work keeps the models
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    print(f"machine: {machine_id()}; onnxruntime {ort.__version__}; provider {a.provider}; shared pool {pooled}; "
          f"auto round_to {alignment(a.provider)}; repeats {a.repeats}; work {work}", flush=True)
    rows = []
    for name, (src, dims) in build_models(a.models, work, a.quick, a.minilm).items():
        print(f"{name}: pruning", flush=True)
        rows += bench_model(name, src, dims, a, work)
    print()
    print(f"{'model':<12} {'variant':<12} {'round':>5} {'MACs ÷':>7} {'speed-up':>8} {'speed/MACs':>10} "
          f"{'pred':>6} {'orig ms':>8} {'pruned ms':>9}  note")
    for r in rows:
        if "speedup" not in r:
            print(f"{r['model']:<12} {r['variant']:<12} error: {r.get('error', '')[:80]}")
            continue
        pred = (r.get("check") or {}).get("predicted_speedup")
        pred = "-" if pred is None else f"{pred:.2f}"
        note = []
        if r["slower"]:
            note.append("SLOWER")
        if "target_met_10pct" in r:
            note.append("target met" if r["target_met_10pct"] else "target MISSED")
        print(f"{r['model']:<12} {r['variant']:<12} {r['round_to'] or '-':>5} {r['macs_reduction']:7.2f} "
              f"{r['speedup']:8.2f} {r['speedup_per_macs']:10.2f} {pred:>6} "
              f"{r['original_ms']:8.2f} {r['pruned_ms']:9.2f}  {', '.join(note)}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
