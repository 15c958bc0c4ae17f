"""What machines read: the JSON schema version, provenance in the pruned model, per-group tables.

Every ``--json`` output of the command line carries ``schema_version`` (:data:`SCHEMA_VERSION`);
it changes when a field changes meaning or goes away (new fields do not change it).

A pruned model records how it was made in its ``metadata_props`` (ONNX key/value strings):

====================  ==========================================================
``onnxprune.version``  the onnxprune version that wrote it
``onnxprune.plan_digest``  SHA-256 of the plan's canonical JSON (sorted keys), hex
``onnxprune.options``  the pruning options as JSON (paths of data files, not data)
``onnxprune.source``  file name of the input model
====================  ==========================================================
"""
from __future__ import annotations

import hashlib
import json
import os

__all__ = ["SCHEMA_VERSION", "plan_digest", "provenance_props", "read_provenance", "group_table", "PREFIX"]

SCHEMA_VERSION = 1
PREFIX = "onnxprune."


def plan_digest(plan) -> str:
    """SHA-256 (hex) of a plan's canonical JSON."""
    return hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return f"<{type(v).__name__}>"  # an object handed in by a library user (a Plan, a GradientRecord)


def provenance_props(plan, options: dict, source: str) -> dict[str, str]:
    """The ``metadata_props`` entries a pruned model gets (see the module docstring)."""
    from . import __version__

    return {PREFIX + "version": __version__, PREFIX + "plan_digest": plan_digest(plan),
            PREFIX + "options": json.dumps(_jsonable(options), sort_keys=True),
            PREFIX + "source": os.path.basename(source)}


def read_provenance(path: str) -> dict:
    """The provenance entries of a model file (empty when it was not written by onnxprune)."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    out = {}
    for p in proto.metadata_props:
        if p.key.startswith(PREFIX):
            key = p.key[len(PREFIX):]
            out[key] = json.loads(p.value) if key == "options" else p.value
    return out


def group_table(an, keep_atom, cost_model) -> list[dict]:
    """Per group: name, kind, width before -> after, and the FLOPs share of the nodes it slices.

    ``flops_share_before``: FLOPs of the nodes holding a weight of the group, over the model's
    FLOPs; ``flops_share_after``: the same nodes after pruning, over the *original* FLOPs (so the
    difference is what the group's nodes gave up). A node slicing two groups (a Conv's inputs
    and outputs) counts in both, so shares do not sum to 1.
    """
    from .analysis import group_kind

    before = cost_model.node_flops()
    after = cost_model.node_flops(keep_atom)
    total = sum(before.values()) or 1
    rows = []
    for g in an.groups:
        nodes = {an.params[k].node for k in g.params}
        kept = int(keep_atom[g.atoms].sum())
        rows.append({"group": g.id, "name": an.group_name(g), "kind": group_kind(an, g), "before": g.size,
                     "after": kept, "flops_share_before": sum(before.get(n, 0) for n in nodes) / total,
                     "flops_share_after": sum(after.get(n, 0) for n in nodes) / total})
    return rows
