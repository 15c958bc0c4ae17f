"""Chosen criterion/recovery runs on dev-set models at one FLOPs target (no defaults row).

A narrow companion of ``bench_quality.py`` (same pruning call, same held-out evaluation) for
comparing criteria side by side when a full benchmark row set is too slow.

Usage: python scripts/quality_runs.py MODEL FLOPS RUN [RUN ...] [--cache /tmp/devcache]
       RUN = comma-separated prune options, e.g. criterion=obs,recover=seq,mode=uniform
             (calib_limit=32: MiniLM's 32 hand-written calibration sentences without the generated ones)
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    from bench_quality import evaluate
    from bench_quality import fmt_quality as _fmt
    from devset import gather

    import onnxprune
    from onnxprune.validate.runtime import use_global_thread_pool

    use_global_thread_pool()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("flops", type=float)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--cache", default="/tmp/devcache")
    ap.add_argument("--calib-batch", type=int, default=8)
    a = ap.parse_args()
    e = gather(a.cache, [a.model])[0]
    work = tempfile.mkdtemp(prefix="onnxprune-runs-")
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # pruned models are scratch
    for r in a.runs:
        kw = {"calib": e["calib"], "calib_batch": a.calib_batch, "target_flops": a.flops}
        for part in r.split(","):  # NAME=VALUE; numbers are numbers; calib=PATH replaces the dev set's split
            k, v = part.split("=", 1)
            if "/" in v and all(x.replace(".", "", 1).isdigit() for x in v.split("/")):  # a list: 0.1/0.2/0.3
                kw[k] = tuple(float(x) for x in v.split("/"))
                continue
            if v in ("True", "False"):
                kw[k] = v == "True"
                continue
            try:
                kw[k] = int(v)
            except ValueError:
                try:
                    kw[k] = float(v)
                except ValueError:
                    kw[k] = v
        out = os.path.join(work, f"{a.model}-{len(os.listdir(work))}.onnx")
        t0 = time.perf_counter()
        res = onnxprune.prune(e["path"], out, **kw)
        sec = time.perf_counter() - t0
        ev = evaluate(e["path"], out, e)
        print(f"{a.model} {a.flops} {r:<40} FLOPs kept {res.after.flops / res.before.flops:.3f} {_fmt(ev)} "
              f"({sec:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
