"""The one adapter over the ONNX graph IR: load/save, constants, use-def indices, shapes.

Everything else in onnxprune reads graphs through :class:`Model`; only ``rewrite/`` calls its
mutating methods (``set_const``, ``set_attr``, ``finalize``).

Weights may be initializers or ``Constant`` nodes (PaddlePaddle and some other exporters emit
only the latter); old model-zoo files also list initializers as graph inputs. ``Model.const``
hides those differences.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.external_data_helper
from onnx import helper, numpy_helper

from .errors import UnsupportedModelError, ValidationError

__all__ = ["Model", "load_model", "save_model", "infer_shapes", "Dim", "Shape"]

Dim = int | str | None
Shape = tuple[Dim, ...]

MIN_OPSET = 9
_TWO_GB = 2**31
# Initializers at most this big are copied into the shape-inference skeleton (shape constants,
# split sizes...); bigger ones are declared as typed inputs so no weight is copied.
_SKELETON_MAX_ELEMS = 4096


@dataclass(frozen=True)
class Use:
    """One use of a tensor: node index and input position."""

    node: int
    index: int


class Model:
    """A loaded ONNX model with use-def indices.

    Args:
        proto: the model; it is owned (and, by the rewrite, changed in place) by this object.
        path: the file it came from, for messages and external data.
    """

    def __init__(self, proto: onnx.ModelProto, path: str | None = None) -> None:
        self.proto = proto
        self.path = path
        self.graph = proto.graph
        self.opset = _default_opset(proto)
        self._cache: dict[str, np.ndarray] = {}
        self.shapes: dict[str, Shape] = {}
        self.dtypes: dict[str, int] = {}
        self.external_data = False  # weights were stored beside the model file
        self.reindex()

    # ------------------------------------------------------------------ indices
    def reindex(self) -> None:
        """Rebuild the name -> producer/consumer/constant indices after a structural change."""
        g = self.graph
        self.nodes = list(g.node)
        self.initializers = {t.name: t for t in g.initializer}
        self.constant_nodes: dict[str, int] = {}
        self.alias: dict[str, str] = {}  # Identity(constant) output -> the constant
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[Use]] = {}
        self.captured: dict[int, set[str]] = {}  # node -> outer names its subgraphs read
        for i, n in enumerate(self.nodes):
            for out in n.output:
                if out:
                    self.producer[out] = i
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                self.constant_nodes[n.output[0]] = i
            elif n.op_type == "Identity" and n.input and n.output and n.domain in ("", "ai.onnx"):
                src = self.alias.get(n.input[0], n.input[0])
                if src in self.initializers or src in self.constant_nodes:
                    self.alias[n.output[0]] = src
            for j, name in enumerate(n.input):
                if name:
                    self.consumers.setdefault(name, []).append(Use(i, j))
            for sub in _subgraphs(n):
                for name in _outer_names(sub):
                    self.consumers.setdefault(name, []).append(Use(i, -1))
                    self.captured.setdefault(i, set()).add(name)
        self.graph_inputs = [v.name for v in g.input if v.name not in self.initializers]
        self.graph_outputs = [v.name for v in g.output]
        self._output_set = set(self.graph_outputs)

    def node_name(self, i: int) -> str:
        """A readable, stable name for node ``i`` (its name, or ``OpType_i`` when unnamed)."""
        n = self.nodes[i]
        return n.name or f"{n.op_type}_{i}"

    def is_graph_output(self, name: str) -> bool:
        return name in self._output_set

    def uses(self, name: str) -> list[Use]:
        return self.consumers.get(name, [])

    # ---------------------------------------------------------------- constants
    def is_const(self, name: str) -> bool:
        return bool(name) and (name in self.initializers or name in self.constant_nodes or name in self.alias)

    def resolve(self, name: str) -> str:
        """The constant behind an ``Identity(constant)`` chain (exporters dedupe weights so)."""
        return self.alias.get(name, name)

    def const_users(self, name: str) -> set[int]:
        """Nodes reading a constant directly or through Identity aliases (the aliases excluded)."""
        root = self.resolve(name)
        names = [root] + [a for a, src in self.alias.items() if src == root]
        users = set()
        for n in names:
            for u in self.uses(n):
                node = self.nodes[u.node]
                if not (node.op_type == "Identity" and node.output and node.output[0] in self.alias):
                    users.add(u.node)
        return users

    def const_is_output(self, name: str) -> bool:
        root = self.resolve(name)
        return any(self.is_graph_output(n) for n in [root] + [a for a, s in self.alias.items() if s == root])

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer, Constant node or Identity of one), else None."""
        if not name:
            return None
        name = self.resolve(name)
        arr = self._cache.get(name)
        if arr is not None:
            return arr
        if name in self.initializers:
            arr = numpy_helper.to_array(self.initializers[name], base_dir=self._base_dir())
        elif name in self.constant_nodes:
            arr = _constant_node_value(self.nodes[self.constant_nodes[name]])
        else:
            return None
        self._cache[name] = arr
        return arr

    def value(self, name: str) -> np.ndarray | None:
        """A constant's value, or the value of a small integer subgraph over static shapes.

        Exporters compute shape operands at run time (``Shape → Gather → Add → Concat``); when
        every dim such a subgraph reads is static, its value is known. Rules read shape-like
        operands (Reshape targets, Slice bounds, Split sizes, Expand shapes) through this; a
        rewrite that changes such an operand replaces it with a constant.
        """
        v = self.const(name)
        if v is not None or not name:
            return v
        v = _partial(self, name)
        if v is None or (v.dtype == object and any(x is None for x in v.ravel())):
            return None
        return v.astype(np.int64) if v.dtype == object else v

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        name = self.resolve(name)
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        arr = self.const(name)
        return None if arr is None else tuple(arr.shape)

    def set_const(self, name: str, value: np.ndarray) -> None:
        """Replace a constant's value in place, wherever it is stored."""
        name = self.resolve(name)
        value = np.ascontiguousarray(value)
        if name in self.initializers:
            old = self.initializers[name]
            value = value.astype(_np_dtype(old.data_type), copy=False)
            new = numpy_helper.from_array(value, name)
            old.CopyFrom(new)
            for v in self.graph.input:  # IR < 4: initializers are listed as inputs too
                if v.name == name:
                    _set_value_info_shape(v, value.shape)
        elif name in self.constant_nodes:
            node = self.nodes[self.constant_nodes[name]]
            old_arr = self.const(name)
            value = value.astype(old_arr.dtype if old_arr is not None else value.dtype, copy=False)
            del node.attribute[:]
            node.attribute.append(
                helper.make_attribute("value", numpy_helper.from_array(value, name))
            )
        else:
            raise KeyError(name)
        self._cache[name] = value

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        """Add a new initializer with a unique name derived from ``base``; return the name."""
        name = self.unique_name(base)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        self.initializers[name] = self.graph.initializer[-1]
        self._cache[name] = value
        return name

    def unique_name(self, base: str) -> str:
        taken = set(self.initializers) | set(self.producer) | set(self.graph_inputs)
        i = 0
        while f"{base}__p{i}" in taken:
            i += 1
        return f"{base}__p{i}"

    # --------------------------------------------------------------- attributes
    def attr(self, node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def set_attr(self, node: onnx.NodeProto, name: str, value) -> None:
        for k, a in enumerate(node.attribute):
            if a.name == name:
                node.attribute[k].CopyFrom(helper.make_attribute(name, value))
                return
        node.attribute.append(helper.make_attribute(name, value))

    # ------------------------------------------------------------------- shapes
    def infer(self) -> None:
        """Run shape inference (on a weight-free skeleton) and record every tensor's shape."""
        self.shapes, self.dtypes = infer_shapes(self.proto)
        for name, t in self.initializers.items():
            self.shapes[name] = tuple(t.dims)
            self.dtypes[name] = t.data_type
        for name, i in self.constant_nodes.items():
            arr = self.const(name)
            if arr is not None:
                self.shapes[name] = tuple(arr.shape)

    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        s = self.shapes.get(name)
        if s is None or any(not isinstance(d, int) for d in s):
            return None
        return s  # type: ignore[return-value]

    # ---------------------------------------------------------------- helpers
    def _base_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path)) if self.path else ""

    def drop_caches(self) -> None:
        self._cache.clear()
        self.__dict__.pop("_static", None)


# ------------------------------------------------------------------------ load/save
def load_model(path: str | os.PathLike) -> Model:
    """Load a model with its external data, checking it is an ONNX model we can handle.

    Raises:
        UnsupportedModelError: missing/unreadable file, not ONNX, checker failure, opset < 9.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UnsupportedModelError(f"{path}: no such file; give the path of an .onnx model")
    try:
        proto = onnx.load(path, load_external_data=False)
        external = any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
        if external:
            onnx.external_data_helper.load_external_data_for_model(proto, os.path.dirname(os.path.abspath(path)))
    except Exception as e:  # protobuf DecodeError, missing external data...
        raise UnsupportedModelError(
            f"{path}: cannot be read as an ONNX model ({type(e).__name__}: {_one_line(e)})"
        ) from None
    if not proto.graph.node:
        raise UnsupportedModelError(f"{path}: the graph has no nodes; is this an ONNX model?")
    try:
        onnx.checker.check_model(path)
    except Exception as e:
        raise UnsupportedModelError(
            f"{path}: fails the ONNX checker: {_one_line(e)}; fix or re-export the model"
        ) from None
    opset = _default_opset(proto)
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"{path}: opset {opset} is older than {MIN_OPSET}; convert it first with "
            f"onnx.version_converter.convert_version(model, {MIN_OPSET})"
        )
    model = Model(proto, path)
    model.external_data = external
    return model


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None,
               check: bool = True) -> None:
    """Write a model atomically: to a temporary folder, check it, then rename into place.

    The file at ``path`` (and its ``.data`` companion) is replaced only when the new model
    passes ``onnx.checker.check_model(full_check=True)``.

    Args:
        model: the model to write.
        path: destination.
        external_data: store weights in ``<name>.data`` beside the model; by default only when
            the model would pass the 2 GB protobuf limit.
        check: run the full checker on the written file before renaming.

    Raises:
        ValidationError: the checker rejected the model; nothing is written.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValidationError(f"{path}: folder {folder} does not exist")
    if external_data is None:
        external_data = _weights_bytes(model) > _TWO_GB - (64 << 20)
    name = os.path.basename(path)
    tmpdir = tempfile.mkdtemp(prefix=".onnxprune-", dir=folder)
    try:
        tmp = os.path.join(tmpdir, name)
        data_name = name + ".data"
        if external_data:
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            onnx.save_model(model, tmp)
        if check:
            try:
                onnx.checker.check_model(tmp, full_check=True)
            except Exception as e:
                raise ValidationError(
                    f"the rewritten model fails onnx.checker (full_check): {_one_line(e)}; "
                    f"nothing was written to {path}"
                ) from None
        if external_data:
            os.replace(os.path.join(tmpdir, data_name), os.path.join(folder, data_name))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ------------------------------------------------------------------------- shapes
def infer_shapes(proto: onnx.ModelProto) -> tuple[dict[str, Shape], dict[str, int]]:
    """Shapes and element types of every tensor, inferred on a skeleton of the model.

    The skeleton keeps the nodes and the small initializers (shape constants) and declares big
    initializers as typed graph inputs, so inference never copies or serialises the weights.
    """
    g = proto.graph
    skel_graph = onnx.GraphProto(name=g.name)
    skel_graph.node.extend(g.node)
    skel_graph.output.extend(g.output)
    input_names = set()
    for v in g.input:
        skel_graph.input.append(v)
        input_names.add(v.name)
    for t in g.initializer:
        n_elems = int(np.prod(t.dims)) if len(t.dims) else 1
        if n_elems <= _SKELETON_MAX_ELEMS and t.data_location != onnx.TensorProto.EXTERNAL:
            skel_graph.initializer.append(t)
        elif t.name not in input_names:
            skel_graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    skel = onnx.ModelProto()
    skel.ir_version = max(proto.ir_version, 4)
    skel.opset_import.extend(proto.opset_import)
    skel.functions.extend(proto.functions)
    skel.graph.CopyFrom(skel_graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(skel, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception:  # inference is best effort here; rules needing shapes will say so
        inferred = skel
    shapes, dtypes = _collect(inferred)
    if any(d is None or (isinstance(d, str) and d.startswith("unk__")) for s in shapes.values() for d in s):
        # onnx gave up on some dims (run-time shape arithmetic, masks): onnxruntime's symbolic
        # inference tracks them through Shape/Gather/Concat/Where and usually resolves them
        sym = _symbolic(skel)
        for name, shape in sym[0].items():
            old = shapes.get(name)
            if old is None or any(d is None or (isinstance(d, str) and d.startswith("unk__")) for d in old):
                shapes[name] = shape
        for name, t in sym[1].items():
            dtypes.setdefault(name, t)
    unknown = [n for n, s in shapes.items() if any(_unknown(d) for d in s) and dtypes.get(n)]
    if unknown:
        for name, shape in _probe(proto, unknown, shapes, dtypes).items():
            shapes[name] = shape
    return shapes, dtypes


def _unknown(d) -> bool:
    return d is None or (isinstance(d, str) and d.startswith("unk__"))


_PROBES = ((2, 7, 11, 13, 17), (3, 5, 19, 23, 29))


def _probe(proto: onnx.ModelProto, names: list[str], shapes: dict[str, Shape], dtypes: dict[str, int]) -> dict[str, Shape]:
    """Resolve dims inference left unknown by running the model at two sizes.

    Each named dynamic dim of the graph inputs gets a distinct prime in each of two runs; an
    unknown dim that equals the same input dim in both runs takes that dim's name, one that is
    the same number in both runs is taken as static. (Evidence, not proof: used only where
    static inference gave up; a model that does not run here is left as it was.)
    """
    try:
        from .validate.runtime import make_session
    except ImportError:  # pragma: no cover
        return {}
    inits = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in inits]
    symbols: list[str] = []
    for v in inputs:
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param not in symbols:
                symbols.append(d.dim_param)
    if not symbols or len(symbols) > len(_PROBES[0]):
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    del probe.graph.output[:]
    for n in names:
        probe.graph.output.append(helper.make_tensor_value_info(n, dtypes[n], None))
    try:
        blob = probe.SerializeToString()
        sess = make_session(blob, "cpu")
    except Exception:
        return {}
    runs = []
    rng = np.random.default_rng(0)
    for sizes in _PROBES:
        value = dict(zip(symbols, sizes))
        feeds = {}
        for v in inputs:
            tt = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else value.get(d.dim_param, 1) for d in tt.shape.dim]
            dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
            feeds[v.name] = (rng.integers(0, 2, dims) if dtype.kind in "iub" else rng.standard_normal(dims)).astype(dtype)
        try:
            runs.append((value, dict(zip(names, (o.shape for o in sess.run(names, feeds))))))
        except Exception:
            return {}
    out: dict[str, Shape] = {}
    (va, sa), (vb, sb) = runs
    for n in names:
        a, b, old = sa[n], sb[n], shapes[n]
        if len(a) != len(old):
            continue
        dims = []
        for d, x, y in zip(old, a, b):
            if not _unknown(d):
                dims.append(d)
            elif x == y:
                dims.append(int(x))
            else:
                match = [s for s in symbols if va[s] == x and vb[s] == y]
                dims.append(match[0] if match else d)
        out[n] = tuple(dims)
    return out


def _collect(inferred: onnx.ModelProto) -> tuple[dict[str, Shape], dict[str, int]]:
    shapes: dict[str, Shape] = {}
    dtypes: dict[str, int] = {}
    for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = v.type.tensor_type
        if not v.type.HasField("tensor_type"):
            continue
        dtypes[v.name] = tt.elem_type
        if tt.HasField("shape"):
            shapes[v.name] = tuple(_dim(d) for d in tt.shape.dim)
    return shapes, dtypes


def _symbolic(skel: onnx.ModelProto) -> tuple[dict[str, Shape], dict[str, int]]:
    try:
        import contextlib
        import io

        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with contextlib.redirect_stdout(io.StringIO()):
            out = SymbolicShapeInference.infer_shapes(skel, auto_merge=True, guess_output_rank=False)
    except Exception:  # unsupported op, missing sympy...: keep onnx's answer
        return {}, {}
    if out is None:
        return {}, {}
    shapes, dtypes = _collect(out)
    return {k: v for k, v in shapes.items() if all(d is not None for d in v)}, dtypes


def value_infos(model: Model) -> list[onnx.ValueInfoProto]:
    """value_info for intermediate tensors from ``model.shapes`` (call ``model.infer()`` first)."""
    proto = model.proto
    skip = {v.name for v in proto.graph.input} | {v.name for v in proto.graph.output}
    skip |= {t.name for t in proto.graph.initializer}
    out = []
    for n in proto.graph.node:
        for name in n.output:
            if name and name not in skip and name in model.dtypes:
                shape = model.shapes.get(name)
                out.append(helper.make_tensor_value_info(name, model.dtypes[name],
                                                         None if shape is None else list(shape)))
    return out


# ------------------------------------------------------------- static shape values
_MAX_STATIC = 64  # elements: shape arithmetic, not tensors


def _partial(model: Model, name: str) -> np.ndarray | None:
    """Known value of ``name``; a Shape's unknown (symbolic) dims are None in an object array."""
    v = model.const(name)
    if v is not None:
        return v
    memo = model.__dict__.setdefault("_static", {})
    if name not in memo:
        memo[name] = None  # cycles/unknowns stay None
        r = _static_eval(model, name)
        if r is not None:
            r = np.asarray(r)
            if r.dtype == object and all(x is not None for x in r.ravel()):
                r = r.astype(np.int64)
        memo[name] = r
    return memo[name]


def _static_eval(model: Model, name: str) -> np.ndarray | None:
    if name not in model.producer:
        return None
    node = model.nodes[model.producer[name]]
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    if op == "Shape":
        shape = model.shape(node.input[0])
        if shape is None:
            return None
        start = int(model.attr(node, "start", 0))
        end = model.attr(node, "end")
        dims = list(shape)[start:None if end is None else int(end)]
        if all(isinstance(d, int) for d in dims):
            return np.array(dims, dtype=np.int64)
        out = np.empty(len(dims), dtype=object)
        out[:] = [d if isinstance(d, int) else None for d in dims]
        return out
    ins = [_partial(model, i) if i else None for i in node.input]
    if any(v is None for i, v in zip(node.input, ins) if i) or any(
            v is not None and v.size > _MAX_STATIC for v in ins):
        return None
    try:
        if op in ("Identity", "Cast"):
            v = ins[0]
            return v.astype(helper.tensor_dtype_to_np_dtype(model.attr(node, "to"))) if op == "Cast" and \
                v.dtype != object else v
        if op == "Gather":
            return np.take(ins[0], ins[1], axis=int(model.attr(node, "axis", 0)))
        if op == "Unsqueeze":
            axes = ins[1] if len(ins) > 1 and ins[1] is not None else model.attr(node, "axes")
            v = ins[0]
            for a in sorted(int(x) % (v.ndim + len(axes)) for x in axes):
                v = np.expand_dims(v, a)
            return v
        if op == "Squeeze":
            axes = ins[1] if len(ins) > 1 and ins[1] is not None else model.attr(node, "axes")
            return np.squeeze(ins[0], axis=None if axes is None else tuple(int(a) for a in axes))
        if op == "Concat":
            parts = [np.atleast_1d(v) for v in ins]
            if any(p.dtype == object for p in parts):
                parts = [p.astype(object) for p in parts]
            return np.concatenate(parts, axis=int(model.attr(node, "axis", 0)))
        if op in ("Add", "Sub", "Mul", "Div", "Mod", "Equal", "Max", "Min"):
            a, b = ins
            if a.dtype == object or b.dtype == object:
                if any(x is None for x in np.concatenate([np.ravel(a), np.ravel(b)])):
                    return None  # arithmetic on an unknown dim
                a, b = a.astype(np.int64), b.astype(np.int64)
            f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal, "Max": np.maximum,
                 "Min": np.minimum, "Mod": np.mod,
                 "Div": (lambda x, y: np.floor_divide(x, y) if x.dtype.kind in "iu" else np.divide(x, y))}[op]
            return np.asarray(f(a, b))
        if op == "Where":
            if any(v.dtype == object for v in ins):
                return None
            return np.where(*ins)
        if op == "ConstantOfShape":
            if ins[0].dtype == object:
                return None
            t = model.attr(node, "value")
            fill = numpy_helper.to_array(t).reshape(-1)[0] if t is not None else np.float32(0)
            return np.full(tuple(int(x) for x in ins[0]), fill)
        if op == "Reshape":
            if ins[1].dtype == object:
                return None
            return ins[0].reshape(tuple(int(x) for x in ins[1]))
        if op == "Slice":
            starts, ends = ins[1], ins[2]
            axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(len(starts))
            steps = ins[4] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
            sl = [slice(None)] * ins[0].ndim
            for s_, e_, a_, st_ in zip(starts, ends, axes, steps):
                sl[int(a_)] = slice(int(s_), int(e_), int(st_))
            return ins[0][tuple(sl)]
    except Exception:  # malformed arithmetic: unknown, the rules stay conservative
        return None
    return None


# ------------------------------------------------------------------------ helpers
def _dim(d) -> Dim:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param"):
        return d.dim_param
    return None


def _default_opset(proto: onnx.ModelProto) -> int:
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _np_dtype(onnx_type: int):
    return helper.tensor_dtype_to_np_dtype(onnx_type)


def _set_value_info_shape(v: onnx.ValueInfoProto, shape: Iterable[int]) -> None:
    tt = v.type.tensor_type
    tt.shape.Clear()
    for d in shape:
        tt.shape.dim.add().dim_value = int(d)


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None  # sparse_value / string values: not a weight we slice


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    subs = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            subs.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            subs.extend(a.graphs)
    return subs


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the enclosing scope."""
    local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for n in graph.node:
        for name in n.input:
            if name and name not in local:
                used.add(name)
        local.update(o for o in n.output if o)
        for sub in _subgraphs(n):
            used |= {x for x in _outer_names(sub) if x not in local}
    return used


def _weights_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.raw_data else int(np.prod(t.dims) if t.dims else 1) * 4
    return total


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:400] + ("…" if len(text) > 400 else "")
