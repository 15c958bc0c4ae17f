"""Safety (issue 10): bad data, bad options and bad plans are refused before work starts with
one line naming the array/option/field; outputs are checked for writability first and never land
on a file the input reads; results are checked before they are written."""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import api
from onnxprune.cli import main
from onnxprune.errors import OnnxPruneError
from onnxprune.testing import Net

HERE = os.path.dirname(__file__)
MODEL = os.path.join(HERE, "..", "models", "digits_cnn.onnx")
CALIB = os.path.join(HERE, "..", "models", "digits_calib.npz")


def cli(*argv) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, err.getvalue()


def refused(*argv, match: str) -> str:
    """The command exits 1 with one line on stderr (no traceback, not called a bug) matching ``match``."""
    rc, err = cli(*argv)
    lines = [ln for ln in err.splitlines() if ln.startswith("onnxprune: error:")]  # info lines may precede it
    assert rc == 1, err
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def x():
    return np.load(CALIB)["input"]


def npz(tmp_path, name="d.npz", **arrays) -> str:
    p = str(tmp_path / name)
    np.savez(p, **arrays)
    return p


# ------------------------------------------------------------------ calibration / validation data
@pytest.mark.parametrize("case,match", [
    ("shape", "has shape [256, 1, 4, 8], the model's input expects ['N', 1, 8, 8]"),
    ("dtype", "has dtype int64, the model's input takes float32"),
    ("string", "has dtype <U1"),
    ("zero_d", "is a single value (0-d)"),
    ("pickled", "cannot be read without pickle"),
    ("nan", "has NaN/Inf in 1 of 256 samples"),
    ("counts", "different sample counts"),
    ("empty", "no samples"),
    ("labels", "'labels' has shape [256, 3]"),
    ("npy", "a .npy array"),
    ("garbage", "not an .npz archive"),
    ("folder_empty", "no .png/.jpg/.jpeg/.bmp images"),
])
def test_bad_calibration_data_is_refused_naming_the_array(tmp_path, x, case, match):
    arrays = {"shape": dict(input=x[:, :, :4]), "dtype": dict(input=x.astype(np.int64)),
              "string": dict(input=np.array(["a"] * 4)), "zero_d": dict(input=np.float32(1)),
              "nan": dict(input=np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x).astype(np.float32)),
              "empty": dict(input=x[:0]), "labels": dict(input=x, labels=np.zeros((256, 3), np.int64))}
    if case == "pickled":
        src = str(tmp_path / "p.npz")
        np.savez(src, input=np.array([{"a": 1}], dtype=object))
    elif case == "counts":
        src = npz(tmp_path, a=x, b=x[:3])
        m = Net("two")
        i1, i2 = m.input("a", ["N", 1, 8, 8]), m.input("b", ["N", 1, 8, 8])
        m.output(m.conv(m.op("Add", [i1, i2]), 1, 4, 3))
        onnx.save(m.build(), str(tmp_path / "two.onnx"))
        refused("prune", tmp_path / "two.onnx", "-o", tmp_path / "o.onnx", "--ratio", "0.5", "--calib", src,
                match=match)
        return
    elif case == "npy":
        src = str(tmp_path / "c.npy")
        np.save(src, x)
    elif case == "garbage":
        src = str(tmp_path / "g.npz")
        open(src, "wb").write(b"PK\x03\x04 not really")
    elif case == "folder_empty":
        src = str(tmp_path)
    else:
        src = npz(tmp_path, **arrays[case])
    out = tmp_path / "o.onnx"
    refused("prune", MODEL, "-o", out, "--ratio", "0.5", "--calib", src, match=match)
    assert not out.exists()


def test_nonfinite_samples_dropped_with_a_flag(tmp_path, x, caplog):
    bad = x.copy()
    bad[[2, 5]] = np.inf
    src = npz(tmp_path, input=bad)
    out = tmp_path / "o.onnx"
    rc, err = cli("prune", MODEL, "-o", out, "--ratio", "0.5", "--recover", "bias", "--calib", src, "--drop-nonfinite")
    assert rc == 0, err
    for t in onnx.load(str(out)).graph.initializer:
        assert np.isfinite(numpy_helper.to_array(t)).all(), t.name
    # and without the flag, Inf with --recover bias is refused before anything is written
    out2 = tmp_path / "o2.onnx"
    refused("prune", MODEL, "-o", out2, "--ratio", "0.5", "--recover", "bias", "--calib", src, match="--drop-nonfinite")
    assert not out2.exists()


def test_the_api_checks_data_like_the_cli(tmp_path, x):
    src = npz(tmp_path, input=x[:, :, :4])
    with pytest.raises(OnnxPruneError, match="expects"):
        onnxprune.prune(MODEL, str(tmp_path / "o.onnx"), ratio=0.5, calib=src)
    with pytest.raises(OnnxPruneError, match="calib_batch 0 must be ≥ 1"):
        onnxprune.prune(MODEL, str(tmp_path / "o.onnx"), ratio=0.5, calib=CALIB, calib_batch=0)
    with pytest.raises(OnnxPruneError, match=r"ratios 1.5 must be in \(0, 1\)"):
        api.sensitivity(MODEL, calib=CALIB, ratios=[1.5])
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("case,match", [
    ("shape", "has shape [10, 1, 3, 8]"),
    ("string", "has dtype <U1"),
    ("labels", "'labels' has shape [10, 3]"),
    ("labels_float", "'labels' has shape [10] and dtype float32"),
    ("nan", "NaN/Inf"),
    ("empty", "no samples"),
])
def test_bad_validation_data_is_refused(tmp_path, x, case, match):
    arrays = {"shape": dict(input=x[:10, :, :3]), "string": dict(input=np.array(["a"] * 3)),
              "labels": dict(input=x[:10], labels=np.zeros((10, 3), np.int64)),
              "labels_float": dict(input=x[:10], labels=np.zeros(10, np.float32)),
              "nan": dict(input=np.full_like(x[:4], np.nan)), "empty": dict(input=x[:0])}[case]
    refused("validate", MODEL, MODEL, "--no-latency", "--data", npz(tmp_path, **arrays), match=match)


# ------------------------------------------------------------------ images
def test_images_bad_file_bomb_and_spec(tmp_path):
    from PIL import Image

    good, bad, bomb = tmp_path / "good", tmp_path / "bad", tmp_path / "bomb"
    for d in (good, bad, bomb):
        d.mkdir()
    Image.new("L", (8, 8), 100).save(good / "a.png")
    (bad / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.new("L", (9000, 9000)).save(bomb / "b.png")  # 81 MP, above the limit; tiny on disk
    out = tmp_path / "o.onnx"
    base = ("prune", MODEL, "-o", out, "--ratio", "0.5", "--calib")
    refused(*base, bad, "--image-spec", "size=8,mode=L", match=f"{bad / 'a.png'}: cannot read as an image")
    refused(*base, bomb, "--image-spec", "size=8,mode=L", match="more than the 64,000,000 allowed")
    refused(*base, good, "--image-spec", "size=0,mode=L", match="size=0x0: each side must be in")
    refused(*base, good, "--image-spec", "size=8,mode=L,std=0", match="a zero std")
    refused(*base, good, "--image-spec", "size=8,mode=L,mean=1/2", match="expected 1 or 1 finite values")
    refused(*base, good, "--image-spec", "size=7,mode=L", match="images become samples of shape [1, 7, 7]")
    assert not out.exists()
    rc, err = cli(*base, good, "--image-spec", "size=8,mode=L")
    assert rc == 0, err


# ------------------------------------------------------------------ numeric options
@pytest.mark.parametrize("argv,match", [
    (("prune", "--ratio", "0.5", "--calib", CALIB, "--calib-batch", "0"), "--calib-batch 0"),
    (("prune", "--ratio", "0.5", "--calib", CALIB, "--calib-limit", "0"), "--calib-limit 0"),
    (("prune", "--ratio", "0.5", "--validate", "--repeats", "0"), "--repeats 0"),
    (("prune", "--ratio", "0.5", "--validate", "--warmup", "-1"), "--warmup -1"),
    (("prune", "--ratio", "0.5", "--validate", "--batch", "-1"), "--batch -1"),
    (("prune", "--target-flops", "0.5", "--criterion", "sensitivity", "--calib", CALIB,
      "--sensitivity-ratios", "1.5"), "--sensitivity-ratios 1.5"),
    (("prune", "--ratio", "0.5", "--calib", CALIB, "--dead-tol", "-1"), "--dead-tol -1"),
    (("prune", "--ratio", "0.5", "--seed", "-3"), "--seed -3"),
    (("prune", "--ratio", "0.5", "--remove-blocks", "-1"), "--remove-blocks -1"),
    (("prune", "--ratio", "0.5", "--heads", "-1"), "--heads -1"),
    (("prune", "--ratio", "0.5", "--head-ratio", "1.5"), "--head-ratio 1.5"),
    (("prune", "--ratio", "1.5"), "--ratio 1.5"),
    (("prune", "--ratio", "nan"), "--ratio is NaN"),
    (("prune", "--target-flops", "0"), "--target-flops 0"),
    (("prune", "--ratio", "0.5", "--round-to", "0"), "--round-to"),
    (("prune", "--ratio", "0.5", "--dim", "N=0"), "--dim N=0 must be ≥ 1"),
    (("plan", "--ratio", "0.5", "--calib-batch", "-2"), "--calib-batch -2"),
    (("sensitivity", "--calib", CALIB, "--ratios", "-1"), "--ratios -1"),
    (("sensitivity", "--calib", CALIB, "--ratios", "0.5", "0.5"), "repeated"),
    (("validate", "--batch", "0"), "--batch 0"),
    (("validate", "--repeats", "0"), "--repeats 0"),
    (("validate", "--min-cosine", "2"), "--min-cosine 2"),
    (("validate", "--max-accuracy-drop", "-0.1"), "--max-accuracy-drop -0.1"),
    (("validate", "--atol", "-1"), "--atol -1"),
])
def test_numeric_options_are_range_checked(tmp_path, argv, match):
    cmd, rest = argv[0], argv[1:]
    if cmd in ("prune", "plan"):
        full = (cmd, MODEL, "-o", tmp_path / ("o.onnx" if cmd == "prune" else "p.json"), *rest)
    elif cmd == "validate":
        full = (cmd, MODEL, MODEL, *rest)
    else:
        full = (cmd, MODEL, *rest)
    refused(*full, match=match)
    assert not os.listdir(tmp_path)


def test_api_refuses_the_same_values():
    from onnxprune.validate import compare_models

    with pytest.raises(OnnxPruneError, match="batch 0"):
        compare_models(MODEL, MODEL, batch=0)
    with pytest.raises(OnnxPruneError, match="repeats 0"):
        compare_models(MODEL, MODEL, repeats=0)
    with pytest.raises(OnnxPruneError, match="sensitivity_ratios 0 must be in"):
        onnxprune.plan(MODEL, ratio=0.5, sensitivity_ratios=[0, 0.5])
    with pytest.raises(OnnxPruneError, match="dims N=-1 must be ≥ 1"):
        onnxprune.inspect(MODEL, dims={"N": -1})


# ------------------------------------------------------------------ plan JSON schema
def _mutations():
    def group(key, value):
        def f(d):
            d["groups"][0][key] = value
        return f
    return {
        "list": (lambda d: [], "expected a JSON object, got list"),
        "group_str": (group("group", "0"), "'group' must be a whole number, got \"0\""),
        "group_huge": (None, "'group' must be a whole number, got Infinity"),
        "dup_index": (group("remove", [0, 0]), "lists channel 0 twice"),
        "frac_index": (group("remove", [0.5]), "must be a list of whole channel indices"),
        "bool_index": (group("remove", [True]), "must be a list of whole channel indices"),
        "neg_index": (group("remove", [-1]), "index -1 is outside"),
        "big_index": (group("remove", [10**6]), "is outside 0.."),
        "remove_str": (group("remove", "01"), "must be a list of whole channel indices"),
        "dup_group": (lambda d: d["groups"].append(dict(d["groups"][0])), "is listed twice"),
        "groups_dict": (lambda d: d.__setitem__("groups", {}), "field 'groups' has the wrong type"),
        "missing": (lambda d: d.pop("signature") and None, "field 'signature' is missing"),
        "unknown": (group("bogus", 1), "unknown field 'bogus'"),
        "dead": (group("dead", [0]), "'dead' channels must also be in 'remove'"),
        "scores_nan": (group("scores", [float("nan")]), "'scores' must be a list of finite numbers"),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_plan_json_is_validated(tmp_path, case):
    plan = tmp_path / "p.json"
    rc, err = cli("plan", MODEL, "-o", plan, "--ratio", "0.5")
    assert rc == 0, err
    d = json.loads(plan.read_text())
    d["groups"][0]["remove"] = [i for i in d["groups"][0]["remove"] if i != 0]
    d["groups"][0]["dead"] = []
    mutate, match = _mutations()[case]
    if mutate is None:
        text = json.dumps(d).replace('"group": 0', '"group": 1e400', 1)
    else:
        r = mutate(d)
        d = d if r is None else r
        text = json.dumps(d)
    plan.write_text(text)
    out = tmp_path / "o.onnx"
    refused("prune", MODEL, "-o", out, "--plan", plan, match=match)
    assert not out.exists()


# ------------------------------------------------------------------ outputs checked before work
@pytest.mark.parametrize("cmd", ["prune", "plan", "sensitivity", "save-plan"])
@pytest.mark.parametrize("where", ["missing", "folder"])
def test_outputs_checked_before_work(tmp_path, cmd, where):
    target = tmp_path / "nope" / "x.out" if where == "missing" else tmp_path / "adir"
    (tmp_path / "adir").mkdir()
    match = "does not exist" if where == "missing" else "is a folder"
    argv = {"prune": ("prune", MODEL, "-o", target, "--ratio", "0.5"),
            "plan": ("plan", MODEL, "-o", target, "--ratio", "0.5"),
            "sensitivity": ("sensitivity", MODEL, "--calib", CALIB, "-o", target),
            "save-plan": ("prune", MODEL, "-o", tmp_path / "m.onnx", "--ratio", "0.5", "--save-plan", target)}[cmd]
    refused(*argv, match=match)
    assert sorted(os.listdir(tmp_path)) == ["adir"]  # the model of --save-plan was not written either


def test_unwritable_folder_is_refused_before_work(tmp_path, monkeypatch):
    import tempfile

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", deny)  # root ignores chmod: simulate a read-only folder
    refused("plan", MODEL, "-o", tmp_path / "p.json", "--ratio", "0.5", match="cannot write into")
    refused("prune", MODEL, "-o", tmp_path / "o.onnx", "--ratio", "0.5", match="cannot write into")


# ------------------------------------------------------------------ results and odd models
def test_validation_refuses_zero_samples(monkeypatch):
    from onnxprune.validate import compare, inputs

    monkeypatch.setattr(compare, "random_dataset", lambda specs, **kw: inputs.Dataset([], None, "nothing"))
    with pytest.raises(OnnxPruneError, match="hold no samples"):
        compare.compare_models(MODEL, MODEL, latency=False)


def test_nonfinite_recovery_is_refused_naming_the_tensor(tmp_path, x, monkeypatch):
    """Even when data passes the checks (huge values overflow in float32), a non-finite weight
    written by recovery refuses the write, naming the tensor."""
    src = npz(tmp_path, input=(x * np.float32(3e38)).astype(np.float32))
    out = tmp_path / "o.onnx"
    line = refused("prune", MODEL, "-o", out, "--ratio", "0.5", "--recover", "bias", "--calib", src,
                   match="non-finite")
    assert "'" in line and not out.exists()


def _small(cout=8, const_nodes=False):
    n = Net("s", const_nodes=const_nodes)
    y = n.relu(n.bn(n.conv(n.input("x", [1, 3, 8, 8]), 3, cout, 3), cout))
    n.output(n.conv(y, cout, 4, 1))
    return n.build()


def test_zero_width_layer_is_refused(tmp_path):
    n = Net("z")
    y = n.conv(n.input("x", [1, 3, 8, 8]), 3, 0, 3)
    n.output(n.conv(y, 0, 4, 1))
    onnx.save(n.build(), str(tmp_path / "z.onnx"))
    refused("prune", tmp_path / "z.onnx", "-o", tmp_path / "o.onnx", "--ratio", "0.5", match="zero-width layer")


def test_weights_disagreeing_with_the_graph(tmp_path):
    p = _small()
    t = next(t for t in p.graph.initializer if list(t.dims) == [8] and "bn" in t.name)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:7], t.name))  # BN scale of 7 for 8 channels
    onnx.save(p, str(tmp_path / "bn7.onnx"))
    out = tmp_path / "o.onnx"
    refused("prune", tmp_path / "bn7.onnx", "-o", out, "--ratio", "0.5", match="7")
    assert not out.exists()


def test_external_data_shorter_than_its_tensor(tmp_path):
    onnx.save(_small(), str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    data = tmp_path / "m.data"
    data.write_bytes(data.read_bytes()[:-8])
    refused("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--ratio", "0.5", match="past the end")


def test_small_external_model_whose_pruned_tensors_need_no_data_file(tmp_path):
    onnx.save(_small(16), str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    out = tmp_path / "o.onnx"
    rc, err = cli("prune", tmp_path / "m.onnx", "-o", out, "--ratio", "0.75", "--round-to", "1")  # 16x3x3x3 -> 4x3x3x3: < 1 KB
    assert rc == 0, err
    onnx.checker.check_model(str(out), full_check=True)
    assert sorted(os.listdir(tmp_path)) == ["m.data", "m.onnx", "o.onnx"]


def test_uint8_qlinearconv_model(tmp_path):
    u8 = lambda v, name: numpy_helper.from_array(np.asarray(v, np.uint8), name)  # noqa: E731
    f32 = lambda v, name: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    rng = np.random.default_rng(0)
    inits = [f32(0.02, "xs"), u8(128, "xz"), u8(rng.integers(0, 255, (8, 3, 3, 3)), "w"), f32(0.01, "ws"),
             u8(128, "wz"), f32(0.05, "ys"), u8(128, "yz"), u8(rng.integers(0, 255, (4, 8, 1, 1)), "w2"),
             numpy_helper.from_array(np.zeros(8, np.int32), "b")]
    nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["h"], pads=[1] * 4),
             helper.make_node("QLinearConv", ["h", "ys", "yz", "w2", "ws", "wz", "ys", "yz"], ["y"])]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "q.onnx"))
    for recover in ("none", "bias"):
        out = tmp_path / f"q-{recover}.onnx"
        rc, err = cli("prune", tmp_path / "q.onnx", "-o", out, "--ratio", "0.5", "--recover", recover)
        assert rc in (0, 1) and "Traceback" not in err and "internal error" not in err, err
        assert (rc == 0) == out.exists()
        if rc == 0:
            onnx.checker.check_model(str(out), full_check=True)


def test_gradient_record_given_as_npy(tmp_path):
    np.save(tmp_path / "g.npy", np.zeros(3))
    refused("prune", MODEL, "-o", tmp_path / "o.onnx", "--ratio", "0.5", "--criterion", "taylor",
            "--gradients", tmp_path / "g.npy", match="a .npy array")
    refused("sparsify", MODEL, "-o", tmp_path / "o.onnx", "--ratio", "0.5", "--gradients", tmp_path / "g.npy",
            match="a .npy array")


# ------------------------------------------------------------------ bugs are bugs
@pytest.mark.parametrize("exc", [ZeroDivisionError("x"), KeyError("k"), RecursionError(), MemoryError()])
def test_unexpected_exceptions_are_bugs_with_their_own_exit_code(monkeypatch, exc):
    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(api, "inspect", boom)
    rc, err = cli("inspect", MODEL)
    assert rc == 3 and "internal error (a bug" in err and "Traceback" not in err, err
    assert err.count("\n") == 1, err
    rc, err = cli("--debug", "inspect", MODEL)
    assert rc == 3 and "Traceback" in err and type(exc).__name__ in err, err


def test_user_errors_stay_one_line_with_debug(tmp_path):
    rc, err = cli("--debug", "prune", MODEL, "-o", tmp_path / "o.onnx", "--ratio", "0.5", "--calib-batch", "0",
                  "--calib", CALIB)
    assert rc == 1 and "Traceback" not in err and err.count("\n") == 1, err


def test_bias_disagreeing_with_the_graph_under_recovery(tmp_path):
    """Found by fuzzing: a Gemm bias of 125 for 128 outputs crashed bias recovery."""
    p = onnx.load(MODEL)
    t = next(t for t in p.graph.initializer if t.name == "11.bias")
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:125], t.name))
    onnx.save(p, str(tmp_path / "m.onnx"))
    out = tmp_path / "o.onnx"
    refused("prune", tmp_path / "m.onnx", "-o", out, "--ratio", "0.5", "--recover", "bias",
            match="bias '11.bias' has shape [125], the node has 128 output channels")
    assert not out.exists()


def test_a_native_abort_in_onnx_checker_is_a_one_line_error(tmp_path, monkeypatch):
    """onnx's C++ shape inference aborts the process on some malformed graphs (std::clamp assertion,
    fuzz case magika/graph_output); the final check runs in a forked child, so it is an error."""
    import onnx as _onnx

    real = _onnx.checker.check_model
    monkeypatch.setattr(_onnx.checker, "check_model",
                        lambda m, full_check=False, **k: os.abort() if full_check else real(m, **k))
    out = tmp_path / "o.onnx"
    line = refused("prune", MODEL, "-o", out, "--ratio", "0.5", "--round-to", "1", match="checker crashed (signal 6)")
    assert "nothing was written" in line and not out.exists()


def test_misdeclared_output_shape_is_dropped_not_refused(tmp_path, caplog):
    """Real exports declare output shapes the graph does not compute (ddddocr's recogniser:
    [1, ?] for [28, 1, 8210]); onnxruntime runs them, so onnxprune prunes them too: the wrong
    declaration is dropped with a warning naming the output."""
    m = onnx.load(MODEL)
    out = m.graph.output[0]
    del out.type.tensor_type.shape.dim[:]
    for d in (1, 5, 7):
        out.type.tensor_type.shape.dim.add().dim_value = d
    src, dst = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(m, str(src))
    with caplog.at_level("WARNING", logger="onnxprune"):
        res = onnxprune.prune(str(src), str(dst), ratio=0.5, round_to=8)
    assert any("is declared with shape [1, 5, 7]" in r.getMessage() for r in caplog.records)
    pruned = onnx.load(str(dst))
    onnx.checker.check_model(pruned, full_check=True)
    assert len(pruned.graph.output[0].type.tensor_type.shape.dim) == 2 and res.after.flops < res.before.flops


def test_external_data_location_that_is_not_text_is_refused(tmp_path):
    """A damaged file whose external-data location is not UTF-8 (protobuf hands it over as bytes;
    found by fuzzing) is a one-line refusal, not a crash."""
    m = onnx.load(MODEL)
    onnx.save(m, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    raw = (tmp_path / "m.onnx").read_bytes()
    (tmp_path / "m.onnx").write_bytes(raw.replace(b"m.data", b"m.\xffata"))
    refused("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--ratio", "0.5", match="not valid UTF-8")
    assert not (tmp_path / "o.onnx").exists()
