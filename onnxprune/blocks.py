"""Residual blocks ``y = x + F(x)`` (CNN and transformer), found structurally and ranked.

A block is an ``Add`` of a skip tensor x and a branch output f where F (the nodes computing f
that are not ancestors of x) feeds nothing but the Add: bypassing the block (``y = x``) then
leaves the rest of the graph intact. F may read other tensors (an attention mask, a shared
position table); projection shortcuts (x itself a Conv of the block input) are not blocks.

Ranking, least important first:

* ``cosine``: mean cosine similarity between x and y per sample on calibration data — a block
  that barely changes its input goes first (ShortGPT's block influence);
* ``error``: the relative squared change of the model outputs when the block alone is bypassed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Model, inp, out
from .errors import PlanError

__all__ = ["Block", "find_blocks", "rank_blocks", "block_flops"]


@dataclass(frozen=True)
class Block:
    add: str  # name of the Add node
    skip: str  # x
    branch: str  # f = F(x)
    out: str  # y
    nodes: tuple[str, ...]  # F's node names

    def to_dict(self) -> dict:
        return {"add": self.add, "skip": self.skip, "branch": self.branch, "nodes": len(self.nodes)}


def _ancestors(model: Model, tensor: str) -> set[str]:
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        p = model.producer(t)
        if p is not None:
            stack.extend(x.name for x in p.inputs if x is not None)
    return seen


def find_blocks(model: Model) -> list[Block]:
    if not model.shapes:
        model.infer()
    blocks = []
    order = {n: k for k, n in enumerate(model.graph)}  # graph position: a block lists F's nodes in order
    for node in model.graph:
        ins = [inp(node, 0), inp(node, 1)] if len(node.inputs) == 2 else []
        if node.op_type != "Add" or not all(ins) or any(model.is_const(t) for t in ins):
            continue
        for x, f in (ins, ins[::-1]):
            if model.shape(x) is None or model.shape(x) != model.shape(f) or model.shape(x) != model.shape(out(node)):
                continue
            outside = _ancestors(model, x)
            if f in outside:
                continue
            body, stack = set(), [f]
            while stack:
                t = stack.pop()
                p = model.producer(t)
                if t in outside or p is None or model.is_const(t):
                    continue
                if p not in body:
                    body.add(p)
                    stack.extend(v.name for v in p.inputs if v is not None)
            # nodes also feeding the rest of the graph (a mask every layer reads) are shared inputs,
            # not part of F: drop them until every node left feeds only F or the Add
            changed = True
            while changed:
                changed = False
                for p in list(body):
                    for o in (v.name for v in p.outputs):
                        if model.is_graph_output(o) or any(
                                u not in body and not (u is node and o == f) for u, _ in model.uses(o)):
                            body.discard(p)
                            changed = True
                            break
            if model.producer(f) not in body:
                continue
            if not any(any(v is not None and v.name == x for v in p.inputs) for p in body):
                continue  # F must read x
            if [u for u, _ in model.uses(f)] == [node]:
                blocks.append(Block(model.node_name(node), x, f, out(node),
                                    tuple(model.node_name(p) for p in sorted(body, key=order.__getitem__))))
                break
    return blocks


def block_flops(model: Model, block: Block) -> int:
    """FLOPs saved by bypassing ``block`` (its nodes and its Add)."""
    from .cost import CostModel, node_cost

    names = set(block.nodes) | {block.add}
    shape_of = CostModel(model).shape_fn()
    total = 0
    for node in model.graph:
        if model.node_name(node) in names:
            c = node_cost(model, node, shape_of)
            if c is not None:
                total += 2 * c[0] + c[1]
    return total


def _bypassed_bytes(model: Model, blocks: list[Block]) -> bytes:
    from .rewrite.blocks import bypass

    copy = Model(model.to_proto())
    bypass(copy, blocks)
    return copy.to_proto().SerializeToString()


def rank_blocks(model: Model, blocks: list[Block], calibration, metric: str = "cosine") -> list[tuple[Block, float]]:
    """(block, importance) pairs, least important first."""
    from .validate.runtime import make_session

    if metric not in ("cosine", "error"):
        raise PlanError(f"unknown block metric '{metric}'; use cosine or error")
    batches = list(calibration.batches())
    scores = []
    if metric == "cosine":
        wanted = list(dict.fromkeys(t for b in blocks for t in (b.skip, b.out)))
        sess = make_session(model.serialized_with_outputs(wanted), "cpu")
        names = [o.name for o in sess.get_outputs()]
        sims = {b.add: [] for b in blocks}
        for feeds in batches:
            outs = dict(zip(names, sess.run(names, feeds)))
            outs.update(feeds)
            for b in blocks:
                x = outs[b.skip].reshape(outs[b.skip].shape[0], -1).astype(np.float64)
                y = outs[b.out].reshape(outs[b.out].shape[0], -1).astype(np.float64)
                den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
                sims[b.add].extend((np.sum(x * y, axis=1) / np.maximum(den, 1e-30)).tolist())
        scores = [(b, 1.0 - float(np.mean(sims[b.add]))) for b in blocks]
    else:
        base_sess = make_session(model.to_proto().SerializeToString(), "cpu")
        base = [base_sess.run(None, f) for f in batches]
        den = sum(float(np.sum(np.square(y.astype(np.float64)))) for o in base for y in o)
        for b in blocks:
            sess = make_session(_bypassed_bytes(model, [b]), "cpu")
            num = sum(float(np.sum(np.square(y.astype(np.float64) - y0)))
                      for f, o0 in zip(batches, base) for y, y0 in zip(sess.run(None, f), o0))
            scores.append((b, num / max(den, 1e-30)))
    return sorted(scores, key=lambda bs: bs[1])
