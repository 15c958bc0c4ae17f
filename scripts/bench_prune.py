"""Benchmark: pruning cost vs a load+infer+save floor (static and dynamic-shape models), and latency vs FLOPs.

Models (``--models``, comma-separated; default all):

* ``resnet50``: the generated ResNet-50-style model (torchvision layout, static 224×224, width 64,
  25.6M params);
* ``unet-ts`` / ``unet-dynamo``: the U-Net/FPN-style conv net of ``scripts/dyn_models.py`` (skip
  Concats, ``Resize`` ×2 nearest and bilinear, 3.2M params) exported with dynamic batch, height and
  width by torch's TorchScript exporter (``dynamo=False``) and by the dynamo exporter;
* ``minilm``: all-MiniLM-L6-v2 (embedding graph of ``scripts/export_minilm.py``), dynamo export with
  dynamic batch and sequence.

1. For each model, each phase runs ``--runs`` times, each time in a fresh process whose working
   directory is an empty scratch folder (so that anything a phase drops in its cwd — onnxruntime's
   symbolic shape inference writes ``sym_shape_infer_temp.onnx`` + data when it gives up — is
   found and reported, never left in the repo); the median time and the peak RSS (VmHWM) are
   reported with their ratios to the floor:

   * ``floor``: ``onnx.load`` + ``onnx.shape_inference.infer_shapes(data_prop=True)`` + ``onnx.save``;
   * ``inspect``: load + channel analysis + cost (the library's load/analyze/CostModel; falls back to
     ``onnxprune.inspect`` and then to ``onnxprune inspect MODEL --json`` if those names moved);
   * ``plan``: ``onnxprune.plan(src, ratio, round_to)``;
   * ``prune``: ``onnxprune.prune(src, dst, ratio, round_to)`` (analysis + plan + rewrite + checked save).

   Targets: prune ≤ 1.5× the floor's time for the static ResNet-50, ≤ 2× for dynamic-shape models;
   peak RSS of every phase ≤ 1.5× the floor's. Every phase, the floor included, imports onnx and
   onnxprune before its clock starts, so the floor's RSS includes the library's import; ``base MB``
   (RSS after the imports, before the work) shows how much of each peak is imports.
2. Unless ``--no-latency``: on the ResNet-50 model, for each ``--round-to`` value, prune at each
   ``--latency-ratios`` value and time original vs pruned with onnxruntime on the CPU (one shared
   global thread pool, interleaved runs, medians), and compare the latency ratio with the FLOPs ratio.

Always exits 0 (a benchmark), except with ``--check``: 1 when a target is missed or a phase failed.
Models are written to a temporary folder (removed at the end unless ``--keep``).

Usage: python scripts/bench_prune.py [--models resnet50,unet-ts,unet-dynamo,minilm] [--runs 3]
       [--ratio 0.5] [--round-to-phases 8] [--round-to 1 8 16] [--no-latency] [--quick] [--check] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

ALL_MODELS = ("resnet50", "unet-ts", "unet-dynamo", "minilm")
PHASES = ("floor", "inspect", "plan", "prune")
TIME_TARGET = {"static": 1.5, "dynamic": 2.0}  # prune seconds / floor seconds
RSS_TARGET = 1.5  # peak RSS of any phase / floor's

# One phase in a fresh process. Imports happen before the clock starts, in every phase alike (the
# floor's RSS includes importing onnx and onnxprune too). The inspect phase resolves the library's
# internals defensively: they are being reorganised (``load_model`` moved from ``onnxprune._ir`` to
# ``onnxprune.graph``), and a benchmark should measure, not break.
PHASE = r"""
import json, os, resource, subprocess, sys, time
import onnx
phase, src, dst, ratio, round_to = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])

def internals():
    import importlib
    for where in ("graph", "_" + "ir"):  # the new home first; spelled so a rename sweep keeps both
        try:
            mod = importlib.import_module("onnxprune." + where)
            # (inside the onnxprune imported, not a stale editable install's copy)
            if not os.path.abspath(mod.__file__).startswith(os.path.abspath(onnxprune.__path__[0]) + os.sep):
                raise ImportError(f"onnxprune.{where} resolves outside {onnxprune.__path__[0]}")
            load_model = mod.load_model
            break
        except (ImportError, AttributeError):
            if where != "graph":
                raise
    from onnxprune.analysis import analyze
    from onnxprune.cost import CostModel
    def run():
        m = load_model(src); analyze(m); CostModel(m).count()
    return run

def public():
    f = onnxprune.inspect
    return lambda: f(src)

def cli():
    def run():
        subprocess.run([sys.executable, "-m", "onnxprune", "inspect", src, "--json"], check=True,
                       stdout=subprocess.DEVNULL)
    return run

try:
    import onnxprune
except Exception:  # the floor does not need the library; it is imported for the same RSS baseline
    if phase != "floor":
        raise

def rss(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024

base = rss("VmRSS")  # after the imports, before the work
via, notes = phase, []
if phase == "floor":
    def run():
        onnx.save(onnx.shape_inference.infer_shapes(onnx.load(src), data_prop=True), dst)
    candidates = [(phase, lambda: run)]
elif phase == "inspect":
    candidates = [("internals", internals), ("onnxprune.inspect", public), ("cli", cli)]
elif phase == "plan":
    candidates = [(phase, lambda: lambda: onnxprune.plan(src, ratio=ratio, round_to=round_to))]
elif phase == "prune":
    candidates = [(phase, lambda: lambda: onnxprune.prune(src, dst, ratio=ratio, round_to=round_to))]
for k, (via, make) in enumerate(candidates):
    last = k == len(candidates) - 1
    try:
        run = make()
    except (ImportError, AttributeError) as e:  # a name moved: the next way in
        if last:
            raise
        notes.append(f"{via}: {type(e).__name__}: {e}")
        continue
    t0 = time.perf_counter()
    try:
        run()
        break
    except (TypeError, AttributeError) as e:  # a signature changed: the next way in (the clock restarts)
        if last or via == "cli":
            raise
        notes.append(f"{via} raised {type(e).__name__}: {e}")
t = time.perf_counter() - t0
# VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak across exec)
hwm = rss("VmHWM")
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the CLI fallback's
print(json.dumps({"seconds": t, "peak_rss_mb": max(hwm, children), "via": via, "fallback_notes": notes,
                  "base_rss_mb": base}))
"""


def run_phase(phase: str, src: str, dst: str, ratio: float, round_to: int, scratch: str, timeout: float) -> dict:
    """One phase in a fresh process with an empty cwd; reports files it left there."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", PHASE, phase, src, dst, str(ratio), str(round_to)],
                             capture_output=True, text=True, cwd=scratch, timeout=timeout)
    except subprocess.TimeoutExpired:
        r = {"error": f"timed out after {timeout:.0f} s"}
    else:
        if out.returncode == 0:
            r = json.loads(out.stdout.strip().splitlines()[-1])
        else:
            tail = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
            r = {"error": f"exit {out.returncode}: {tail[-1] if tail else '?'}"}
    r["wall_s"] = time.perf_counter() - t0
    stray = sorted(os.listdir(scratch))
    if stray:
        r["stray_files"] = [f"{n} ({os.path.getsize(os.path.join(scratch, n)) / 2**20:.1f} MB)" for n in stray]
    shutil.rmtree(scratch, ignore_errors=True)
    return r


# ----------------------------------------------------------------------------------- models
def make_model(name: str, work: str, image: int) -> tuple[str, str, str]:
    """Write model ``name`` into ``work``; returns (path, kind, description)."""
    if name == "resnet50":
        import onnx

        from onnxprune.testing.archs import resnet

        path = os.path.join(work, "resnet50.onnx")
        if not os.path.exists(path):
            proto = resnet(50, image=image, width=64, classes=1000, batch=1)
            proto.ir_version = min(proto.ir_version, 10)
            onnx.save(proto, path)
        return path, "static", f"ResNet-50-style, static {image}x{image}"
    import dyn_models

    if name in ("unet-ts", "unet-dynamo"):
        exporter = "torchscript" if name == "unet-ts" else "dynamo"
        path = os.path.join(work, f"{name}.onnx")
        dyn_models.export_unet(path, exporter)
        return path, "dynamic", f"U-Net/FPN ({exporter} export), dynamic batch/H/W"
    if name == "minilm":
        path = os.path.join(work, "minilm.onnx")
        dyn_models.export_minilm(path, "dynamo")
        return path, "dynamic", "MiniLM-L6 (dynamo export), dynamic batch/seq"
    raise SystemExit(f"unknown model {name!r}; choose from {','.join(ALL_MODELS)}")


def quiet_call(fn, *args):
    """Run an exporter with its warnings/progress bars out of the report (kept if it fails)."""
    import contextlib
    import io
    import warnings

    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            return fn(*args)
    except BaseException:
        sys.stderr.write(buf.getvalue()[-4000:])
        raise


# ------------------------------------------------------------------------------- benchmark
def bench_model(name: str, a, work: str) -> dict:
    t0 = time.perf_counter()
    try:
        src, kind, desc = quiet_call(make_model, name, work, a.image)
    except Exception as e:  # an export that breaks is a result too
        print(f"\n== {name}: model could not be made: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"}
    export_s = time.perf_counter() - t0
    size_mb = os.path.getsize(src) / 2**20
    t_target = TIME_TARGET[kind]
    print(f"\n== {name}: {desc}, {size_mb:.1f} MB (made in {export_s:.1f} s)")
    print(f"{'phase':<8} {'median s':>9} {'x floor':>8} {'target':>7} {'peak RSS MB':>12} {'x floor':>8} "
          f"{'target':>7} {'base MB':>8}  notes")
    res: dict = {"kind": kind, "description": desc, "model_mb": size_mb, "export_s": export_s, "phases": {},
                 "missed": [], "stray_files": []}
    floor = None
    for phase in PHASES:
        runs = [run_phase(phase, src, os.path.join(work, f"{name}.{phase}.onnx"), a.ratio, a.round_to_phases,
                          os.path.join(work, "cwd"), a.phase_timeout) for _ in range(a.runs)]
        for r in runs:
            for f in r.get("stray_files", []):
                res["stray_files"].append(f"{phase}: {f}")
        ok = [r for r in runs if "error" not in r]
        if not ok:
            err = runs[0]["error"]
            res["phases"][phase] = {"error": err, "runs": runs}
            res["missed"].append(f"{phase}: {err}")
            print(f"{phase:<8} {'FAILED':>9}  {err}")
            if phase == "floor":
                break
            continue
        sec = statistics.median(r["seconds"] for r in ok)
        rss = max(r["peak_rss_mb"] for r in ok)
        base = statistics.median(r.get("base_rss_mb", 0) for r in ok)
        row = {"seconds": sec, "peak_rss_mb": rss, "base_rss_mb": base, "runs": runs}
        notes = []
        if len(ok) < len(runs):
            notes.append(f"{len(runs) - len(ok)} run(s) failed: {next(r['error'] for r in runs if 'error' in r)}")
        if any(r.get("via", phase) not in (phase, "internals") for r in ok):
            notes.append(f"via {ok[0]['via']} ({'; '.join(ok[0].get('fallback_notes', []))})")
        if any("stray_files" in r for r in runs):
            notes.append("left files in cwd: " + ", ".join(next(r["stray_files"] for r in runs if "stray_files" in r)))
        if floor is None:
            floor = row
            x_t, x_m, tt, mt = 1.0, 1.0, "", ""
        else:
            x_t, x_m = sec / floor["seconds"], rss / floor["peak_rss_mb"]
            row.update(x_floor=x_t, rss_x_floor=x_m)
            tt = ""
            if phase == "prune":
                row["time_target"] = t_target
                tt = f"≤{t_target:g} " + ("ok" if x_t <= t_target else "MISS")
                if x_t > t_target:
                    res["missed"].append(f"prune time {x_t:.2f}x floor > {t_target:g}x")
            row["rss_target"] = RSS_TARGET
            mt = f"≤{RSS_TARGET:g} " + ("ok" if x_m <= RSS_TARGET else "MISS")
            if x_m > RSS_TARGET:
                res["missed"].append(f"{phase} peak RSS {x_m:.2f}x floor > {RSS_TARGET:g}x")
        res["phases"][phase] = row
        print(f"{phase:<8} {sec:>9.3f} {x_t:>8.2f} {tt:>7} {rss:>12.0f} {x_m:>8.2f} {mt:>7} {base:>8.0f}  {'; '.join(notes)}")
    for p in PHASES[1:]:
        if p in res["phases"] and "error" not in res["phases"][p]:
            print(f"  {p} {res['phases'][p]['seconds']:.2f} s = floor {floor['seconds']:.2f} s "
                  f"+ {res['phases'][p]['seconds'] - floor['seconds']:.2f} s", end=";")
    print()
    if name != "resnet50" or a.no_latency:
        os.remove(src)
    for p in PHASES:
        f = os.path.join(work, f"{name}.{p}.onnx")
        if os.path.exists(f):
            os.remove(f)
    return res


def latency(a, work: str) -> list[dict]:
    import onnxprune
    from onnxprune.validate.compare import measure_latency
    from onnxprune.validate.inputs import InputSpec, random_dataset
    from onnxprune.validate.runtime import make_session, use_global_thread_pool

    src, _, desc = make_model("resnet50", work, a.image)
    use_global_thread_pool()
    print(f"\nlatency of {desc} on CPU ({os.cpu_count()} cores, shared thread pool, {a.repeats} interleaved runs, "
          "batch 1)")
    print(f"{'ratio':>5} {'round_to':>8} {'FLOPs ratio':>12} {'latency ratio':>14} {'lat/FLOPs':>10} {'orig ms':>8} "
          f"{'pruned ms':>10}")
    orig = make_session(src, "cpu")
    feeds = random_dataset(InputSpec.from_session(orig), seed=0).batches[0]
    rows = []
    for ratio, r in [(x, y) for x in a.latency_ratios for y in a.round_to]:
        dst = os.path.join(work, f"pruned_{ratio}_r{r}.onnx")
        res = onnxprune.prune(src, dst, ratio=ratio, round_to=r)
        flops_ratio = res.after.flops / res.before.flops
        lat = measure_latency(orig, make_session(dst, "cpu"), feeds, warmup=3, repeats=a.repeats)
        row = {"ratio": ratio, "round_to": r, "flops_ratio": flops_ratio, "latency_ratio": lat.ratio,
               "latency_over_flops": lat.ratio / flops_ratio, "original_ms": lat.original_ms["median"],
               "pruned_ms": lat.pruned_ms["median"]}
        rows.append(row)
        print(f"{ratio:>5} {r:>8} {flops_ratio:>12.3f} {lat.ratio:>14.3f} {lat.ratio / flops_ratio:>10.3f} "
              f"{lat.original_ms['median']:>8.1f} {lat.pruned_ms['median']:>10.1f}")
        os.remove(dst)
    return rows


def summary(results: dict) -> None:
    print("\nsummary (prune = analysis + plan + rewrite + checked save; x = ratio to the floor)")
    print(f"{'model':<12} {'floor s':>8} {'inspect':>8} {'plan':>8} {'prune':>8} {'target':>7} {'floor MB':>9} "
          f"{'max RSS x':>9} {'target':>7}  verdict")
    for name, r in results["models"].items():
        if "error" in r or "floor" not in r["phases"] or "error" in r["phases"]["floor"]:
            print(f"{name:<12} {'—':>8}  {r.get('error') or r['phases'].get('floor', {}).get('error')}")
            continue
        ph = r["phases"]

        def x(p):
            return f"{ph[p]['x_floor']:.2f}x" if p in ph and "x_floor" in ph[p] else "fail"

        rss = [ph[p]["rss_x_floor"] for p in PHASES[1:] if p in ph and "rss_x_floor" in ph[p]]
        verdict = "ok" if not r["missed"] else "MISSED: " + "; ".join(r["missed"])
        print(f"{name:<12} {ph['floor']['seconds']:>8.2f} {x('inspect'):>8} {x('plan'):>8} {x('prune'):>8} "
              f"{'≤' + format(TIME_TARGET[r['kind']], 'g') + 'x':>7} {ph['floor']['peak_rss_mb']:>9.0f} "
              f"{(format(max(rss), '.2f') + 'x') if rss else '—':>9} {'≤' + format(RSS_TARGET, 'g') + 'x':>7}  {verdict}")
    if results["stray_files"]:
        print("\nfiles a phase left in its working directory (removed; phases run in a scratch cwd):")
        for f in results["stray_files"]:
            print(f"  {f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(ALL_MODELS), help=f"comma-separated subset of {','.join(ALL_MODELS)}")
    ap.add_argument("--ratio", type=float, default=0.5, help="ratio of the timed inspect/plan/prune phases")
    ap.add_argument("--round-to-phases", type=int, default=8, help="round_to of the timed plan/prune phases")
    ap.add_argument("--runs", type=int, default=3, help="fresh-process runs per phase (median time, max RSS)")
    ap.add_argument("--phase-timeout", type=float, default=600, help="seconds before a phase run is abandoned")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency-vs-FLOPs part")
    ap.add_argument("--latency-ratios", type=float, nargs="+", default=[0.4, 0.5])
    ap.add_argument("--round-to", type=int, nargs="+", default=[1, 8, 16], help="round_to values of the latency part")
    ap.add_argument("--repeats", type=int, default=60, help="timed inference runs per model")
    ap.add_argument("--image", type=int, default=224, help="ResNet-50 input size")
    ap.add_argument("--quick", action="store_true", help="smoke test: --runs 1 --no-latency")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed or a phase fails")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder with the models")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.quick:
        a.runs, a.no_latency = 1, True
    names = [m.strip() for m in a.models.split(",") if m.strip()]
    for m in names:
        if m not in ALL_MODELS:
            ap.error(f"unknown model {m!r}; choose from {','.join(ALL_MODELS)}")

    import onnx
    import onnxruntime

    import onnxprune

    work = tempfile.mkdtemp(prefix="onnxprune-bench-")
    repo_before = set(os.listdir(ROOT))
    t_start = time.perf_counter()
    print(f"onnxprune {onnxprune.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{os.cpu_count()} cores; library {os.path.dirname(onnxprune.__file__)}; ratio {a.ratio}, round_to {a.round_to_phases}, {a.runs} run(s) per phase; "
          f"models in {work}")
    results: dict = {"ratio": a.ratio, "round_to": a.round_to_phases, "runs": a.runs,
                     "targets": {"prune_x_floor": TIME_TARGET, "peak_rss_x_floor": RSS_TARGET},
                     "models": {}, "latency": [], "stray_files": []}
    try:
        for name in names:
            results["models"][name] = r = bench_model(name, a, work)
            results["stray_files"] += [f"{name} {f}" for f in r.get("stray_files", [])]
        if not a.no_latency:
            try:
                results["latency"] = latency(a, work)
            except Exception as e:  # keep the phase results
                print(f"latency part failed: {type(e).__name__}: {e}")
                results["latency_error"] = f"{type(e).__name__}: {e}"
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    new_in_repo = sorted(set(os.listdir(ROOT)) - repo_before)
    if new_in_repo:
        results["new_files_in_repo"] = new_in_repo
    summary(results)
    if new_in_repo:
        print(f"\nnew files in the repository root during the run (not by the phases, which run elsewhere): "
              f"{', '.join(new_in_repo)}")
    results["total_s"] = time.perf_counter() - t_start
    print(f"\ntotal {results['total_s']:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    missed = any(r.get("error") or r.get("missed") for r in results["models"].values())
    return 1 if a.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
