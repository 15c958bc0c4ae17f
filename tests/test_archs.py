"""Every generated architecture passes the oracle under every criterion, mode and rounding;
ratio 0 reproduces the original outputs exactly."""
import numpy as np
import onnx
import pytest

from conftest import assert_oracle
from onnxprune import rewrite
from onnxprune.graph import Model
from onnxprune.analysis import analyze
from onnxprune.importance import score_groups
from onnxprune.planner import keep_atoms, make_plan
from onnxprune.testing import ARCHS, random_feeds, run

SMALL = {
    "resnet18": dict(image=32, width=8),
    "resnet50": dict(image=32, width=8),
    "mobilenetv2": dict(image=32, width=8),
    "senet": dict(image=16, width=8),
    "densenet": dict(image=16, growth=4, width=8),
    "unet": dict(image=16, width=8),
}
CASES = [("l2", "uniform", 1, 0.5), ("l1", "global", 8, 0.4), ("bn", "uniform", 4, 0.3), ("random", "global", 1, 0.6)]


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request):
    return request.param, ARCHS[request.param](**SMALL[request.param])


@pytest.mark.parametrize("criterion,mode,round_to,ratio", CASES, ids=[f"{c}-{m}-r{r}" for c, m, r, _ in CASES])
def test_oracle(arch, criterion, mode, round_to, ratio):
    name, proto = arch
    res = assert_oracle(proto, criterion=criterion, mode=mode, round_to=round_to, ratio=ratio)
    assert len([g for g in res.analysis.groups if g.prunable]) >= 3, name
    if round_to > 1:  # every pruned group keeps a multiple of round_to (or all of it)
        for g in res.analysis.groups:
            kept = int(res.keep_atom[g.atoms].sum())
            assert kept == g.size or kept % round_to == 0, (name, g.id, kept)


def test_ratio_zero_is_exact(arch):
    name, proto = arch
    m = Model(onnx.ModelProto.FromString(proto.SerializeToString()))
    an = analyze(m)
    plan = make_plan(an, score_groups(an, "l2"), criterion="l2", ratio=0.0)
    keep = keep_atoms(an, plan)
    assert keep.all()
    result = rewrite.apply(m, an, keep)
    assert not result.modified
    feeds = random_feeds(proto)
    for a, b in zip(run(proto, feeds), run(m.to_proto(), feeds)):
        np.testing.assert_array_equal(a, b)


def test_flops_drop_with_ratio(arch):
    name, proto = arch
    m = Model(onnx.ModelProto.FromString(proto.SerializeToString()))
    an = analyze(m)
    plan = make_plan(an, score_groups(an, "l2"), criterion="l2", ratio=0.5)
    e = plan.estimate
    assert e["after"]["flops"] < 0.6 * e["before"]["flops"], name
