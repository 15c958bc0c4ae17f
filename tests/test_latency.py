"""Latency model: alignment probe, measured width table (cached), latency-aware planning, end-to-end check.

Timings on a shared machine are noisy: these tests check the machinery (what is measured, cached,
predicted and planned), the benchmark (``scripts/bench_latency.py``) checks the speed-ups.
"""
import json
import os

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune import PlanError, latency
from onnxprune.analysis import analyze
from onnxprune.cli import main
from onnxprune.graph import Model
from onnxprune.importance import score_groups
from onnxprune.planner import make_plan
from onnxprune.testing.archs import resnet


@pytest.fixture(autouse=True, scope="module")
def _own_cache(tmp_path_factory):
    """This module's measurements in a cache of its own (earlier tests' probes do not leak in)."""
    import os

    old = os.environ.get("ONNXPRUNE_CACHE_DIR")
    os.environ["ONNXPRUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("latency-cache"))
    yield
    os.environ["ONNXPRUNE_CACHE_DIR"] = old if old is not None else ""
    if old is None:
        os.environ.pop("ONNXPRUNE_CACHE_DIR")


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lat") / "r18.onnx")
    onnx.save(resnet(18, image=32, width=32), path)
    return path


def _analysed(path):
    m = Model(onnx.load(path), path)
    m.infer()
    return m, analyze(m)


def test_cache_dir_is_never_the_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("ONNXPRUNE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert latency.cache_dir() == str(tmp_path / "xdg" / "onnxprune")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert latency.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "onnxprune")
    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "mine"))
    assert latency.cache_dir() == str(tmp_path / "mine")


def test_alignment_is_measured_once_and_aligned():
    step = latency.alignment("cpu")
    assert step in (8, 16)
    files = os.listdir(os.path.join(latency.cache_dir(), "align"))
    assert len(files) == 1
    with open(os.path.join(latency.cache_dir(), "align", files[0])) as f:
        d = json.load(f)
    assert d["round_to"] == step and set(d["times_ms"]) == {"64", "63", "56", "48"}
    assert latency.alignment("cpu") == step  # from the cache
    assert latency.resolve_round_to("auto") == step and latency.resolve_round_to("4") == 4
    with pytest.raises(PlanError, match="positive integer or 'auto'"):
        latency.resolve_round_to("fast")


def test_table_is_measured_cached_and_predicts(r18):
    m, an = _analysed(r18)
    table = latency.measure_table(m, an, repeats=2)
    assert table.base_ms > 0 and table.nodes and table.groups
    for g in table.groups.values():
        assert g["widths"][-1] == g["size"] and g["widths"] == sorted(g["widths"])
        assert all(w % table.round_to == 0 for w in g["widths"][:-1]), g["widths"]
        assert all(len(ts) == len(g["widths"]) for ts in g["nodes"].values())
    assert table.predict({}) == pytest.approx(table.base_ms, rel=1e-6)
    smallest = {int(gid): g["widths"][0] for gid, g in table.groups.items()}
    assert table.predict(smallest) < table.base_ms
    again = latency.measure_table(m, an, repeats=2)  # same machine, provider, model, input: the cache
    assert again.to_dict() == table.to_dict()


def _fake_table(an, flat_gid):
    """A table where group ``flat_gid`` saves nothing at any width and the others scale linearly."""
    nodes, groups = {}, {}
    for g in an.groups:
        if not g.prunable:
            continue
        name = f"n{g.id}"
        nodes[name] = 1.0
        widths = sorted({g.size // 4, g.size // 2, g.size} - {0})
        ts = [1.0 if g.id == flat_gid else w / g.size for w in widths]
        groups[str(g.id)] = {"size": g.size, "widths": widths, "nodes": {name: ts}}
    return latency.LatencyTable({"provider": "cpu"}, float(len(nodes)), 8, nodes, groups)


def test_planner_does_not_cut_widths_that_save_no_time(r18):
    _, an = _analysed(r18)
    flat = next(g.id for g in an.groups if g.prunable and g.size >= 16)
    table = _fake_table(an, flat)
    scores = score_groups(an, "l2")
    p = make_plan(an, scores, criterion="l2", ratio=0.5, latency=table)
    by_id = {gp.group: gp for gp in p.groups}
    assert by_id[flat].remove == ()  # measured: no time saved there
    assert sum(len(gp.remove) for gp in p.groups) > 0
    assert p.estimate["latency"]["predicted_ms"] < table.base_ms
    plain = make_plan(an, scores, criterion="l2", ratio=0.5)
    assert {gp.group: gp for gp in plain.groups}[flat].remove != ()


def test_latency_target_is_planned_against_the_table(r18):
    _, an = _analysed(r18)
    table = _fake_table(an, -1)
    scores = score_groups(an, "l2")
    for want in (0.8, 0.6):
        p = make_plan(an, scores, criterion="l2", target_latency=want * table.base_ms, latency=table)
        got = p.estimate["latency"]["predicted_ms"] / table.base_ms
        assert got <= want + 1e-9 and got > want - 0.15, (want, got)
    with pytest.raises(PlanError, match="cannot reach"):
        make_plan(an, scores, criterion="l2", target_latency=1e-6, latency=table)
    with pytest.raises(PlanError, match="needs a measured latency table"):
        make_plan(an, scores, criterion="l2", target_latency=1.0)


def test_target_speedup_end_to_end_reports_predicted_and_measured(r18, tmp_path):
    out = str(tmp_path / "fast.onnx")
    res = onnxprune.prune(r18, out, target_speedup=1.3)
    d = res.latency
    assert d is not None and d["provider"] == "cpu"
    for k in ("predicted_ms", "pruned_ms", "original_ms", "speedup", "predicted_speedup", "target_speedup"):
        assert np.isfinite(d[k]) and d[k] > 0, k
    assert d["target_speedup"] == pytest.approx(1.3)
    assert res.plan.n_removed > 0 and res.after.macs < res.before.macs
    onnx.checker.check_model(out, full_check=True)


def test_default_rounding_is_aligned(r18, tmp_path):
    res = onnxprune.prune(r18, str(tmp_path / "p.onnx"), ratio=0.5)
    step = latency.alignment("cpu")
    kept = [gp.kept for gp in res.plan.groups if gp.remove]
    assert kept and all(k % step == 0 for k in kept), (step, kept)
    assert res.plan.settings["round_to"] == step


def test_cli_latency_options(r18, tmp_path, capsys):
    out = str(tmp_path / "c.onnx")
    assert main(["prune", r18, "-o", out, "--target-speedup", "0.5"]) == 1
    assert "--target-speedup 0.5 must be ≥ 1" in capsys.readouterr().err
    assert main(["prune", r18, "-o", out, "--ratio", "0.5", "--round-to", "x"]) == 1
    err = capsys.readouterr().err
    assert "--round-to" in err and "'x'" in err
    assert not os.path.exists(out)
    code = main(["prune", r18, "-o", out, "--target-speedup", "1.2", "--json"])
    got = capsys.readouterr()
    if code == 1:  # this tiny model's measured table may not reach ×1.2 (fixed per-run overhead): said so, cleanly
        assert "cannot reach" in got.err and "relax the target" in got.err and not os.path.exists(out)
        return
    assert code == 0, got.err
    d = json.loads(got.out)
    assert d["latency"]["target_speedup"] == pytest.approx(1.2) and d["latency"]["pruned_ms"] > 0


def test_never_slower_checks_a_flops_target(r18, tmp_path):
    res = onnxprune.prune(r18, str(tmp_path / "n.onnx"), target_flops=0.5, never_slower=True)
    d = res.latency
    assert d is not None and "target_speedup" not in d and d["speedup"] > 0
    assert d.get("slower", False) == (d["speedup"] < 1)
    assert res.plan.estimate["latency"]["predicted_ms"] <= res.plan.estimate["latency"]["before_ms"]
