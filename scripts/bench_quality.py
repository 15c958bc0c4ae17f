"""Quality benchmark on the real-model dev set (scripts/devset.py): quality targets and budgets.

For each model of the dev set (trained models shipped in wheels, the digits CNN, MiniLM; each
with its own calibration split and a *separate* evaluation split, see scripts/devset.py):

* ``cosine`` part: ``--target-cosine C`` for each C of ``--cosines`` (default 0.99 0.95 0.9),
  with the defaults (criterion and recovery chosen by onnxprune with ``--calib``), once per
  search of ``--searches`` (``pergroup``: the global bisection then the per-group greedy;
  ``global``: the bisection alone): the fraction of FLOPs removed and the quality reached on
  the evaluation split;
* ``flops`` part: ``--target-flops F`` for each F of ``--flops`` (default 0.8 0.6), with the
  defaults and with every criterion of ``--criteria`` × recovery of ``--recover`` side by side:
  the quality on the evaluation split.

Quality on the evaluation split, worst output reported (scripts/_devset_eval.py): cosine (mean
over samples), decision agreement by kind of output (top-1 agreement for classifiers and
distributions, IoU of the thresholded positives for probability maps; ``validate/quality.py``)
and top-1 accuracy where the split has labels. FLOPs are counted at the calibration input's
shape. Seconds are wall time of the pruning call (on a shared machine: pessimistic).

Run time is bounded: ``--budget S`` seconds per model (the runs left when a model has used its
budget are listed as not run), ``--calib-limit N`` calibration samples.

Usage: python scripts/bench_quality.py --cache /tmp/devcache [--models digits_cnn minilm_torchscript]
       [--parts flops cosine] [--searches pergroup global] [--criteria l2 wanda] [--recover none lsq seq]
       [--flops 0.8 0.6] [--cosines 0.99 0.95 0.9] [--budget 600] [--calib-limit N] [--no-defaults]
       [--json out.json] [--markdown out.md]
       python scripts/bench_quality.py --table a.json b.json [--markdown out.md]   # tables from saved runs
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _devset_eval import evaluate, fmt_quality


def _cell(r: dict | None, removed: bool) -> str:
    if r is None:
        return ""
    if "error" in r:
        return "failed" if not r["error"].startswith("not run") else "not run"
    q = f"{r['cosine']:.3f}"
    if r.get("decision") is not None:
        q += f" / dec {r['decision']:.2f}"
    if "accuracy" in r:
        q += f" / acc {r['accuracy']:.2f} ({r['accuracy_original']:.2f})"
    if removed:
        g = r.get("global_phase_flops")
        more = f" (its global phase: {1 - g:.0%})" if r.get("search") == "pergroup" and g is not None else ""
        return f"**{1 - r['flops']:.0%}** removed{more}, {q}"
    if abs(r["flops"] - r["target"]) > 0.02:  # dead channels removed first, rounding
        return f"(kept {r['flops']:.2f}) {q}"
    return q


def markdown(rows: list[dict]) -> str:
    """Two tables: FLOPs removed at each cosine target (per search), quality at each FLOPs budget."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = []
    cos = [r for r in rows if r.get("part") == "cosine"]
    if cos:
        keys = list(dict.fromkeys((r["target"], r["search"]) for r in cos))
        out.append("FLOPs removed at `--target-cosine C` (defaults with `--calib`), and the worst output's quality "
                   "on the evaluation split (cosine / decision agreement / top-1 accuracy (original's)); time of the "
                   "search.\n")
        out.append("| model | " + " | ".join(f"cos ≥ {t:g} ({s})" for t, s in keys) + " |")
        out.append("|---|" + "---|" * len(keys))
        for m in models:
            by = {(r["target"], r["search"]): r for r in cos if r["model"] == m}
            if not by:
                continue
            cells = [_cell(by.get(k), True) + (f" ({by[k]['seconds']:.0f} s)" if k in by and "seconds" in by[k]
                                               else "") for k in keys]
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    fl = [r for r in rows if r.get("part") == "flops"]
    if fl:
        variants = list(dict.fromkeys(r["variant"] for r in fl))
        out.append("Quality on the evaluation split at `--target-flops F` (fraction of FLOPs kept), per criterion + "
                   "recovery; total seconds of the model's runs.\n")
        out.append("| model | F | " + " | ".join(variants) + " | seconds |")
        out.append("|---|---|" + "---|" * (len(variants) + 1))
        for m in models:
            for f in dict.fromkeys(r["target"] for r in fl if r["model"] == m):
                by = {r["variant"]: r for r in fl if r["model"] == m and r["target"] == f}
                sec = sum(r.get("seconds", 0) for r in by.values())
                out.append(f"| {m} | {f:g} | " + " | ".join(_cell(by.get(v), False) for v in variants)
                           + f" | {sec:.0f} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    from devset import gather

    import onnxprune
    from onnxprune.api import CALIB_BUDGET_CRITERION, _defaults
    from onnxprune.errors import OnnxPruneError
    from onnxprune.validate.runtime import use_global_thread_pool

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="/tmp/devcache")
    ap.add_argument("--models", nargs="+")
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--parts", nargs="+", default=["cosine", "flops"], choices=["cosine", "flops"])
    ap.add_argument("--searches", nargs="+", default=["pergroup", "global"], choices=["pergroup", "global"])
    ap.add_argument("--criteria", nargs="+", default=["l2", "wanda"],
                    help="criteria side by side; sensitivity/R: criterion sensitivity ranked within groups by R")
    ap.add_argument("--recover", nargs="+", default=["none", "lsq", "seq"])
    ap.add_argument("--flops", nargs="+", type=float, default=[0.8, 0.6])
    ap.add_argument("--cosines", nargs="*", type=float, default=[0.99, 0.95, 0.9])
    ap.add_argument("--calib-batch", type=int, default=8)
    ap.add_argument("--calib-limit", type=int)
    ap.add_argument("--no-defaults", action="store_true", help="no separate defaults run in the flops part")
    ap.add_argument("--budget", type=float, default=900, help="seconds per model; later runs are skipped")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("--table", nargs="+", help="only print the tables of these saved JSON runs")
    a = ap.parse_args()
    if a.table:
        rows = []
        for p in a.table:
            with open(p) as fh:
                rows += json.load(fh)
        text = markdown(rows)
        print(text)
        if a.markdown:
            with open(a.markdown, "w") as fh:
                fh.write(text)
        return 0
    use_global_thread_pool()
    entries = [e for e in gather(a.cache, a.models) if e["name"] not in a.skip]
    work = tempfile.mkdtemp(prefix="onnxprune-quality-")
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # pruned models are scratch
    d_crit, d_rec = _defaults(None, None, "calib", budget=True)  # every run here has a FLOPs or quality target
    if d_crit == CALIB_BUDGET_CRITERION[0]:
        d_crit = "/".join(CALIB_BUDGET_CRITERION)
    rows: list[dict] = []

    def save() -> None:
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(rows, fh, indent=1)

    for e in entries:
        if e.get("layout"):
            print(f"\n{e['name']}: skipped (stateful/scalar inputs need a batch layout the calibration reader "
                  f"does not apply)")
            rows.append({"model": e["name"], "part": "skipped", "error": "stateful/scalar inputs"})
            continue
        print(f"\n{e['name']}  calibration {os.path.basename(e['calib'])}, evaluation {os.path.basename(e['eval'])}",
              flush=True)
        common = dict(calib=e["calib"], calib_batch=a.calib_batch)
        if a.calib_limit:
            common["calib_limit"] = a.calib_limit
        start = time.perf_counter()

        def run(part, target, variant, search=None, **kw):
            tag = f"{part} {target:g} {variant}" + (f" [{search}]" if search else "")
            row = {"model": e["name"], "part": part, "target": target, "variant": variant, "search": search,
                   "calib_limit": a.calib_limit}
            if time.perf_counter() - start > a.budget:
                print(f"  {tag:<40} not run (the model's budget of {a.budget:.0f} s is spent)")
                rows.append({**row, "error": "not run: budget"})
                return
            out = os.path.join(work, f"{e['name']}-{len(rows)}.onnx")
            t0 = time.perf_counter()
            try:
                res = onnxprune.prune(e["path"], out, **common, **kw)
            except OnnxPruneError as ex:
                print(f"  {tag:<40} failed: {ex}"[:300], flush=True)
                rows.append({**row, "error": str(ex), "seconds": time.perf_counter() - t0})
                return
            sec = time.perf_counter() - t0
            ev = evaluate(e["path"], out, e)
            row.update(flops=res.after.flops / max(res.before.flops, 1),
                       params=res.after.params / max(res.before.params, 1), seconds=sec, **ev)
            st = res.plan.settings
            if "trajectory" in st:
                row["candidates"] = len(st["trajectory"])
                row["stopped"] = st.get("stopped")
                # the per-group search starts with the global one: its best is what --quality-search global finds
                met = [t["flops"] for t in st["trajectory"] if t["met"] and t.get("phase", "global") == "global"]
                row["global_phase_flops"] = min(met) if met else None
            rows.append(row)
            os.remove(out)
            print(f"  {tag:<40} FLOPs kept {row['flops']:.3f}  {fmt_quality(ev)}  ({sec:.0f} s)", flush=True)
            save()

        if "cosine" in a.parts:
            for c in a.cosines:
                for s in a.searches:
                    run("cosine", c, f"defaults ({d_crit}+{d_rec})", search=s, target_cosine=c, quality_search=s)
        if "flops" in a.parts:  # the defaults first, then the cheap runs without recovery (budget order)
            combos = [(c, r) for c in a.criteria for r in a.recover]
            combos.sort(key=lambda cr: (cr != (d_crit, d_rec), cr[1] != "none"))
            if (d_crit, d_rec) not in combos and not a.no_defaults:
                for f in a.flops:
                    run("flops", f, f"defaults ({d_crit}+{d_rec})", target_flops=f)
            for crit, rec in combos:
                for f in a.flops:
                    base, _, rank = crit.partition("/")  # sensitivity/obs: criterion sensitivity, rank_by obs
                    run("flops", f, f"{crit}+{rec}", target_flops=f, criterion=base, recover=rec,
                        **({"rank_by": rank} if rank else {}))
        print(f"  ({time.perf_counter() - start:.0f} s for {e['name']})", flush=True)
    save()
    text = markdown(rows)
    print("\n" + text)
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
