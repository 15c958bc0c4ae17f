"""Load and save: the only code that reads or writes model files.

Loading parses the protobuf without external data, checks every external-data reference
(initializers, ``Constant`` node tensors and subgraphs alike) before a byte of it is read, then
hands the graph to onnx-ir, whose external tensors memory-map their data lazily.

Saving writes to a temporary folder next to the output, runs
``onnx.checker.check_model(full_check=True)`` on the written file, then renames into place: the
data under a fresh name when an old output pair exists, then the model, then the old data goes.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import stat
import tempfile

import numpy as np
import onnx
import onnx_ir as ir

from ..errors import OnnxPruneError, UnsupportedModelError, ValidationError

__all__ = ["load_ir", "save_ir", "MIN_OPSET", "one_line"]

log = logging.getLogger("onnxprune.graph")

MIN_OPSET = 9
_TWO_GB = 2**31
# Newest IR version onnxruntime 1.18+ reads; newer writers (onnx 1.23 writes 14) are lowered.
MAX_RUNTIME_IR = 10


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:400] + ("…" if len(text) > 400 else "")


def _tensors(graph: onnx.GraphProto):
    """Every TensorProto of a graph: initializers (sparse ones too), Constant/attribute tensors, subgraphs."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield from (sp.values, sp.indices)
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                yield from a.tensors
            elif a.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield from (a.sparse_tensor.values, a.sparse_tensor.indices)
            elif a.type == onnx.AttributeProto.SPARSE_TENSORS:
                for sp in a.sparse_tensors:
                    yield from (sp.values, sp.indices)
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _tensors(g)


def _expected_bytes(t: onnx.TensorProto) -> int | None:
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):  # string / exotic types: no fixed size (the size check is skipped)
        log.debug("tensor '%s' of data type %d has no fixed item size; its byte count is not checked", t.name,
                  t.data_type)
        return None
    n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (n + 1) // 2
    return n * itemsize


_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def check_inline_data(proto: onnx.ModelProto, path: str) -> None:
    """Refuse tensors whose stored data does not fit their dims and type (raw bytes or typed values)."""
    known = set(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for v in values:
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type not in known:
                raise UnsupportedModelError(f"{path}: graph {kind} '{v.name}' has no valid element type "
                                            f"({v.type.tensor_type.elem_type}); re-export the model")
    for t in _tensors(proto.graph):
        if t.data_type not in known:
            raise UnsupportedModelError(f"{path}: tensor '{t.name}' has no valid element type ({t.data_type}); "
                                        "re-export the model")
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type == onnx.TensorProto.STRING:
            continue
        n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
        if any(d < 0 for d in t.dims):
            raise UnsupportedModelError(f"{path}: tensor '{t.name}' has a negative dim {list(t.dims)}")
        if t.HasField("raw_data"):
            want = _expected_bytes(t)
            if want is not None and len(t.raw_data) != want:
                raise UnsupportedModelError(f"{path}: tensor '{t.name}' holds {len(t.raw_data)} bytes, its shape "
                                            f"{list(t.dims)} and type need {want}; re-export the model")
            continue
        counts = [len(getattr(t, f)) for f in _FIELDS if len(getattr(t, f))]
        have = counts[0] if counts else 0
        if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
            have //= 2
        if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1):
            continue  # packed two per value
        if have != n:
            raise UnsupportedModelError(f"{path}: tensor '{t.name}' holds {have} values, its shape {list(t.dims)} "
                                        f"needs {n}; re-export the model")


def check_external_data(proto: onnx.ModelProto, base_dir: str, path: str) -> bool:
    """Refuse external-data references that leave the model folder or the data file.

    Returns whether the model has external data. Checked for each tensor: a relative location
    without ``..``, no symbolic link on the way, a regular file inside ``base_dir``, and
    offset + length within the file and equal to the tensor's size.
    """
    base_real = os.path.realpath(base_dir)
    found = False
    for t in _tensors(proto.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        if not all(isinstance(e.key, str) and isinstance(e.value, str) for e in t.external_data):
            raise UnsupportedModelError(f"{path}: tensor '{t.name}' has an external-data entry that is not valid "
                                        "UTF-8 text; re-export the model")
        info = {e.key: e.value for e in t.external_data}
        keys = [e.key for e in t.external_data]
        if len(keys) != len(set(keys)):
            raise UnsupportedModelError(f"{path}: tensor '{t.name}' repeats an external-data key; "
                                        "re-export the model")
        loc = info.get("location", "")
        parts = loc.replace("\\", "/").split("/")
        if not loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise UnsupportedModelError(f"{path}: tensor '{t.name}' points at external data '{loc}' outside the "
                                        "model's folder; keep the data file beside the model")
        full = os.path.join(base_dir, loc)
        walk = base_dir
        for p in parts:
            walk = os.path.join(walk, p)
            if os.path.islink(walk):
                raise UnsupportedModelError(f"{path}: external data '{loc}' of tensor '{t.name}' goes through a "
                                            "symbolic link; copy the real file beside the model")
        real = os.path.realpath(full)
        if os.path.commonpath([real, base_real]) != base_real:
            raise UnsupportedModelError(f"{path}: external data '{loc}' of tensor '{t.name}' is outside the "
                                        "model's folder")
        try:
            st = os.stat(full)
        except OSError:
            raise UnsupportedModelError(f"{path}: external data file '{loc}' of tensor '{t.name}' is missing; "
                                        "copy it beside the model") from None
        if not stat.S_ISREG(st.st_mode):
            raise UnsupportedModelError(f"{path}: external data '{loc}' of tensor '{t.name}' is not a regular file")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else st.st_size - offset
        except ValueError:
            raise UnsupportedModelError(f"{path}: tensor '{t.name}' has a non-numeric external-data "
                                        "offset/length") from None
        want = _expected_bytes(t)
        if offset < 0 or length < 0 or offset + length > st.st_size:
            raise UnsupportedModelError(f"{path}: external data of tensor '{t.name}' ({loc}, offset {offset}, "
                                        f"length {length}) runs past the end of the file ({st.st_size} bytes)")
        if want is not None and length != want:
            raise UnsupportedModelError(f"{path}: external data of tensor '{t.name}' has {length} bytes, its "
                                        f"shape {list(t.dims)} needs {want}")
    return found


def load_ir(path: str | os.PathLike) -> tuple[ir.Model, bool]:
    """Load a model for onnx-ir, external data memory-mapped. Returns (model, has_external_data).

    Raises:
        UnsupportedModelError: missing/unreadable file, not ONNX, unsafe external data, checker
            failure, opset older than 9.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UnsupportedModelError(f"{path}: no such file; give the path of an .onnx model")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf DecodeError...
        raise UnsupportedModelError(f"{path}: cannot be read as an ONNX model ({type(e).__name__}: "
                                    f"{one_line(e)})") from None
    if not proto.graph.node:
        raise UnsupportedModelError(f"{path}: the graph has no nodes; is this an ONNX model?")
    base_dir = os.path.dirname(os.path.abspath(path))
    external = check_external_data(proto, base_dir, path)
    check_inline_data(proto, path)
    try:  # the parsed proto when it holds everything (no second parse); the path for external data
        onnx.checker.check_model(path if external or os.path.getsize(path) > _TWO_GB - (64 << 20) else proto)
    except Exception as e:
        raise UnsupportedModelError(f"{path}: fails the ONNX checker: {one_line(e)}; fix or re-export the "
                                    "model") from None
    opset = default_opset(proto)
    if opset > onnx.defs.onnx_opset_version():
        raise UnsupportedModelError(f"{path}: opset {opset} is newer than the newest released one "
                                    f"({onnx.defs.onnx_opset_version()}); export with a released opset")
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"{path}: opset {opset} is older than {MIN_OPSET}; convert it first with "
            f"onnx.version_converter.convert_version(model, {MIN_OPSET})")
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:
        raise UnsupportedModelError(f"{path}: onnx-ir cannot read the graph ({type(e).__name__}: "
                                    f"{one_line(e)})") from None
    if external:
        ir.external_data.set_base_dir(model.graph, base_dir)
    return model, external


def default_opset(proto: onnx.ModelProto) -> int:
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def weights_bytes(model: ir.Model) -> int:
    return sum(int(v.const_value.nbytes) for v in model.graph.initializers.values() if v.const_value is not None)


def has_external_tensors(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def _check(model: str | onnx.ModelProto, path: str) -> None:
    """onnx's full check of a model about to be written, in a forked child where the OS allows it:
    onnx's C++ shape inference aborts the whole process on some malformed graphs (an assertion in
    ``std::clamp``, seen with a fuzzed graph output), which must be a one-line error, not a crash."""
    try:
        err = _in_child(lambda: onnx.checker.check_model(model, full_check=True))
    except Exception as e:  # where there is no fork: the check in this process
        err = one_line(e)
    if err:
        raise ValidationError(f"the rewritten model fails onnx.checker (full_check): {err}; "
                              f"nothing was written to {path}") from None


def _in_child(fn) -> str:
    """Run ``fn`` in a forked child; '' when it returned, else its error or how the child died."""
    if not hasattr(os, "fork"):
        fn()
        return ""
    r, w = os.pipe()
    native = tempfile.TemporaryFile()  # what the child's native code prints (an assertion) goes here
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup, no atexit handlers of the parent
        code = 0
        try:
            os.close(r)
            os.dup2(native.fileno(), 2)
            import faulthandler

            faulthandler.disable()  # a test runner's dump would go to the parent's stream
            try:
                fn()
                msg = b""
            except Exception as e:  # the error text goes back to the parent
                msg = one_line(e).encode("utf-8", "replace")[:8192] or b"error"
            os.write(w, b"E" + msg if msg else b"K")
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    if data == b"K" or data.startswith(b"E"):
        native.close()
        return "" if data == b"K" else data[1:].decode("utf-8", "replace")
    why = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    native.seek(0)
    said = [ln for ln in native.read(65536).decode("utf-8", "replace").splitlines() if ln.strip()]
    native.close()
    return (f"onnx's checker crashed ({why}) on this graph, a malformed model onnx cannot check"
            + (f" ({said[-1].strip()[-200:]})" if said else ""))


def _old_data_files(path: str) -> list[str]:
    """The data files an existing output at ``path`` references that this writer named
    (``<name>.data`` or ``<name>.<hex>.data`` beside it): removed once the new output is in place."""
    folder, name = os.path.split(path)
    if not os.path.isfile(path) or os.path.islink(path):
        return []
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # not a model (or unreadable): it references nothing
        return []
    ours = re.compile(re.escape(name) + r"(\.[0-9a-f]{8})?\.data")
    out = []
    for t in _tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            full = os.path.join(folder, loc)
            if ours.fullmatch(loc) and os.path.isfile(full) and not os.path.islink(full) and full not in out:
                out.append(full)
    return out


def _in_memory(t: ir.ExternalTensor) -> ir.Tensor:
    """A copy in memory (no view of the memory map, which may then close)."""
    return ir.Tensor(np.array(t.numpy()), dtype=t.dtype, name=t.name)


def _inline_attribute_tensors(model: ir.Model) -> None:
    """Read external tensors held by node attributes (``Constant`` values) into memory: the writer
    externalises initializers only, and their old location is relative to the *input's* folder."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for key, a in list(node.attributes.items()):
            if a.type == ir.AttributeType.TENSOR and isinstance(a.value, ir.ExternalTensor):
                node.attributes[key] = ir.AttrTensor(key, _in_memory(a.value))
            elif a.type == ir.AttributeType.TENSORS and any(isinstance(t, ir.ExternalTensor) for t in a.value):
                node.attributes[key] = ir.AttrTensors(key, [_in_memory(t) if isinstance(t, ir.ExternalTensor) else t
                                                            for t in a.value])


def _copy_small_external(model: ir.Model, threshold: int) -> None:
    """External initializers the writer will inline: copied into memory here (the writer would
    close their memory map, which fails while an array of the analysis still views it)."""
    for graph in model.graphs():
        for v in graph.initializers.values():
            t = v.const_value
            if isinstance(t, ir.ExternalTensor) and t.nbytes <= threshold:
                v.const_value = _in_memory(t)


def remove_saved(path: str | os.PathLike) -> list[str]:
    """Delete a model written by :func:`save_ir` and the data files it references that this writer
    named (``<name>.data``, ``<name>.<hex>.data``); returns what went."""
    path = os.fspath(path)
    gone = []
    for p in [*_old_data_files(path), path]:
        if os.path.isfile(p):
            os.remove(p)
            gone.append(p)
    return gone


def save_ir(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None,
            check: bool = True, avoid: set[str] | frozenset[str] = frozenset()) -> None:
    """Write a model atomically: to a temporary folder beside the output, check it, then rename.

    The weights file (with ``external_data``) is ``<name>.data``, or ``<name>.<8 hex>.data`` when that
    name is taken (an existing output pair, or a file the input reads): the new data is renamed in
    under its fresh name, then the model in one rename, then the old output's data is removed, with
    SIGINT/SIGTERM/SIGHUP held meanwhile. A reader sees the old pair or the new one, never a mix.

    Args:
        model: the model (its IR version is lowered to one onnxruntime reads, if newer).
        path: destination.
        external_data: weights in a ``.data`` file; by default when the model read external data
            or would pass the 2 GB protobuf limit.
        check: run the full checker on the written file before renaming.
        avoid: real paths never written or removed (the files the input model reads).

    Raises:
        ValidationError: the folder is missing or not writable, or the checker rejected the
            model; nothing is written.
    """
    from ..outputs import check_output, deferred_signals

    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path) or "."
    try:
        check_output(path, "the model")
    except OnnxPruneError as e:
        raise ValidationError(str(e)) from None
    if os.path.realpath(path) in avoid:
        raise ValidationError(f"{path} is a file the input model reads; choose another output path")
    if external_data is None:
        external_data = has_external_tensors(model) or weights_bytes(model) > _TWO_GB - (64 << 20)
    if model.ir_version > MAX_RUNTIME_IR:
        log.info("IR version %d lowered to %d (onnxruntime compatibility)", model.ir_version, MAX_RUNTIME_IR)
        model.ir_version = MAX_RUNTIME_IR
    _inline_attribute_tensors(model)
    name = os.path.basename(path)
    data_name = name + ".data"
    taken = os.path.lexists(os.path.join(folder, data_name)) or os.path.realpath(os.path.join(folder, data_name)) in avoid
    if external_data and taken:
        while True:
            data_name = f"{name}.{secrets.token_hex(4)}.data"
            if not os.path.lexists(os.path.join(folder, data_name)):
                break
    old_data = _old_data_files(path)
    tmpdir = None
    try:
        with deferred_signals():  # a signal right after mkdtemp must still find it removed
            tmpdir = tempfile.mkdtemp(prefix=".onnxprune-", dir=folder)
        tmp = os.path.join(tmpdir, name)
        if external_data:
            _copy_small_external(model, 1024)
            ir.save(model, tmp, external_data=data_name, size_threshold_bytes=1024)
            if check:
                _check(tmp, path)
        else:  # one serialisation, checked in memory, then written
            proto = ir.serde.serialize_model(model)
            if check:
                _check(proto, path)
            with open(tmp, "wb") as f:
                f.write(proto.SerializeToString())
        tmp_data = os.path.join(tmpdir, data_name)
        new_data = os.path.join(folder, data_name)
        with deferred_signals():
            moved = False
            if external_data and os.path.exists(tmp_data) and os.path.getsize(tmp_data):  # none: all inline
                os.replace(tmp_data, new_data)  # a fresh name: nothing is overwritten
                moved = True
            try:
                os.replace(tmp, path)
            except BaseException:
                if moved:
                    os.remove(new_data)  # the old pair stays whole
                raise
            for f in old_data:
                if f != new_data and os.path.realpath(f) not in avoid:
                    os.remove(f)
            shutil.rmtree(tmpdir, ignore_errors=True)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
