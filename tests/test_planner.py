"""Planner: targets, rounding, min width, protection, plan JSON round trip and edits."""
import json

import onnx
import pytest

import onnxprune
from conftest import assert_oracle
from onnxprune import PlanError
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.cost import CostModel
from onnxprune.importance import score_groups
from onnxprune.planner import Plan, keep_atoms, make_plan
from onnxprune.testing.archs import resnet


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "r18.onnx"
    onnx.save(resnet(18, image=32, width=16), str(path))
    return str(path)


def analysis(path, **kw):
    m = Model(onnx.load(path), path)
    return analyze(m, **kw)


def plan_for(an, **kw):
    kw.setdefault("criterion", "l2")
    return make_plan(an, score_groups(an, kw["criterion"]), **kw)


@pytest.mark.parametrize("mode", ["uniform", "global"])
@pytest.mark.parametrize("target", [0.7, 0.5, 0.3])
def test_flops_target_is_met(model_path, mode, target):
    an = analysis(model_path)
    p = plan_for(an, target_flops=target, mode=mode)
    e = p.estimate
    frac = e["after"]["flops"] / e["before"]["flops"]
    assert target - 0.08 <= frac <= target + 1e-9


def test_params_target_is_met(model_path):
    an = analysis(model_path)
    p = plan_for(an, target_params=0.4)
    e = p.estimate
    assert e["after"]["params"] <= 0.4 * e["before"]["params"]


def test_estimate_matches_the_rewritten_model(model_path):
    an = analysis(model_path)
    p = plan_for(an, ratio=0.5, round_to=4)
    res = assert_oracle(onnx.load(model_path), keep_atom=keep_atoms(an, p))
    m = Model(res.pruned)
    m.infer()
    assert CostModel(m).count().as_dict() == p.estimate["after"]


def test_unreachable_target_is_refused(model_path):
    an = analysis(model_path)
    with pytest.raises(PlanError, match="cannot reach"):
        plan_for(an, target_flops=0.001, min_channels=8)


@pytest.mark.parametrize("round_to", [8, 16])
def test_round_to(model_path, round_to):
    an = analysis(model_path)
    p = plan_for(an, ratio=0.37, round_to=round_to)
    for gp in p.groups:
        assert gp.kept == gp.size or gp.kept % round_to == 0


def test_min_channels(model_path):
    an = analysis(model_path)
    p = plan_for(an, ratio=0.95, min_channels=6)
    assert all(gp.kept >= min(6, gp.size) for gp in p.groups)


def test_global_ranking_differs_from_uniform(model_path):
    an = analysis(model_path)
    u = plan_for(an, ratio=0.5, mode="uniform")
    g = plan_for(an, ratio=0.5, mode="global")
    assert [x.kept for x in u.groups] != [x.kept for x in g.groups]
    assert abs(u.n_removed - g.n_removed) <= 0.05 * u.n_removed + 8


def test_protect_by_glob(model_path):
    an = analysis(model_path, protect=["conv_1*"])
    stem = an.groups[0]
    assert not stem.prunable and any("protected by 'conv_1*'" in r for r in stem.reasons)
    p = plan_for(an, ratio=0.5)
    assert p.groups[0].remove == ()


def test_protect_pattern_matching_nothing_is_an_error(model_path):
    with pytest.raises(PlanError, match="match no node"):
        analysis(model_path, protect=["nope*"])


def test_plan_json_round_trip_and_edit(model_path, tmp_path):
    plan = onnxprune.plan(model_path, ratio=0.5)
    path = tmp_path / "plan.json"
    plan.save(str(path))
    d = json.loads(path.read_text())
    assert Plan.from_dict(d) == plan
    # edit: keep group 1 whole, remove channels 0 and 3 of group 0
    d["groups"][1]["remove"] = []
    d["groups"][0]["remove"] = [0, 3]
    path.write_text(json.dumps(d))
    out = str(tmp_path / "edited.onnx")
    res = onnxprune.prune(model_path, out, plan=str(path))
    assert res.plan.groups[0].remove == (0, 3)
    pruned = onnx.load(out)
    stem_w = next(t for t in pruned.graph.initializer if t.name.startswith("conv_1.weight"))
    assert stem_w.dims[0] == 14


def test_plan_for_another_model_is_refused(model_path, tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save(resnet(18, image=32, width=8), str(other))
    plan = onnxprune.plan(model_path, ratio=0.5)
    with pytest.raises(PlanError, match="different model"):
        onnxprune.prune(str(other), str(tmp_path / "x.onnx"), plan=plan)


def test_removing_a_pinned_channel_is_refused(model_path):
    an = analysis(model_path)
    plan = plan_for(an, ratio=0.5)
    head = len(plan.groups) - 1
    d = plan.to_dict()
    d["groups"][head]["remove"] = [0]
    with pytest.raises(PlanError, match="cannot be removed: graph output"):
        keep_atoms(an, Plan.from_dict(d))


def test_emptying_a_layer_is_refused(model_path):
    an = analysis(model_path)
    d = plan_for(an, ratio=0.5).to_dict()
    d["groups"][0]["remove"] = list(range(d["groups"][0]["size"]))
    with pytest.raises(PlanError, match="every channel"):
        keep_atoms(an, Plan.from_dict(d))


@pytest.mark.parametrize("kw,match", [
    (dict(ratio=1.0), "must be in"), (dict(ratio=0.5, target_flops=0.5), "exactly one"),
    (dict(target_flops=0), "must be in"), (dict(ratio=0.5, mode="sideways"), "unknown mode"),
])
def test_bad_targets(model_path, kw, match):
    an = analysis(model_path)
    with pytest.raises(PlanError, match=match):
        plan_for(an, **kw)


def test_malformed_plan_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(str(bad))
    bad.write_text(json.dumps({"version": 1}))
    with pytest.raises(PlanError, match="malformed"):
        Plan.load(str(bad))
