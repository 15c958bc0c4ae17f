"""Shapes without symbolic algebra: onnx shape inference at a representative concrete input.

The analysis needs channel extents, and index maps and costs need concrete sizes. They come from
``onnx.shape_inference.infer_shapes(data_prop=True)`` run on a weight-free skeleton of the
graph, twice when the model has dynamic input dims:

1. **declared** (``Model.sym``): inputs as declared; a dim that inference gives as a number is
   static for every input size. Values baked into the pruned graph (a Reshape target read from
   ``Shape``) are computed from these only, so the output keeps its dynamic dims.
2. **concrete** (``Model.shapes``): every dynamic input dim set to a number — the calibration or
   validation data's shape when given, else ``--dim NAME=N``, else 1 for a leading (batch) axis,
   224 for the last two axes of a 4-D input, 32 otherwise. Costs and targets use these sizes, and
   the report says which they are.

Dims still unknown after that (data-dependent ops) are filled by one onnxruntime **probe** run at
the concrete shape, only for those tensors; a probe that fails leaves them unknown (rules that
need them become barriers with the reason) and is logged, never raised.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir

from .io import one_line

__all__ = ["Dim", "Shape", "infer", "check_dim_names", "concrete_input_shapes", "has_dynamic_inputs", "skeleton", "format_shapes"]

log = logging.getLogger("onnxprune.graph")

Dim = int | str | None
Shape = tuple[Dim, ...]

# Initializers at most this big are kept in the skeleton (shape constants, split sizes...);
# bigger ones become typed inputs so inference never copies a weight.
_SKELETON_MAX_ELEMS = 4096


def format_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    """``x=1x3x224x224, mask=1x32`` (a scalar input as ``scalar``)."""
    return ", ".join(f"{k}={'x'.join(map(str, v)) or 'scalar'}" for k, v in shapes.items())


def _declared_dims(v: ir.Value) -> list | None:
    if v.shape is None:
        return None
    out = []
    for d in v.shape:
        if isinstance(d, int) and d > 0:
            out.append(int(d))
        elif isinstance(d, ir.SymbolicDim) and d.value:
            out.append(str(d.value))
        else:
            out.append(None)
    return out


def check_dim_names(model, dims: dict[str, int] | None) -> None:
    """Refuse a named dim that no graph input declares (a typo would silently change nothing)."""
    if not dims:
        return
    names = {d for v in model.graph.inputs if v.const_value is None for d in (_declared_dims(v) or [])
             if isinstance(d, str)}
    bad = [k for k in dims if k not in names]
    if bad:
        from ..errors import OnnxPruneError

        raise OnnxPruneError(f"dim(s) {', '.join(repr(b) for b in bad)} name no dynamic dim of the model's inputs; "
                             f"its dynamic dims are {', '.join(sorted(names)) or 'none'}")


def has_dynamic_inputs(model) -> bool:
    for v in model.graph.inputs:
        if v.const_value is not None:
            continue
        dims = _declared_dims(v)
        if dims is not None and any(not isinstance(d, int) for d in dims):
            return True
    return False


def default_dim(rank: int, axis: int) -> int:
    if axis == 0:
        return 1
    if rank == 4 and axis >= 2:
        return 224
    return 32


def concrete_input_shapes(model, given: dict[str, tuple[int, ...]] | None = None,
                          dims: dict[str, int] | None = None) -> dict[str, tuple[int, ...]]:
    """The concrete shape of each graph input: given > named dim value > declared > default."""
    given = dict(given or {})
    dims = dict(dims or {})
    out: dict[str, tuple[int, ...]] = {}
    for v in model.graph.inputs:
        if v.const_value is not None:
            continue
        declared = _declared_dims(v)
        if v.name in given:
            out[v.name] = tuple(int(d) for d in given[v.name])
            if declared is not None and len(declared) == len(out[v.name]):
                for d, c in zip(declared, out[v.name]):
                    if isinstance(d, str):
                        dims.setdefault(d, int(c))
            continue
        if declared is None:
            continue
        shape = []
        for axis, d in enumerate(declared):
            if isinstance(d, int):
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(int(dims[d]))
            else:
                n = default_dim(len(declared), axis)
                if isinstance(d, str):
                    dims[d] = n
                shape.append(n)
                model.concrete_defaulted = True
        out[v.name] = tuple(shape)
    return out


def skeleton(model, input_shapes: dict[str, tuple[int, ...]] | None = None,
             known: dict[str, np.ndarray] | None = None, nodes: list | None = None) -> onnx.ModelProto:
    """The graph without its big weights (declared as typed inputs), optionally at fixed input shapes.

    ``known``: small tensors whose values are known (shape arithmetic at the concrete shape):
    they become initializers and their producers are left out, so inference sees the values.
    """
    known = known or {}
    g = model.graph
    sk = onnx.GraphProto(name=g.name or "g")
    for v in g.inputs:
        if v.const_value is not None:
            continue
        vi = ir.serde.serialize_value(v)
        if input_shapes and v.name in input_shapes:
            vi.type.tensor_type.ClearField("shape")
            for d in input_shapes[v.name]:
                vi.type.tensor_type.shape.dim.add().dim_value = int(d)
        sk.input.append(vi)
    for name, v in g.initializers.items():
        t = v.const_value
        n = int(np.prod(t.shape.numpy(), dtype=np.int64)) if len(t.shape) else 1
        if n <= _SKELETON_MAX_ELEMS and not isinstance(t, ir.ExternalTensor):
            sk.initializer.append(ir.serde.serialize_tensor(t))
            sk.initializer[-1].name = name
        else:
            sk.input.append(onnx.helper.make_tensor_value_info(name, int(t.dtype), list(t.shape.numpy())))
    for name, value in known.items():
        sk.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    if nodes is None:
        nodes = [ir.serde.serialize_node(node) for node in g]
    for node in nodes:
        if known and node.output and all(o in known for o in node.output):
            continue
        sk.node.append(node)
    for v in g.outputs:
        vi = onnx.ValueInfoProto(name=v.name)
        if v.type is not None and isinstance(v.type, ir.TensorType):
            vi.type.tensor_type.elem_type = int(v.type.dtype)
        sk.output.append(vi)
    proto = onnx.ModelProto(ir_version=max(min(model.ir.ir_version, 10), 4), graph=sk)
    for domain, version in model.ir.opset_imports.items():
        proto.opset_import.append(onnx.helper.make_opsetid(domain, version))
    for f in model.ir.functions.values():
        proto.functions.append(ir.serde.serialize_function(f))
    return proto


def _dim(d) -> Dim:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param") and not d.dim_param.startswith("unk__"):
        return d.dim_param
    return None


def _collect(inferred: onnx.ModelProto) -> tuple[dict[str, Shape], dict[str, int]]:
    shapes: dict[str, Shape] = {}
    dtypes: dict[str, int] = {}
    for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if not v.type.HasField("tensor_type"):
            continue
        tt = v.type.tensor_type
        if tt.elem_type:
            dtypes[v.name] = tt.elem_type
        if tt.HasField("shape"):
            shapes[v.name] = tuple(_dim(d) for d in tt.shape.dim)
    return shapes, dtypes


def _run_inference(proto: onnx.ModelProto, what: str, notes: list[str]) -> tuple[dict[str, Shape], dict[str, int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # inference is best effort: rules that need shapes will say so
        msg = f"onnx shape inference ({what}) failed: {one_line(e)[:200]}"
        log.info(msg)
        notes.append(msg)
        inferred = proto
    return _collect(inferred)


def infer(model, concrete: dict[str, tuple[int, ...]] | None = None, dims: dict[str, int] | None = None,
          declared_only: bool = False) -> None:
    """Fill ``model.sym``, ``model.shapes``, ``model.dtypes`` and ``model.concrete``.

    ``declared_only`` (after a rewrite: value_info and the graph-output check need no more)
    skips the concrete pass and the probe.
    """
    notes: list[str] = []
    nodes = [ir.serde.serialize_node(node) for node in model.graph]  # once for every pass
    sym, dtypes = _run_inference(skeleton(model, nodes=nodes), "declared shapes", notes)
    known: dict[str, np.ndarray] = {}
    for _ in range(32):  # static shape arithmetic data propagation missed (TorchScript's chunk bounds)
        more = {k: v for k, v in _known_values(model, sym, declared=True).items() if k not in known}
        if not more:
            break
        known.update(more)
        sym, dt2 = _run_inference(skeleton(model, known=known, nodes=nodes), "declared shapes", notes)
        for k, v in dt2.items():
            dtypes.setdefault(k, v)
        for k, v in known.items():
            sym.setdefault(k, tuple(np.shape(v)))
    shapes = sym
    if declared_only:
        concrete = None
    else:
        model.concrete = {}
    if not declared_only and (has_dynamic_inputs(model) or concrete):
        model.concrete_defaulted = False
        model.concrete = concrete_input_shapes(model, concrete, dims)
        shapes = _concrete_pass(model, model.concrete, dtypes, notes, nodes)
        # a second concrete pass with every dynamic input dim doubled: dims that change with it
        # are dynamic even where the declared pass lost their symbol (Conv over a dynamic H)
        other = _concrete_pass(model, _doubled(model), dtypes, [], nodes, rounds=3)
        model.varying = {n: frozenset(k for k, (a, b) in enumerate(zip(s, other[n])) if a != b)
                         for n, s in shapes.items() if n in other and len(other[n]) == len(s)}
    elif not declared_only:
        model.varying = {}
    for name, v in model.graph.initializers.items():
        shape = tuple(int(d) for d in v.const_value.shape)
        shapes[name] = sym[name] = shape
        dtypes[name] = int(v.const_value.dtype)
    for node in model.constant_nodes():
        arr = model.const(node.outputs[0].name)
        if arr is not None:
            shapes[node.outputs[0].name] = sym[node.outputs[0].name] = tuple(arr.shape)
    for node in model.graph:  # element types onnx did not infer, from the model's own value_info
        for v in node.outputs:
            if v.name and v.name not in dtypes and isinstance(v.type, ir.TensorType):
                dtypes[v.name] = int(v.type.dtype)
    model.dtypes = dtypes
    unknown = [n for n, s in shapes.items() if any(d is None or isinstance(d, str) for d in s) and n in dtypes]
    unknown += [v.name for node in model.graph for v in node.outputs
                if v.name and v.name not in shapes and v.name in dtypes and not model.is_const(v.name)]
    if unknown and not declared_only:
        shapes.update(_probe(model, unknown, shapes, dtypes, notes))
    model.sym, model.shapes, model.dtypes = sym, shapes, dtypes
    model.shape_notes = notes


def _concrete_pass(model, input_shapes, dtypes: dict[str, int], notes: list[str], nodes: list,
                   rounds: int = 3) -> dict[str, Shape]:
    shapes, dt2 = _run_inference(skeleton(model, input_shapes, nodes=nodes), "concrete shapes", notes)
    for k, v in dt2.items():
        dtypes.setdefault(k, v)
    known: dict[str, np.ndarray] = {}
    for _ in range(rounds):  # shape arithmetic onnx's data propagation missed: evaluate it, infer again
        more = {k: v for k, v in _known_values(model, shapes).items() if k not in known}
        if not more:
            break
        known.update(more)  # (values of earlier rounds stay: their readers' shapes may depend on them)
        shapes, dt2 = _run_inference(skeleton(model, input_shapes, known, nodes), "concrete shapes", notes)
        for k, v in dt2.items():
            dtypes.setdefault(k, v)
        for k, v in known.items():
            shapes.setdefault(k, tuple(np.shape(v)))
        if not any(_unknown_dims(s) for s in shapes.values()):
            break
    return shapes


def _doubled(model) -> dict[str, tuple[int, ...]]:
    """The concrete input shapes with every dynamic (declared) dim doubled."""
    out = {}
    for v in model.graph.inputs:
        if v.name not in model.concrete:
            continue
        declared = _declared_dims(v) or [None] * len(model.concrete[v.name])
        out[v.name] = tuple(d if isinstance(dd, int) else 2 * d for d, dd in zip(model.concrete[v.name], declared))
    return out


def _unknown_dims(s) -> bool:
    return any(d is None or isinstance(d, str) for d in s)


def _known_values(model, shapes: dict[str, Shape], declared: bool = False) -> dict[str, np.ndarray]:
    """Small integer tensors computable at the concrete shapes, feeding a tensor of unknown shape.

    ``declared``: at the declared shapes, where a named (dynamic) dim is known to be dynamic: only
    values that read static dims alone, feeding a tensor with a dim inference could not name.
    """
    from .consts import partial

    def shape_of(name):
        s = shapes.get(name)
        if declared:
            return s
        return s if s is not None and not _unknown_dims(s) else None

    def _unknown_dims(s):
        return any(d is None for d in s) if declared else any(d is None or isinstance(d, str) for d in s)

    memo: dict = {}
    out: dict[str, np.ndarray] = {}
    for node in model.graph:
        if node.op_type == "Constant" or len(node.outputs) != 1 or not node.outputs[0].name:
            continue
        name = node.outputs[0].name
        s = shapes.get(name)
        if model.is_const(name) or (s is not None and len(s) > 1):
            continue
        if s is not None and not _unknown_dims(s) and not any(
                _unknown_dims(shapes.get(u.outputs[0].name, (None,))) for u, _ in model.uses(name) if u.outputs):
            continue  # known shape, and its readers are known too
        try:
            v = partial(model, name, shape_of, memo)
        except Exception as e:  # best effort: an unknown value leaves inference where it was
            log.debug("value of '%s' not evaluated for shape inference (%s: %s)", name, type(e).__name__, e)
            v = None
        if v is not None and v.dtype != object and v.dtype.kind in "iu" and v.size <= 64:
            out[name] = v
    return out


def _probe(model, names: list[str], shapes: dict[str, Shape], dtypes: dict[str, int],
           notes: list[str]) -> dict[str, Shape]:
    """Run the model once at the concrete input shape to read dims inference left unknown."""
    from ..validate.inputs import InputSpec, random_dataset
    from ..validate.runtime import make_session

    feeds_shapes = model.concrete or concrete_input_shapes(model)
    if any(v.name not in feeds_shapes for v in model.graph.inputs if v.const_value is None):
        notes.append("shape probe skipped: an input has no declared rank")
        return {}
    blob = model.serialized_with_outputs(names, only=True)
    try:
        sess = make_session(blob, "cpu", quiet=True, optimize=False)
        specs = [InputSpec(s.name, feeds_shapes[s.name], s.dtype) for s in InputSpec.from_session(sess)]
        outs = sess.run(names, random_dataset(specs).batches[0])
    except Exception as e:
        msg = (f"shape probe at {format_shapes(feeds_shapes)} failed: give --calib data or --dim NAME=N with the "
               f"model's real input size (onnxruntime: {one_line(e)[:160]})")
        log.info(msg)
        notes.append(msg)
        return {}
    result: dict[str, Shape] = {}
    for n, o in zip(names, outs):
        old = shapes.get(n, (None,) * len(o.shape))
        if len(o.shape) == len(old):
            result[n] = tuple(d if isinstance(d, int) else int(x) for d, x in zip(old, o.shape))
    notes.append(f"{len(result)} tensor shape(s) read from a probe run at {format_shapes(feeds_shapes)}")
    return result
