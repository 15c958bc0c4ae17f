"""Quality benchmark on the real-model dev set (scripts/devset.py): quality targets and budgets.

For each model of the dev set (trained models shipped in wheels, the digits CNN, MiniLM; each
with its own calibration split and a *separate* evaluation split, see scripts/devset.py):

* ``--target-cosine C`` for each C of ``--cosines`` (default 0.99 0.95 0.9), with the defaults
  (criterion and recovery chosen by onnxprune with ``--calib``): the fraction of FLOPs removed
  and the quality reached on the evaluation split;
* ``--target-flops F`` for each F of ``--flops`` (default 0.8 0.6), with the defaults and with
  every criterion of ``--criteria`` × recovery of ``--recover`` side by side: the quality on the
  evaluation split.

Quality on the evaluation split, per output, worst output reported: cosine (mean over samples),
decision agreement by kind of output (top-1 agreement for classifiers/distributions, IoU of the
thresholded positives for probability maps; ``validate/quality.py``) and top-1 accuracy where
the split has labels. FLOPs are counted at the calibration input's shape. Seconds are wall time
of the pruning call (on a shared machine: pessimistic).

Usage: python scripts/bench_quality.py --cache /tmp/devcache [--models digits_cnn minilm_torchscript]
       [--criteria l2 wanda] [--recover none lsq seq] [--flops 0.8 0.6] [--cosines 0.99 0.95 0.9]
       [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def outputs(path: str, entry: dict, split: str, batch: int = 8) -> list[np.ndarray]:
    from devset import feeds

    from onnxprune.validate.runtime import make_session

    sess = make_session(path, "cpu")
    data = np.load(entry[split])
    n = len(data[next(iter(entry["inputs"]))])
    first = entry["inputs"][next(iter(entry["inputs"]))]["shape"]
    fixed = first[0] if first and isinstance(first[0], int) and first[0] > 0 else None
    bs = fixed or batch
    parts = [sess.run(None, feeds(entry, data, s, min(n, s + bs))) for s in range(0, n - (n % bs if fixed else 0), bs)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def evaluate(original: str, pruned: str, entry: dict) -> dict:
    import onnx

    from onnxprune.graph import Model
    from onnxprune.search import _producer_op
    from onnxprune.validate.quality import measure, output_kind

    a, b = outputs(original, entry, "eval"), outputs(pruned, entry, "eval")
    m = Model(onnx.load(original, load_external_data=False))
    names = [v.name for v in m.graph.outputs]
    qs = [measure(n, x, y, output_kind(x, _producer_op(m, m.producer(n)))) for n, x, y in zip(names, a, b)]
    worst = min(qs, key=lambda q: min(q.cosine, q.decision if q.decision is not None else 1.0))
    res = {"cosine": worst.cosine, "decision": worst.decision, "kind": worst.kind, "output": worst.name}
    labels = np.load(entry["eval"]).get("labels") if "labels" in np.load(entry["eval"]).files else None
    if labels is not None and a[0].ndim == 2:
        res["accuracy"] = float(np.mean(b[0].argmax(1) == labels[:len(b[0])]))
        res["accuracy_original"] = float(np.mean(a[0].argmax(1) == labels[:len(a[0])]))
    return res


def _fmt(ev: dict) -> str:
    s = f"cos {ev['cosine']:.4f}"
    if ev.get("decision") is not None:
        s += f" dec {ev['decision']:.3f}"
    if "accuracy" in ev:
        s += f" acc {ev['accuracy']:.3f}/{ev['accuracy_original']:.3f}"
    return s


def main() -> int:
    from devset import gather

    import onnxprune
    from onnxprune.errors import OnnxPruneError
    from onnxprune.validate.runtime import use_global_thread_pool

    use_global_thread_pool()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="/tmp/devcache")
    ap.add_argument("--models", nargs="+")
    ap.add_argument("--criteria", nargs="+", default=["l2", "wanda"])
    ap.add_argument("--recover", nargs="+", default=["none", "lsq", "seq"])
    ap.add_argument("--flops", nargs="+", type=float, default=[0.8, 0.6])
    ap.add_argument("--cosines", nargs="*", type=float, default=[0.99, 0.95, 0.9])
    ap.add_argument("--calib-batch", type=int, default=8)
    ap.add_argument("--json")
    a = ap.parse_args()
    entries = gather(a.cache, a.models)
    work = tempfile.mkdtemp(prefix="onnxprune-quality-")
    rows = []
    for e in entries:
        if e.get("layout"):
            print(f"\n{e['name']}: skipped (stateful/scalar inputs need a batch layout the calibration reader "
                  f"does not apply)")
            continue
        print(f"\n{e['name']}  calibration {os.path.basename(e['calib'])}, evaluation {os.path.basename(e['eval'])}")
        common = dict(calib=e["calib"], calib_batch=a.calib_batch)

        def run(tag, **kw):
            out = os.path.join(work, f"{e['name']}-{tag}.onnx")
            t0 = time.perf_counter()
            try:
                res = onnxprune.prune(e["path"], out, **common, **kw)
            except OnnxPruneError as ex:
                print(f"  {tag:<34} failed: {ex}"[:300])
                rows.append({"model": e["name"], "run": tag, "error": str(ex)})
                return
            sec = time.perf_counter() - t0
            ev = evaluate(e["path"], out, e)
            row = {"model": e["name"], "run": tag, "flops": res.after.flops / max(res.before.flops, 1),
                   "params": res.after.params / max(res.before.params, 1), "seconds": sec, **ev}
            rows.append(row)
            print(f"  {tag:<34} FLOPs kept {row['flops']:.3f}  {_fmt(ev)}  ({sec:.0f} s)", flush=True)

        for f in a.flops:
            run(f"target-flops {f} (defaults)", target_flops=f)
            for crit in a.criteria:
                for rec in a.recover:
                    run(f"target-flops {f} {crit}+{rec}", target_flops=f, criterion=crit, recover=rec)
        for c in a.cosines:
            run(f"target-cosine {c} (defaults)", target_cosine=c)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
