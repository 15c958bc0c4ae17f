"""LSTM / GRU / RNN hidden units: the oracle for every op, direction, layout and initial-state form.

Removing unit j ≡ zeroing column j of R and the unit's slice in every consumer of Y/Y_h/Y_c.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import assert_oracle
from onnxprune.analysis import analyze
from onnxprune.graph import Model
from onnxprune.testing import Net

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent(op, *, dirs=1, layout=0, state="none", peephole=False, use="y", seed=0, hidden=8):
    """x [T=5, B=2, 6] (or [B, T, 6]) → Gemm-free linear → op(hidden) → consumer of Y or Y_h → out.

    state: none | const | zeros_runtime | graph_input.
    """
    g = GATES[op]
    n = Net(f"{op}{dirs}{layout}", seed=seed)
    shape = [5, "B", 6] if layout == 0 else ["B", 5, 6]
    x = n.input("x", shape)
    x = n.op("Relu", [n.op("MatMul", [x, n.weight((6, 6), 6)])])
    rng = np.random.default_rng(seed)
    w = n.const(rng.normal(0, 0.4, (dirs, g * hidden, 6)).astype(np.float32), "W")
    r = n.const(rng.normal(0, 0.4, (dirs, g * hidden, hidden)).astype(np.float32), "R")
    b = n.const(rng.normal(0, 0.2, (dirs, 2 * g * hidden)).astype(np.float32), "B")
    ins = [x, w, r, b, ""]
    sshape = (dirs, 2, hidden) if layout == 0 else (2, dirs, hidden)
    if state == "const":
        ins.append(n.const(rng.normal(0, 0.5, sshape).astype(np.float32), "h0"))
    elif state == "zeros_runtime":
        batch = n.op("Gather", [n.op("Shape", [x]), n.const(np.array([1 - layout], np.int64))], axis=0)
        dims = [n.const(np.array([dirs], np.int64)), batch, n.const(np.array([hidden], np.int64))]
        if layout == 1:
            dims = [dims[1], dims[0], dims[2]]
        ins.append(n.op("ConstantOfShape", [n.op("Concat", dims, axis=0)],
                        value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])))
    elif state == "graph_input":
        ins.append(n.input("h0", list(sshape)))
    else:
        ins.append("")
    if op == "LSTM":
        ins.append(n.const(rng.normal(0, 0.5, sshape).astype(np.float32), "c0") if state == "const" else "")
        if peephole:
            ins.append(n.const(rng.normal(0, 0.3, (dirs, 3 * hidden)).astype(np.float32), "P"))
    while ins and ins[-1] == "":
        ins.pop()
    attrs = dict(hidden_size=hidden, direction="bidirectional" if dirs == 2 else "forward")
    if layout:
        attrs["layout"] = 1
    outs = n.op(op, ins, n_out=2, **attrs)
    y, y_h = outs
    if use == "y":  # [T, dirs, B, H] → [T, B, dirs·H] → linear
        if layout == 0:
            z = n.op("Transpose", [y], perm=[0, 2, 1, 3])
        else:
            z = y  # [B, T, dirs, H]
        z = n.op("Reshape", [z, n.const(np.array([0, 0, -1], np.int64))])
        n.output(n.op("MatMul", [z, n.weight((dirs * hidden, 3), dirs * hidden)]))
    else:  # Y_h[-1]: [B, H] → linear
        last = n.op("Gather", [y_h, n.const(np.array(-1, np.int64))], axis=1 if layout else 0)
        n.output(n.op("MatMul", [last, n.weight((hidden, 3), hidden)]))
    return n.build()


def _feeds(proto, layout):
    rng = np.random.default_rng(1)
    shape = (5, 2, 6) if layout == 0 else (2, 5, 6)
    feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
    for v in proto.graph.input:
        if v.name == "h0":
            feeds["h0"] = rng.standard_normal([d.dim_value for d in v.type.tensor_type.shape.dim]).astype(np.float32)
    return feeds


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("dirs", [1, 2])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("use", ["y", "y_h"])
def test_hidden_units_oracle(op, dirs, layout, use, monkeypatch):
    if layout == 1:  # onnxruntime's CPU kernels refuse layout 1: the ONNX reference runs both models
        from onnx.reference import ReferenceEvaluator

        import onnxprune.testing.oracle as oracle

        monkeypatch.setattr(oracle, "run", lambda model, feeds: ReferenceEvaluator(model).run(None, feeds))
    proto = recurrent(op, dirs=dirs, layout=layout, use=use, seed=dirs + 2 * layout)
    res = assert_oracle(proto, ratio=0.5, feeds=_feeds(proto, layout))
    node = next(n for n in res.pruned.graph.node if n.op_type == op)
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "hidden_size")) == 4


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("state", ["const", "zeros_runtime"])
def test_initial_states_sliced_or_dropped(op, state):
    proto = recurrent(op, dirs=2, state=state, seed=3)
    res = assert_oracle(proto, ratio=0.5, feeds=_feeds(proto, 0))
    node = next(n for n in res.pruned.graph.node if n.op_type == op)
    if state == "zeros_runtime":  # zeros made at run time ≡ no initial state
        assert len(node.input) < 6 or not node.input[5]


def test_initial_state_graph_input_keeps_units():
    proto = recurrent("GRU", state="graph_input", seed=4)
    an = analyze(Model(proto))
    grp = next(g for g in an.groups if "GRU" in an.group_name(g) or "gru" in an.group_name(g).lower())
    assert not grp.prunable and any("graph input" in r for r in grp.reasons)


def test_lstm_peepholes_are_sliced():
    proto = recurrent("LSTM", peephole=True, seed=5)
    assert_oracle(proto, ratio=0.5, feeds=_feeds(proto, 0))


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_ratio_zero_is_exact(op):
    from onnxprune.testing import check_oracle, run

    proto = recurrent(op, dirs=2, seed=6)
    feeds = _feeds(proto, 0)
    res = check_oracle(proto, ratio=0.0, feeds=feeds)
    assert res.removed == 0
    for a, b in zip(run(proto, feeds), run(res.pruned, feeds)):
        np.testing.assert_array_equal(a, b)


def test_recurrent_cost_is_counted():
    from onnxprune.cost import count

    c = count(Model(recurrent("LSTM", dirs=2, seed=7)))
    assert not c.unknown
    assert c.macs >= 5 * 1 * 2 * 4 * 8 * (6 + 8)  # steps × batch × dirs × gates × H × (I + H)


@pytest.mark.parametrize("per_channel", [True, False])
def test_dynamically_quantized_lstm_prunes_and_stays_int8(tmp_path, per_channel):
    """onnxruntime.quantization's DynamicQuantizeLSTM (int8 W/R, transposed, per-tensor or per-row
    scales): the same units go and the weights stay int8. The op also quantizes x and h at run time
    with a scale from their range, which the removed units change: the oracle holds to that
    quantization noise (1% of the output scale), while the removal itself changes outputs far more."""
    from onnxprune.testing import check_oracle
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "l.onnx", tmp_path / "lq.onnx"
    onnx.save(recurrent("LSTM", dirs=2, seed=8), str(src))
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["LSTM"], weight_type=QuantType.QInt8,
                     per_channel=per_channel)
    proto = onnx.load(str(dst))
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in proto.graph.node)
    res = check_oracle(proto, ratio=0.5, feeds=_feeds(proto, 0))
    assert res.removed > 0 and res.max_err <= 0.01 * res.scale, (res.max_err, res.scale)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(res.original_out, res.reference_out))
    assert moved > 10 * res.max_err
    node = next(n for n in res.pruned.graph.node if n.op_type == "DynamicQuantizeLSTM")
    inits = {t.name: t for t in res.pruned.graph.initializer}
    # [dirs, I, 4·H]: the input channels (6 → 3) and the units (8 → 4, ×4 gates) both went
    assert inits[node.input[1]].data_type == TensorProto.INT8 and list(inits[node.input[1]].dims) == [2, 3, 16]


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_inspect_marks_recurrent_groups(op):
    from onnxprune.analysis import group_kind

    an = analyze(Model(recurrent(op, seed=5)))
    kinds = {group_kind(an, g) for g in an.groups if any(s.node is not None and s.node.op_type == op for s in g.spaces)}
    assert kinds == {"recurrent"}
