"""Benchmark: pruning cost vs the load+save floor, and latency ratio vs FLOPs ratio.

On the generated ResNet-50-style model (torchvision layout, 224×224, width 64, 25.6M params):

1. time and peak memory (RSS) of ``inspect``, ``plan`` and ``prune`` (analysis + plan + rewrite
   + checked save), each in a fresh process, against the floor ``onnx.load`` + ``onnx.save`` of
   the same file; each phase is run ``--runs`` times and the median is reported;
2. for each ``--round-to`` value, prune at ``--ratio`` and time original vs pruned with
   onnxruntime on the CPU (one shared global thread pool, interleaved runs, medians), and
   compare the latency ratio with the FLOPs ratio.

Usage: python scripts/bench_prune.py [--ratio 0.5] [--round-to 1 8 16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PHASE = r"""
import json, sys, time
import onnx, onnxprune
from onnxprune._ir import load_model
from onnxprune.analysis import analyze
from onnxprune.cost import CostModel
phase, src, dst, ratio, round_to = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
t0 = time.perf_counter()
if phase == "floor":
    onnx.save(onnx.load(src), dst)
elif phase == "inspect":
    m = load_model(src); analyze(m); CostModel(m).count()
elif phase == "plan":
    onnxprune.plan(src, ratio=ratio, round_to=round_to)
elif phase == "prune":
    onnxprune.prune(src, dst, ratio=ratio, round_to=round_to)
t = time.perf_counter() - t0
# VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak across exec)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": t, "peak_rss_mb": hwm / 1024}))
"""


def run_phase(phase: str, src: str, dst: str, ratio: float, round_to: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PHASE, phase, src, dst, str(ratio), str(round_to)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratio", type=float, default=0.5, help="ratio of the timed inspect/plan/prune phases")
    ap.add_argument("--latency-ratios", type=float, nargs="+", default=[0.4, 0.5])
    ap.add_argument("--round-to", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=60, help="timed inference runs per model")
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    import onnx

    from onnxprune.testing.archs import resnet

    work = tempfile.mkdtemp(prefix="onnxprune-bench-")
    src = os.path.join(work, "resnet50.onnx")
    onnx.save(resnet(50, image=a.image, width=64, classes=1000, batch=1), src)
    size_mb = os.path.getsize(src) / 2**20
    print(f"model: ResNet-50-style, {a.image}x{a.image}, {size_mb:.1f} MB ({src})")

    results: dict = {"model_mb": size_mb, "ratio": a.ratio, "phases": {}, "latency": []}
    print(f"\n{'phase':<8} {'median s':>9} {'x floor':>8} {'peak RSS MB':>12}")
    floor = None
    for phase in ("floor", "inspect", "plan", "prune"):
        runs = [run_phase(phase, src, os.path.join(work, f"{phase}.onnx"), a.ratio, 8) for _ in range(a.runs)]
        sec = statistics.median(r["seconds"] for r in runs)
        rss = max(r["peak_rss_mb"] for r in runs)
        floor = floor or sec
        results["phases"][phase] = {"seconds": sec, "x_floor": sec / floor, "peak_rss_mb": rss}
        print(f"{phase:<8} {sec:>9.3f} {sec / floor:>8.2f} {rss:>12.0f}")

    import onnxprune
    from onnxprune.validate.compare import measure_latency
    from onnxprune.validate.inputs import InputSpec, random_dataset
    from onnxprune.validate.runtime import make_session, use_global_thread_pool

    use_global_thread_pool()

    print(f"\nlatency on CPU ({os.cpu_count()} cores, shared thread pool, {a.repeats} interleaved runs, batch 1)")
    print(f"{'ratio':>5} {'round_to':>8} {'FLOPs ratio':>12} {'latency ratio':>14} {'lat/FLOPs':>10} {'orig ms':>8} {'pruned ms':>10}")
    orig = make_session(src, "cpu")
    feeds = random_dataset(InputSpec.from_session(orig), seed=0).batches[0]
    for ratio, r in [(x, y) for x in a.latency_ratios for y in a.round_to]:
        dst = os.path.join(work, f"pruned_{ratio}_r{r}.onnx")
        res = onnxprune.prune(src, dst, ratio=ratio, round_to=r)
        flops_ratio = res.after.flops / res.before.flops
        lat = measure_latency(orig, make_session(dst, "cpu"), feeds, warmup=3, repeats=a.repeats)
        row = {"ratio": ratio, "round_to": r, "flops_ratio": flops_ratio, "latency_ratio": lat.ratio,
               "latency_over_flops": lat.ratio / flops_ratio, "original_ms": lat.original_ms["median"],
               "pruned_ms": lat.pruned_ms["median"]}
        results["latency"].append(row)
        print(f"{ratio:>5} {r:>8} {flops_ratio:>12.3f} {lat.ratio:>14.3f} {lat.ratio / flops_ratio:>10.3f} "
              f"{lat.original_ms['median']:>8.1f} {lat.pruned_ms['median']:>10.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
