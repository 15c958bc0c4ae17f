"""Peak memory of ``inspect`` and ``prune`` on a model with more than 2 GB of external data.

Generates (in a temporary folder, sparse data file: no real disk or page cost until read) a chain
of MatMul+Relu layers whose weights live in one external-data file, then runs each command in a
child process and reads that child's peak RSS (``os.wait4``'s rusage, file-backed mmap pages
included). The budget is 1.5 × (largest coupled group's tensor bytes + the graph's bytes).

    python scripts/big_model.py [--hidden 14336] [--layers 4] [--ratio 0.5] [--keep DIR]

``--hidden 512`` makes the small variant the slow-marked test runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(folder: str, hidden: int, layers: int) -> str:
    """``layers`` MatMul(H×H) + Relu; weights in ``big.onnx.data`` (a sparse file, values 0 but for a
    few written rows so scores differ)."""
    path = os.path.join(folder, "big.onnx")
    data = os.path.join(folder, "big.onnx.data")
    nbytes = hidden * hidden * 4
    inits, nodes, x = [], [], "x"
    with open(data, "wb") as f:
        f.truncate(nbytes * layers)
        rng = np.random.default_rng(0)
        for k in range(layers):
            t = TensorProto(name=f"w{k}", data_type=TensorProto.FLOAT, dims=[hidden, hidden])
            t.data_location = TensorProto.EXTERNAL
            for key, v in (("location", "big.onnx.data"), ("offset", str(k * nbytes)), ("length", str(nbytes))):
                t.external_data.add(key=key, value=v)
            inits.append(t)
            f.seek(k * nbytes)  # one row of values: channel scores are not all equal
            f.write(rng.standard_normal(hidden).astype(np.float32).tobytes())
            y = f"h{k}"
            nodes.append(helper.make_node("MatMul", [x, f"w{k}"], [y + "_mm"], name=f"mm{k}"))
            nodes.append(helper.make_node("Relu", [y + "_mm"], [y], name=f"relu{k}"))
            x = y
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, hidden])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, hidden])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    return path


def largest_group_bytes(path: str) -> tuple[int, int]:
    """(bytes of the tensors of the largest coupled group, graph bytes) — from onnxprune's analysis
    on the model, data never read (shapes only)."""
    sys.path.insert(0, ROOT)
    from onnxprune.analysis import analyze
    from onnxprune.graph import load_model

    m = load_model(path)
    an = analyze(m)
    per_group: dict[int, set[str]] = {}
    for p in an.params:
        if p.labels.size:
            for gid in np.unique(an.group_of_atom[an.atom_of_label[p.labels]]).tolist():
                per_group.setdefault(gid, set()).add(p.tensor)
    sizes = {}
    for gid, names in per_group.items():
        sizes[gid] = sum(int(np.prod(m.const_shape(n))) * 4 for n in names)
    return max(sizes.values()), os.path.getsize(path)


def peak_rss(argv: list[str]) -> tuple[int, float, int]:
    """(exit code, seconds, peak RSS bytes) of one child process."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "onnxprune", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        print(err, file=sys.stderr)
    return proc.returncode, time.time() - t0, usage.ru_maxrss * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=14336)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ratio", default="0.5")
    ap.add_argument("--keep", help="work in this folder and keep the files")
    a = ap.parse_args()
    work = a.keep or tempfile.mkdtemp(prefix="onnxprune-big-")
    os.makedirs(work, exist_ok=True)
    try:
        path = make(work, a.hidden, a.layers)
        data = os.path.getsize(os.path.join(work, "big.onnx.data"))
        group, graph = largest_group_bytes(path)
        budget = 1.5 * (group + graph)
        print(f"model: {a.layers} x MatMul {a.hidden}x{a.hidden}, external data {data / 2**30:.2f} GiB, "
              f"largest coupled group {group / 2**30:.3f} GiB, graph {graph:,} bytes, "
              f"budget 1.5x = {budget / 2**30:.3f} GiB")
        worst = 0.0
        for name, argv in (("inspect", ["inspect", path]),
                           ("prune", ["prune", path, "-o", os.path.join(work, "out.onnx"), "--ratio", a.ratio])):
            rc, secs, rss = peak_rss(argv)
            worst = max(worst, rss / budget)
            print(f"{name}: exit {rc}, {secs:.1f} s, peak RSS {rss / 2**30:.3f} GiB = {rss / budget:.2f} of budget")
            if rc:
                return 1
        out = os.path.join(work, "out.onnx")
        onnx.checker.check_model(out, full_check=True)
        print(f"output: {out} + data {sum(os.path.getsize(os.path.join(work, f)) for f in os.listdir(work) if f.startswith('out.onnx.')) / 2**30:.2f} GiB, checker ok")
        print("PASS" if worst <= 1.0 else "OVER BUDGET")
        return 0 if worst <= 1.0 else 2
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
