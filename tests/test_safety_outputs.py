"""Safety of outputs (issue 10): never onto a file the input reads, an existing output pair
replaced as a pair, signals leave the old output or the new one and no temporary files, Ctrl-C
while importing prints no traceback, and Constant tensors read only from the model's folder."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

import onnxprune
from onnxprune.errors import OnnxPruneError
from onnxprune.testing import Net, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(width=64, const_nodes=False):
    n = Net("o", const_nodes=const_nodes, seed=1)
    y = n.relu(n.bn(n.conv(n.input("x", [1, 3, 8, 8]), 3, width, 3), width))
    n.output(n.conv(y, width, 4, 1))
    return n.build()


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _leftovers(folder) -> list[str]:
    return [f for f in os.listdir(folder) if f.startswith(".") or f.endswith(".tmp")]


def _feeds():
    return {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_output_onto_the_inputs_data_is_refused(tmp_path):
    src = tmp_path / "in" / "m.onnx"
    src.parent.mkdir()
    onnx.save(_model(), str(src), save_as_external_data=True, location="weights.bin", size_threshold=0)
    before = _sha(src.parent / "weights.bin")
    os.symlink(src.parent / "weights.bin", tmp_path / "alias.bin")
    for target in (src.parent / "weights.bin", tmp_path / "in" / ".." / "in" / "weights.bin", tmp_path / "alias.bin",
                   src):
        with pytest.raises(OnnxPruneError, match="the input model reads|is the input model"):
            onnxprune.prune(str(src), str(target), ratio=0.5)
    assert _sha(src.parent / "weights.bin") == before
    onnxprune.inspect(str(src))  # still loads


def test_input_data_named_like_the_outputs_data_is_untouched(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_model(), str(src), save_as_external_data=True, location="out.onnx.data", size_threshold=0)
    before = _sha(tmp_path / "out.onnx.data")
    out = tmp_path / "out.onnx"
    onnxprune.prune(str(src), str(out), ratio=0.5)
    assert _sha(tmp_path / "out.onnx.data") == before
    onnxprune.inspect(str(src))
    onnx.checker.check_model(str(out), full_check=True)
    locs = {e.value for t in onnx.load(str(out), load_external_data=False).graph.initializer
            for e in t.external_data if e.key == "location"}
    assert locs and "out.onnx.data" not in locs  # a fresh name, derived from the output's
    assert all(loc.startswith("out.onnx.") for loc in locs)
    from onnxprune.validate.compare import model_stats

    assert model_stats(str(out)).file_bytes == os.path.getsize(out) + sum(os.path.getsize(tmp_path / f) for f in locs)
    onnxprune.prune(str(src), str(out), ratio=0.25)  # replace that pair: the input's data still untouched
    assert _sha(tmp_path / "out.onnx.data") == before and not _leftovers(tmp_path)


def test_existing_output_pair_is_replaced_as_a_pair(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_model(), str(src), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    out = tmp_path / "o.onnx"
    onnxprune.prune(str(src), str(out), ratio=0.25)
    first = run(onnx.load(str(out)), _feeds())[0]
    onnxprune.prune(str(src), str(out), ratio=0.5)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 4 and not _leftovers(tmp_path), files  # m, m.data, o, one data file of o
    second = run(onnx.load(str(out)), _feeds())[0]
    assert second.shape == first.shape and np.isfinite(second).all()
    assert onnx.load(str(out)).graph.initializer[0].dims[0] == 32


def test_a_failure_between_the_renames_keeps_the_old_pair(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    onnx.save(_model(), str(src), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    out = tmp_path / "o.onnx"
    onnxprune.prune(str(src), str(out), ratio=0.25)
    old = {f: _sha(tmp_path / f) for f in os.listdir(tmp_path)}
    real = os.replace

    def replace(a, b):
        if os.fspath(b) == str(out):
            raise KeyboardInterrupt  # a signal right before the model's rename
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        onnxprune.prune(str(src), str(out), ratio=0.5)
    monkeypatch.setattr(os, "replace", real)
    assert {f: _sha(tmp_path / f) for f in os.listdir(tmp_path)} == old  # old pair whole, no new file
    assert run(onnx.load(str(out)), _feeds())[0].shape == (1, 4, 8, 8)


def test_constant_tensor_external_data_is_read_from_the_model_folder(tmp_path, monkeypatch):
    """A Constant node's external data resolves against the model's folder, never the working
    directory, and the output holds the values (not a reference to the input's file)."""
    model_dir, cwd = tmp_path / "model", tmp_path / "cwd"
    model_dir.mkdir(), cwd.mkdir()
    p = _model(8, const_nodes=True)
    node = next(n for n in p.graph.node if n.op_type == "Constant" and list(n.attribute[0].t.dims) == [8, 3, 3, 3])
    t = node.attribute[0].t
    w = numpy_helper.to_array(t)
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "w.bin"), ("offset", "0"), ("length", str(w.nbytes))):
        t.external_data.add(key=k, value=v)
    (model_dir / "w.bin").write_bytes(w.tobytes())
    (cwd / "w.bin").write_bytes(np.full(w.shape, 7, np.float32).tobytes())  # a "secret" where the user runs
    onnx.save(p, str(model_dir / "m.onnx"))
    monkeypatch.chdir(cwd)
    out = model_dir / "o.onnx"
    onnxprune.prune(str(model_dir / "m.onnx"), str(out), ratio=0.0)
    pruned = onnx.load(str(out))
    consts = [numpy_helper.to_array(n.attribute[0].t) for n in pruned.graph.node if n.op_type == "Constant"]
    assert any(c.shape == w.shape and np.array_equal(c, w) for c in consts)
    assert not any((c == 7).all() and c.size > 8 for c in consts)
    (model_dir / "w.bin").unlink()
    (cwd / "w.bin").unlink()
    with pytest.raises(OnnxPruneError, match="missing"):  # gone from the model folder: refused, cwd not consulted
        onnxprune.inspect(str(model_dir / "m.onnx"))


# ----------------------------------------------------------------------------- signals
def _big_model(folder):
    """~24 MB of external weights: the write takes long enough to be interrupted in it."""
    n = Net("big", seed=0)
    y = n.relu(n.conv(n.input("x", [1, 256, 4, 4]), 256, 1536, 3))
    n.output(n.conv(y, 1536, 8, 1))
    onnx.save(n.build(), str(folder / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)


def _start(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "onnxprune", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_the_write_leaves_the_old_output_or_the_new_one(tmp_path, sig):
    _big_model(tmp_path)
    out = tmp_path / "o.onnx"
    onnxprune.prune(str(tmp_path / "m.onnx"), str(out), ratio=0.5)  # an old pair to replace
    old = {f: _sha(tmp_path / f) for f in os.listdir(tmp_path)}
    proc = _start(["prune", tmp_path / "m.onnx", "-o", out, "--ratio", "0.25"], tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if any(f.startswith(".onnxprune-") and (tmp_path / f).is_dir() for f in os.listdir(tmp_path)):
            break  # the writer is at work (its temporary folder exists): interrupt it there
        time.sleep(0.001)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert not _leftovers(tmp_path), os.listdir(tmp_path)
    now = {f: _sha(tmp_path / f) for f in os.listdir(tmp_path)}
    if proc.returncode == 0:  # the signal came after the commit: the new pair, the old data gone
        assert now["o.onnx"] != old["o.onnx"] and len(now) == len(old)
    else:
        assert proc.returncode == 130, err
        assert now == old
    onnx.checker.check_model(str(out), full_check=True)
    assert run(onnx.load(str(out)), {"x": np.ones((1, 256, 4, 4), np.float32)})[0].shape == (1, 8, 4, 4)


@pytest.mark.parametrize("module", ["numpy", "onnx_ir", "onnxprune.analysis"])
def test_ctrl_c_while_importing_prints_no_traceback(tmp_path, module):
    """Ctrl-C lands while ``python -m onnxprune`` imports ``module`` (made deterministic by an
    import hook raising KeyboardInterrupt there): one line, exit 130, no traceback."""
    code = f"""
import runpy, sys
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
sys.meta_path.insert(0, Hook())
sys.argv = ["-m", "inspect", {os.path.join(ROOT, "models", "digits_cnn.onnx")!r}]
runpy.run_module("onnxprune", run_name="__main__", alter_sys=True)
"""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 130 and proc.stderr.strip() == "onnxprune: interrupted", proc.stderr


# ----------------------------------------------------------------------------- one loader, every command
def _hostile(folder, where: str) -> str:
    """A model whose tensor (``where``: a Constant inside an If branch, or a sparse initializer)
    points at ``../secret.bin`` outside its folder."""
    from onnx import helper

    (folder.parent / "secret.bin").write_bytes(np.ones(64, np.float32).tobytes())
    t = onnx.TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        t.external_data.add(key=k, value=v)
    n = Net("h", seed=0)
    x = n.input("x", [1, 3, 8, 8])
    y = n.output(n.conv(n.relu(n.conv(x, 3, 8, 3)), 8, 4, 1))
    proto = n.build()
    if where == "subgraph":
        branch = helper.make_graph([helper.make_node("Constant", [], ["k"], value=t)], "b", [],
                                   [helper.make_tensor_value_info("k", TensorProto.FLOAT, [4])])
        proto.graph.node.append(helper.make_node("If", ["cond"], ["picked"], then_branch=branch, else_branch=branch))
        proto.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    else:
        idx = numpy_helper.from_array(np.array([0, 1], np.int64), "c_idx")
        vals = onnx.TensorProto()
        vals.CopyFrom(t)
        vals.dims[:] = [2]
        proto.graph.sparse_initializer.append(helper.make_sparse_tensor(vals, idx, [4]))
    path = folder / "h.onnx"
    onnx.save(proto, str(path))
    return str(path)


@pytest.mark.parametrize("where", ["subgraph", "sparse"])
def test_every_command_refuses_a_tensor_outside_the_model_folder(tmp_path, where):
    from test_safety import CALIB, refused  # noqa: F401 - shared helpers

    folder = tmp_path / "m"
    folder.mkdir()
    path = _hostile(folder, where)
    out = folder / "o.onnx"
    calib = str(tmp_path / "c.npz")
    np.savez(calib, x=np.zeros((2, 3, 8, 8), np.float32))
    for argv in (("inspect", path), ("plan", path, "-o", folder / "p.json", "--ratio", "0.5"),
                 ("prune", path, "-o", out, "--ratio", "0.5"), ("sensitivity", path, "--calib", calib),
                 ("validate", path, path, "--no-latency")):
        refused(*argv, match="outside the model's folder")
    assert sorted(os.listdir(folder)) == ["h.onnx"]
