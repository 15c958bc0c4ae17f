"""Sequential reconstruction (``--recover seq``) and pruning to a quality target (``--target-cosine``)."""
import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import PlanError
from onnxprune.testing import Net, run
from onnxprune.validate.quality import Target, measure, output_kind


def chain(seed=0):
    """Conv3x3 -> Conv3x3 -> depthwise 3x3 -> Conv1x1 -> GAP -> Gemm, ReLUs between."""
    n = Net("chain", seed=seed)
    x = n.input("x", ["N", 3, 12, 12])
    y = n.cbr(x, 3, 16)
    y = n.cbr(y, 16, 16)
    y = n.relu(n.op("Conv", [y, n.weight((16, 1, 3, 3), 9), n.const(np.zeros(16, np.float32))], group=16,
                    pads=[1, 1, 1, 1]))
    y = n.cbr(y, 16, 12, 1)
    n.output(n.gemm(n.flatten(n.gap(y)), 12, 6))
    return n.build()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("seq")
    path = str(d / "chain.onnx")
    onnx.save(chain(), path)
    r = np.random.default_rng(3)
    calib = str(d / "calib.npz")
    np.savez(calib, x=r.standard_normal((48, 3, 12, 12)).astype(np.float32))
    held = {"x": r.standard_normal((32, 3, 12, 12)).astype(np.float32)}
    return path, calib, held, d


def _rel(path, out, feeds):
    a = run(onnx.load(path), feeds)[0]
    b = run(onnx.load(out), feeds)[0]
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def test_seq_recovers_more_than_none_and_keeps_structure(model):
    path, calib, held, d = model
    err = {}
    for rec in ("none", "seq"):
        out = str(d / f"{rec}.onnx")
        res = onnxprune.prune(path, out, ratio=0.5, criterion="l2", calib=calib, round_to=1, recover=rec, remove_dead=False)
        onnx.checker.check_model(onnx.load(out), full_check=True)
        err[rec] = _rel(path, out, held)
        if rec == "seq":
            assert any("sequential reconstruction" in r for r in res.recovery)
            assert any("groups" in r for r in res.recovery)  # the depthwise conv refitted per channel
    assert err["seq"] < 0.8 * err["none"], err


def test_seq_at_ratio_zero_is_exact(model):
    path, calib, held, d = model
    out = str(d / "zero.onnx")
    onnxprune.prune(path, out, ratio=0.0, criterion="l2", calib=calib, round_to=1, recover="seq", remove_dead=False)
    assert _rel(path, out, held) < 1e-6


def test_target_cosine_never_misses_on_the_check_split(model):
    path, calib, held, d = model
    out = str(d / "q.onnx")
    res = onnxprune.prune(path, out, target_cosine=0.97, calib=calib, round_to=1)
    st = res.plan.settings
    traj = st["trajectory"]
    assert traj and any(s["met"] for s in traj)
    chosen = min((s for s in traj if s["met"]), key=lambda s: s["flops"])
    assert res.after.flops / res.before.flops == pytest.approx(chosen["flops"], abs=1e-4)
    assert res.after.flops < res.before.flops  # it removed something
    # the written model meets the target on the check split (every 4th calibration sample)
    x = np.load(calib)["x"]
    check = {"x": x[3::4]}
    a, b = run(onnx.load(path), check)[0], run(onnx.load(out), check)[0]
    q = measure("y", a, b, output_kind(a, "Gemm"))
    assert min(q.cosine, q.decision) >= 0.97
    assert chosen["score"] >= 0.97


def test_target_unreachable_is_a_user_error(model, tmp_path):
    path, calib, _, _ = model
    with pytest.raises(PlanError, match="no plan meets"):
        onnxprune.prune(path, str(tmp_path / "x.onnx"), target_cosine=1.0, calib=calib, round_to=1, criterion="l2")
    assert not (tmp_path / "x.onnx").exists()


def test_user_metric_and_cli_plan(model, capsys):
    path, calib, _, d = model
    agree = lambda a, b: float(np.mean(a[0].argmax(1) == b[0].argmax(1)))  # noqa: E731
    p = onnxprune.plan(path, metric=agree, metric_target=0.9, calib=calib, round_to=1)
    assert all(s["met"] == (s["score"] >= 0.9) for s in p.settings["trajectory"])
    out = str(d / "plan.json")
    assert main(["plan", path, "-o", out, "--calib", calib, "--target-error", "0.3", "--round-to", "1"]) == 0
    text = capsys.readouterr().out
    assert "quality search for relative error" in text and "FLOPs kept" in text
    assert main(["prune", path, "-o", str(d / "e.onnx"), "--target-error", "0.3"]) == 1


def test_output_kinds_and_decisions():
    r = np.random.default_rng(0)
    logits = r.standard_normal((8, 5)).astype(np.float32)
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert output_kind(soft) == "distribution"
    assert output_kind(logits, "Gemm") == "classifier" and output_kind(logits, "Div") == "values"
    prob = 1 / (1 + np.exp(-r.standard_normal((2, 1, 16, 16)) * 3))
    assert output_kind(prob) == "probability"
    flipped = prob.copy()
    flipped[prob > 0.5] = 0.49  # near in cosine, every positive decision lost
    q = measure("p", prob, flipped, "probability")
    assert q.cosine > 0.9 and q.decision == 0.0
    t = Target(cosine=0.9)
    assert not t.check(["p"], ["probability"], [prob], [flipped])[0]


def test_seq_refits_a_grouped_conv_per_group(tmp_path):
    n = Net("grouped", seed=1)
    x = n.input("x", ["N", 3, 10, 10])
    y = n.cbr(x, 3, 16)
    y = n.relu(n.conv(y, 16, 16, 3, group=2))
    n.output(n.gemm(n.flatten(n.gap(y)), 16, 4))
    path = str(tmp_path / "g.onnx")
    onnx.save(n.build(), path)
    r = np.random.default_rng(0)
    calib = str(tmp_path / "c.npz")
    np.savez(calib, x=r.standard_normal((32, 3, 10, 10)).astype(np.float32))
    held = {"x": r.standard_normal((16, 3, 10, 10)).astype(np.float32)}
    err = {}
    for rec in ("none", "seq"):
        out = str(tmp_path / f"{rec}.onnx")
        res = onnxprune.prune(path, out, ratio=0.5, criterion="l2", calib=calib, round_to=1, recover=rec, remove_dead=False)
        err[rec] = _rel(path, out, held)
    assert any("per group, 2 groups" in line for line in res.recovery), res.recovery
    assert err["seq"] < err["none"], err


def _held_out(lines):
    import re

    return [tuple(map(float, m.groups())) for line in lines
            if (m := re.search(r"held-out error (\S+) no refit -> (\S+) over", line))]


def test_seq_frontier_cache_runs_each_node_once_and_matches_running_from_the_inputs(model, monkeypatch):
    """Levels run only the segment after the cached frontier; the refits equal those of runs from
    the graph inputs (cache over budget) and of whole-model runs (a graph with subgraphs is never cut)."""
    from onnxprune.rewrite import sequential

    path, calib, held, d = model
    runs = []
    segment = sequential._Frontier._segment

    def counted(self, proto, side, nodes):
        runs.append(len(nodes))
        return segment(self, proto, side, nodes)

    monkeypatch.setattr(sequential._Frontier, "_segment", counted)
    outs, reports, n_runs = {}, {}, {}
    for mode in ("cached", "over budget", "uncut"):
        monkeypatch.setattr(sequential, "CACHE_BYTES", 0 if mode == "over budget" else 1 << 30)
        monkeypatch.setattr(sequential, "_is_graph_attr", (lambda a: True) if mode == "uncut" else (lambda a: False))
        runs.clear()
        out = str(d / f"cache-{mode}.onnx")
        res = onnxprune.prune(path, out, ratio=0.5, criterion="l2", calib=calib, round_to=1, recover="seq",
                              remove_dead=False)
        outs[mode], reports[mode], n_runs[mode] = run(onnx.load(out), held)[0], _held_out(res.recovery), sum(runs)
        assert {"onnxruntime", "statistics", "solves"} <= set(sequential.LAST_PHASES)
    n_nodes = len(onnx.load(path).graph.node)
    assert 0 < n_runs["cached"] <= 2 * n_nodes, n_runs  # two models, each node at most once
    assert n_runs["over budget"] > n_runs["cached"] and n_runs["uncut"] == 0, n_runs
    assert len(reports["cached"]) >= 3
    for mode in ("over budget", "uncut"):
        np.testing.assert_allclose(reports[mode], reports["cached"], rtol=1e-4)
        np.testing.assert_allclose(outs[mode], outs["cached"], rtol=1e-4, atol=1e-4 * np.abs(outs["cached"]).max())


def test_seq_chosen_refit_never_worse_than_no_refit_on_held_out_samples(model, monkeypatch):
    from threadpoolctl import threadpool_info

    from onnxprune.rewrite import sequential

    path, calib, _, d = model
    threads = []
    solve = sequential._solve

    def counted(job):
        threads.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return solve(job)

    monkeypatch.setattr(sequential, "_solve", counted)
    res = onnxprune.prune(path, str(d / "never.onnx"), ratio=0.6, criterion="l1", calib=calib, round_to=1,
                          recover="seq", remove_dead=False)
    pairs = _held_out(res.recovery)
    assert pairs and all(best <= plain * (1 + 1e-9) for plain, best in pairs), pairs
    assert any(best < 0.9 * plain for plain, best in pairs)
    assert threads and set(threads) == {sequential.BLAS_THREADS}  # one BLAS thread while refitting


def test_ridge_walk_picks_the_grid_minimum(monkeypatch):
    """Above WALK_DIM inputs the ridges are tried outward from the middle: same choice as all of them."""
    from onnxprune.rewrite import sequential

    r = np.random.default_rng(5)
    chosen = []
    for noise, n in ((0.01, 4000), (3.0, 700), (30.0, 650)):  # small to large best λ
        d, per = 80, 6
        x = np.concatenate([r.standard_normal((2 * n, d)) @ r.standard_normal((d, d)) * 0.3, np.ones((2 * n, 1))], 1)
        y = x @ r.standard_normal((d + 1, per)) + noise * r.standard_normal((2 * n, per))
        h = [x[i::2].T @ x[i::2] for i in (0, 1)]
        b = [x[i::2].T @ y[i::2] for i in (0, 1)]
        yy = np.array([np.sum(y[1::2] ** 2)])
        errs = {}
        for walk in (10, 10 ** 9):
            monkeypatch.setattr(sequential, "WALK_DIM", walk)
            e = np.full((len(sequential.RIDGES), 1), np.inf)
            sequential._ridge_errors(h[0][None], b[0][None], h[1][None], b[1][None], yy, e)
            errs[walk] = e
        full = errs[10 ** 9]
        assert np.isfinite(full).all()
        assert np.argmin(errs[10]) == np.argmin(full), (noise, errs)
        assert np.isinf(errs[10]).sum() >= 1  # a solve saved
        chosen.append(int(np.argmin(full)))
    assert len(set(chosen)) == 3, chosen  # the cases span the grid


def test_seq_targets_are_the_layers_before_bias_compensation(tmp_path, monkeypatch):
    """A consumer seq cannot refit (ConvTranspose) gets bias compensation first; the refits downstream
    must still reproduce the *original* layers, not the compensated ones."""
    from onnxprune.rewrite import sequential
    from onnxprune.testing.archs import unet

    proto = unet(image=16, width=8, seed=3)
    path = str(tmp_path / "u.onnx")
    onnx.save(proto, path)
    calib = str(tmp_path / "c.npz")
    np.savez(calib, input=np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32))
    seen = {}
    real = sequential.reconstruct

    def spy(model, an, keep_atom, calibration, **kw):
        seen["original"] = kw.get("original")
        seen["current"] = model.to_proto()
        return real(model, an, keep_atom, calibration, **kw)

    monkeypatch.setattr(sequential, "reconstruct", spy)
    res = onnxprune.prune(path, str(tmp_path / "p.onnx"), ratio=0.5, criterion="l2", calib=calib, round_to=1,
                          recover="seq")
    assert any("bias" in line for line in res.recovery), res.recovery
    before = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    target = {t.name: onnx.numpy_helper.to_array(t) for t in seen["original"].graph.initializer}
    current = {t.name: onnx.numpy_helper.to_array(t) for t in seen["current"].graph.initializer}
    changed = [k for k in before if k in current and not np.array_equal(before[k], current[k])]
    assert changed, "bias compensation changed nothing: the test does not exercise it"
    assert all(np.array_equal(before[k], target[k]) for k in before if k in target)

def test_per_group_search_removes_at_least_the_global_and_never_misses(model, tmp_path):
    """The per-group phase starts from the best global plan, only removes more, and keeps only met plans."""
    path, calib, _, _ = model

    def cos(a, b):  # mean per-sample cosine of the first output
        a, b = a[0].astype(np.float64), b[0].astype(np.float64)
        return float(np.mean(np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)))

    found = {}
    for how in ("global", "pergroup"):
        out = str(tmp_path / f"{how}.onnx")
        res = onnxprune.prune(path, out, metric=cos, metric_target=0.9, calib=calib, round_to=1, criterion="l2", recover="none",
                              remove_dead=False, quality_search=how)
        found[how] = (res, out)
    g, p = found["global"][0], found["pergroup"][0]
    g_traj, p_traj = g.plan.settings["trajectory"], p.plan.settings["trajectory"]
    assert {s["phase"] for s in g_traj} == {"global"}
    per = [s for s in p_traj if s["phase"] == "per-group"]
    assert per and all(s["moved"] for s in per)
    same = [(s["flops"], s["met"]) for s in p_traj if s["phase"] == "global"]
    assert same == [(s["flops"], s["met"]) for s in g_traj]  # the same global phase first
    g_best = min(s["flops"] for s in g_traj if s["met"])
    assert all(s["flops"] < g_best for s in per)  # a move only ever removes more
    assert p.after.flops <= g.after.flops
    chosen = min((s for s in p_traj if s["met"]), key=lambda s: s["flops"])
    assert p.after.flops / p.before.flops == pytest.approx(chosen["flops"], abs=1e-4)
    x = np.load(calib)["x"][3::4]  # the check split: the written model meets the target on it
    a, b = run(onnx.load(path), {"x": x})[0], run(onnx.load(found["pergroup"][1]), {"x": x})[0]
    assert cos([a], [b]) >= 0.9 and chosen["score"] >= 0.9
    assert main(["plan", path, "-o", str(tmp_path / "p.json"), "--ratio", "0.3", "--quality-search", "global"]) == 1
