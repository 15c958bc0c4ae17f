"""MACs of every node of a model before and after pruning (matched by node name), with each node's
share of the original total: where the MACs that a pruned model keeps are.

Usage::

    python -m onnxprune prune MODEL.onnx -o PRUNED.onnx --ratio 0.5 --round-to 8
    python scripts/macs_per_node.py MODEL.onnx PRUNED.onnx [--all]

Nodes without MACs (element-wise ops) are left out unless ``--all``. Both models are counted at the
concrete input shape the analysis uses (``onnxprune inspect`` prints it).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onnxprune.cost import node_cost  # noqa: E402
from onnxprune.graph import load_model  # noqa: E402


def per_node(path: str) -> dict[str, tuple[str, int]]:
    m = load_model(path)
    m.infer()
    shapes = {n: tuple(d if isinstance(d, int) else 1 for d in s) for n, s in m.shapes.items()}
    for name, v in m.graph.initializers.items():
        if v.const_value is not None:
            shapes.setdefault(name, tuple(v.const_value.shape))
    out = {}
    for node in m.graph:
        c = node_cost(m, node, shapes.get)
        out[m.node_name(node)] = (node.op_type, c[0] if c else 0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("pruned")
    ap.add_argument("--all", action="store_true", help="also list nodes without MACs")
    a = ap.parse_args(argv)
    before, after = per_node(a.model), per_node(a.pruned)
    total_b = sum(v[1] for v in before.values())
    total_a = sum(v[1] for v in after.values())
    print(f"| node | op | MACs before | MACs after | kept | share of original |\n|---|---|---|---|---|---|")
    for name, (op, macs) in before.items():
        if not macs and not a.all:
            continue
        kept = after.get(name, (op, 0))[1]
        print(f"| {name} | {op} | {macs} | {kept if name in after else 'removed'} | "
              f"{kept / macs if macs else 1:.3f} | {macs / total_b if total_b else 0:.4f} |")
    print(f"| total | | {total_b} | {total_a} | {total_a / total_b if total_b else 1:.4f} | 1 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
