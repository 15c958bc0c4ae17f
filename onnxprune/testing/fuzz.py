"""Model fuzzing: mutate real models and check the command line's contract on each.

Contract for every case: ``prune`` (and ``inspect``) either exits 1 with one line
(``onnxprune: error: ...``) and writes nothing, or exits 0 with an output that passes
``onnx.checker.check_model(full_check=True)`` and that onnxruntime loads; never an exception or
exit 3; never a file created outside the output's folder (the input folder and the working
directory are compared before/after).

Used by ``tests/test_fuzz.py`` (a bounded run with hypothesis) and ``scripts/fuzz.py`` (long runs).
"""
from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import traceback
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

__all__ = ["MUTATIONS", "mutate", "run_case", "Outcome", "Tally"]


def _pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))] if len(seq) else None


def _names(m: onnx.ModelProto) -> list[str]:
    out = [i.name for i in m.graph.input] + [t.name for t in m.graph.initializer]
    for n in m.graph.node:
        out.extend(o for o in n.output if o)
    return out


# --------------------------------------------------------------------------- proto mutations
def drop_node(m, rng):
    if len(m.graph.node) > 1:
        del m.graph.node[rng.randrange(len(m.graph.node))]


def duplicate_node(m, rng):
    k = rng.randrange(len(m.graph.node))
    m.graph.node.insert(rng.randrange(len(m.graph.node) + 1), m.graph.node[k])


def rewire(m, rng):
    n = _pick(rng, [n for n in m.graph.node if n.input])
    if n is not None:
        k = rng.randrange(len(n.input))
        n.input[k] = _pick(rng, _names(m) + ["", "no_such_tensor"])


def swap_nodes(m, rng):
    if len(m.graph.node) > 1:
        a, b = rng.sample(range(len(m.graph.node)), 2)
        na, nb = onnx.NodeProto(), onnx.NodeProto()
        na.CopyFrom(m.graph.node[a])
        nb.CopyFrom(m.graph.node[b])
        m.graph.node[a].CopyFrom(nb)
        m.graph.node[b].CopyFrom(na)


def op_type(m, rng):
    n = _pick(rng, m.graph.node)
    n.op_type = _pick(rng, ["Relu", "Conv", "Gemm", "Add", "Concat", "Reshape", "BatchNormalization", "Foo",
                            "Identity", "MatMul", "Mul", "Split", "Transpose", "GlobalAveragePool"])


def corrupt_shape(m, rng):
    t = _pick(rng, m.graph.initializer)
    if t is not None and t.dims:
        k = rng.randrange(len(t.dims))
        t.dims[k] = _pick(rng, [0, 1, t.dims[k] + 1, max(t.dims[k] - 1, 0), 2 * t.dims[k], 7])
    elif t is not None:
        t.dims.append(rng.randint(0, 3))


def reshape_initializer(m, rng):
    """A consistent tensor of another shape (data matches the dims: passes load, confuses rules)."""
    t = _pick(rng, [t for t in m.graph.initializer if t.data_type == TensorProto.FLOAT and t.dims])
    if t is None:
        return
    a = onnx.numpy_helper.to_array(t)
    k = rng.randrange(a.ndim)
    keep = max(1, a.shape[k] - rng.randint(1, 3))
    b = np.take(a, np.arange(keep), axis=k)
    t.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(b), t.name))


def corrupt_input_shape(m, rng):
    v = _pick(rng, list(m.graph.input))
    dims = v.type.tensor_type.shape.dim
    if len(dims):
        d = dims[rng.randrange(len(dims))]
        if rng.random() < 0.5:
            d.dim_value = _pick(rng, [0, 1, 3, 1000])
        else:
            d.dim_param = _pick(rng, ["N", "H", "weird"])
    else:
        v.type.tensor_type.shape.dim.add().dim_value = 2


def attribute(m, rng):
    n = _pick(rng, [n for n in m.graph.node if n.attribute])
    if n is None:
        return
    a = n.attribute[rng.randrange(len(n.attribute))]
    r = rng.random()
    if r < 0.25:
        n.attribute.remove(a)
    elif a.type == onnx.AttributeProto.INT:
        a.i = _pick(rng, [-1, 0, 1, 2, 3, 1 << 40, a.i + 1])
    elif a.type == onnx.AttributeProto.INTS and len(a.ints):
        k = rng.randrange(len(a.ints))
        a.ints[k] = _pick(rng, [-1, 0, 1, 5, a.ints[k] + 1])
        if rng.random() < 0.3:
            a.ints.append(1)
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = _pick(rng, [float("nan"), float("inf"), -1.0, 0.0, 1e30])
    else:
        a.name = a.name + "_x"


def add_attribute(m, rng):
    n = _pick(rng, m.graph.node)
    n.attribute.append(onnx.helper.make_attribute(_pick(rng, ["group", "axis", "perm", "pads", "strides"]),
                                                  _pick(rng, [0, 2, -1, [0, 1], [1, 1, 1, 1]])))


def dtype(m, rng):
    if rng.random() < 0.5 and m.graph.initializer:
        t = _pick(rng, m.graph.initializer)
        t.data_type = _pick(rng, [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.UINT8,
                                  TensorProto.INT8, TensorProto.BOOL, TensorProto.STRING, 0, 99])
    else:
        v = _pick(rng, list(m.graph.input) + list(m.graph.output))
        v.type.tensor_type.elem_type = _pick(rng, [TensorProto.FLOAT16, TensorProto.INT64, TensorProto.UINT8,
                                                   TensorProto.STRING, 0])


def nonfinite_weight(m, rng):
    t = _pick(rng, [t for t in m.graph.initializer if t.data_type == TensorProto.FLOAT and t.dims])
    if t is not None:
        a = onnx.numpy_helper.to_array(t).copy()
        a.flat[rng.randrange(a.size)] = _pick(rng, [np.nan, np.inf, -np.inf, 3e38])
        t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))


def opset(m, rng):
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = _pick(rng, [1, 7, 9, 11, 13, 18, 21, 30])
    if rng.random() < 0.3:
        m.ir_version = _pick(rng, [1, 3, 7, 10, 11, 14, 99])


def graph_output(m, rng):
    if rng.random() < 0.5 and len(m.graph.output):
        m.graph.output[0].name = _pick(rng, _names(m) + ["missing_output"])
    else:
        name = _pick(rng, _names(m))
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, TensorProto.FLOAT, None))


def constant_node(m, rng):
    """Turn an initializer into a Constant node (weights behind Constant nodes)."""
    if not m.graph.initializer:
        return
    k = rng.randrange(len(m.graph.initializer))
    t = onnx.TensorProto()
    t.CopyFrom(m.graph.initializer[k])
    del m.graph.initializer[k]
    m.graph.node.insert(0, onnx.helper.make_node("Constant", [], [t.name], value=t))


PROTO_MUTATIONS = [drop_node, duplicate_node, rewire, swap_nodes, op_type, corrupt_shape, reshape_initializer,
                   corrupt_input_shape, attribute, add_attribute, dtype, nonfinite_weight, opset, graph_output,
                   constant_node]


# --------------------------------------------------------------------------- file mutations
def _external_entry(t: onnx.TensorProto, rng) -> None:
    entries = {e.key: e for e in t.external_data}
    r = rng.random()
    if r < 0.2:
        entries["location"].value = _pick(rng, ["../escape.bin", "/etc/hostname", "nope.bin", "", "a/../../x",
                                                "sub/w.bin", "C:\\w.bin", "link.bin", "fifo.bin", "."])
    elif r < 0.4 and "offset" in entries:
        entries["offset"].value = _pick(rng, ["-1", "x", str(1 << 62), "3", "0"])
    elif r < 0.6 and "length" in entries:
        entries["length"].value = _pick(rng, ["-4", "0", "1", str(1 << 40), "abc"])
    elif r < 0.8:
        t.external_data.add(key=_pick(rng, ["location", "offset", "checksum", "x"]), value="0")
    else:
        t.data_location = TensorProto.DEFAULT


def write_case(proto: onnx.ModelProto, folder: str, rng: random.Random, byte_level: float = 0.25,
               external: float = 0.3) -> str:
    """Write a mutated model into ``folder``: maybe with external data (entries corrupted), maybe with
    bytes truncated or flipped. Returns the model path."""
    path = os.path.join(folder, "m.onnx")
    if rng.random() < external:
        onnx.save(proto, path, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
        secret = os.path.join(os.path.dirname(folder), "escape.bin")
        with open(secret, "wb") as f:
            f.write(b"\x00" * 4096)
        if rng.random() < 0.2:
            os.symlink(secret, os.path.join(folder, "link.bin"))
        if rng.random() < 0.1:
            os.mkfifo(os.path.join(folder, "fifo.bin"))
        if rng.random() < 0.6:
            m = onnx.load(path, load_external_data=False)
            ext = [t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL]
            if ext:
                _external_entry(_pick(rng, ext), rng)
                onnx.save(m, path)
        data = os.path.join(folder, "m.onnx.data")
        if rng.random() < 0.2 and os.path.isfile(data):
            with open(data, "r+b") as f:
                f.truncate(rng.randrange(max(os.path.getsize(data), 1)))
    else:
        onnx.save(proto, path)
    if rng.random() < byte_level:
        blob = bytearray(open(path, "rb").read())
        if rng.random() < 0.5:
            blob = blob[:rng.randrange(len(blob))]
        else:
            for _ in range(rng.randint(1, 8)):
                if blob:
                    blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        with open(path, "wb") as f:
            f.write(bytes(blob))
    return path


MUTATIONS = [f.__name__ for f in PROTO_MUTATIONS] + ["bytes", "external"]


def mutate(proto: onnx.ModelProto, rng: random.Random, n: int | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """A mutated copy of ``proto`` (1–3 proto-level mutations) and their names."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    done = []
    for _ in range(n if n is not None else rng.randint(1, 3)):
        f = _pick(rng, PROTO_MUTATIONS)
        try:
            f(m, rng)
        except Exception:  # a mutation that does not apply to this model
            continue
        done.append(f.__name__)
    return m, done


# --------------------------------------------------------------------------- the contract
@dataclass
class Outcome:
    kind: str  # "error" (clean one-line refusal), "valid" (checked output), "ort_input" (a checked output
    # onnxruntime rejects as it rejects the input), "crash"
    detail: str = ""
    argv: list = field(default_factory=list)


def _listing(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        out.extend(os.path.relpath(os.path.join(root, f), folder) for f in files + dirs)
    return sorted(out)


def run_case(model_path: str, out_dir: str, argv_tail: list[str], watch: list[str] = ()) -> Outcome:
    """Run ``prune`` in-process on ``model_path`` into ``out_dir`` and judge the outcome."""
    from ..cli import main

    out = os.path.join(out_dir, "out.onnx")
    argv = ["--debug", "prune", model_path, "-o", out, *argv_tail]  # a bug shows its traceback
    before = {w: _listing(w) for w in watch}
    before[os.path.dirname(model_path)] = _listing(os.path.dirname(model_path))
    err, sink = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(sink):
            rc = main(argv)
    except BaseException as e:  # noqa: BLE001 - anything escaping main is a crash
        if isinstance(e, KeyboardInterrupt):
            raise
        return Outcome("crash", f"{type(e).__name__} escaped main: {traceback.format_exc()[-1500:]}", argv)
    text = err.getvalue()
    for w, listing in before.items():
        if _listing(w) != listing:
            return Outcome("crash", f"files changed outside the output folder in {w}: "
                                    f"{sorted(set(_listing(w)) ^ set(listing))}", argv)
    stray = [f for f in os.listdir(out_dir) if not f.startswith("out.onnx")]
    if stray:
        return Outcome("crash", f"temporary files left in the output folder: {stray}", argv)
    lines = [ln for ln in text.splitlines() if ln.startswith("onnxprune:")]
    if rc == 1:
        if os.listdir(out_dir):
            return Outcome("crash", f"exit 1 but wrote {os.listdir(out_dir)}: {text[-500:]}", argv)
        if len(lines) != 1 or not lines[0].startswith("onnxprune: error:") or "Traceback" in text:
            return Outcome("crash", f"exit 1 without one clean line: {text[-1500:]}", argv)
        return Outcome("error", lines[0], argv)
    if rc != 0:
        return Outcome("crash", f"exit {rc}: {text[-1500:]}", argv)
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception as e:
        return Outcome("crash", f"output fails the checker: {' '.join(str(e).split())[:500]}", argv)
    err = _ort_error(out)
    if err:
        if _ort_error(model_path):  # the input fails the same way: not something pruning broke
            return Outcome("ort_input", f"onnxruntime rejects the input too: {err}", argv)
        return Outcome("crash", f"onnxruntime cannot load the output: {err}", argv)
    return Outcome("valid", "", argv)


def _ort_error(path: str) -> str:
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 4
        ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        return " ".join(str(e).split())[:500]
    return ""


OPTIONS = [["--ratio", "0.5"], ["--ratio", "0.3", "--round-to", "4"], ["--target-flops", "0.6"],
           ["--ratio", "0.5", "--mode", "global"], ["--ratio", "0.5", "--recover", "bias"], ["--ratio", "0.0"],
           ["--ratio", "0.5", "--criterion", "bn"]]


@dataclass
class Tally:
    cases: int = 0
    errors: int = 0
    valid: int = 0
    ort_input: int = 0
    crashes: list = field(default_factory=list)

    def add(self, o: Outcome) -> None:
        self.cases += 1
        if o.kind == "error":
            self.errors += 1
        elif o.kind == "valid":
            self.valid += 1
        elif o.kind == "ort_input":
            self.ort_input += 1
        else:
            self.crashes.append(o)

    def line(self) -> str:
        return (f"cases {self.cases}, clean errors {self.errors}, valid outputs {self.valid}, checked outputs "
                f"onnxruntime rejects like their input {self.ort_input}, crashes {len(self.crashes)}")


def fuzz_one(proto: onnx.ModelProto, rng: random.Random, workdir: str) -> tuple[Outcome, list[str]]:
    """One case: mutate, write (maybe external data / byte damage), prune with random options."""
    shutil.rmtree(workdir, ignore_errors=True)
    in_dir, out_dir, cwd_dir = (os.path.join(workdir, d) for d in ("in", "out", "cwd"))
    for d in (in_dir, out_dir, cwd_dir):
        os.makedirs(d)
    m, names = mutate(proto, rng)
    path = write_case(m, in_dir, rng)
    cwd = os.getcwd()
    os.chdir(cwd_dir)  # a write into the working directory would show in its listing
    try:
        outcome = run_case(path, out_dir, list(_pick(rng, OPTIONS)), watch=[in_dir, cwd_dir])
    finally:
        os.chdir(cwd)
    return outcome, names
