"""The ``obs`` criterion (structured OBS from input Grams): checked against brute-force refits."""
import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.analysis import analyze
from onnxprune.calib import Calibration
from onnxprune.graph import Model
from onnxprune.importance import ScoreData, score_groups
from onnxprune.importance.obs import greedy_obs
from onnxprune.record import record_for
from onnxprune.testing import Net


def _refit_error(xt, y, drop_cols):
    keep = [j for j in range(xt.shape[1]) if j not in set(drop_cols)]
    a, *_ = np.linalg.lstsq(xt[:, keep], y, rcond=None)
    return float(np.sum((xt[:, keep] @ a - y) ** 2))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block", [1, 3])
def test_first_removal_is_the_least_error_after_refit(seed, block):
    """Removing the channel OBS scores lowest, then refitting the rest (and the bias) by least
    squares, leaves the least output error of all channels; its score × the output energy is
    that error (undamped)."""
    rng = np.random.default_rng(seed)
    n, c, out = 300, 5, 3
    d = c * block
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    w = rng.standard_normal((out, d)) * rng.uniform(0.2, 2.0, d)
    xt = np.c_[x, np.ones(n)]
    y = x @ w.T
    cols = np.arange(d).reshape(c, block)
    s = greedy_obs([(w, xt.T @ xt, np.arange(c), cols, 1.0)], c, steps=c, damp=0.0)
    errs = [_refit_error(xt, y, cols[j]) for j in range(c)]
    assert int(np.argmin(s)) == int(np.argmin(errs))
    assert np.isclose(s.min(), min(errs), rtol=1e-6)
    assert np.all(np.diff(s[np.argsort(s)]) >= 0)


def test_greedy_second_removal_is_scored_on_the_refitted_layer():
    """The second channel's marginal error is the brute-force error of removing both, minus the first's."""
    rng = np.random.default_rng(7)
    n, d, out = 400, 6, 2
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    w = rng.standard_normal((out, d))
    xt = np.c_[x, np.ones(n)]
    s = greedy_obs([(w, xt.T @ xt, np.arange(d), np.arange(d)[:, None], 1.0)], d, steps=d, damp=0.0)
    first, second = np.argsort(s)[:2]
    both = _refit_error(xt, x @ w.T, [first, second])
    pairs = min(_refit_error(xt, x @ w.T, [first, j]) for j in range(d) if j != first)
    assert np.isclose(both, pairs, rtol=1e-6)  # greedy picks the best second channel given the first
    assert np.isclose(s[second], max(both - s[first], s[first]), rtol=1e-6)


@pytest.mark.parametrize("block", [1, 2])
def test_held_out_errors_match_brute_force(block):
    """With check rows, a channel's score is the output change of its removal + refit on the fit
    rows, measured on the check rows and scaled to all rows; for the second removal that of the
    change from the first refit (the downdated check matrix)."""
    rng = np.random.default_rng(3)
    c, out = 5, 3
    d = c * block
    mix = rng.standard_normal((d, d))
    xa, xb = (np.c_[rng.standard_normal((k, d)) @ mix, np.ones(k)] for k in (60, 40))
    w = rng.standard_normal((out, d))
    wt = np.c_[w, np.zeros(out)]
    cols = np.arange(d).reshape(c, block)

    def refit(drop):
        dropped = set(np.concatenate([cols[k] for k in drop]).tolist()) if drop else set()
        keep = [j for j in range(d + 1) if j not in dropped]
        a, *_ = np.linalg.lstsq(xa[:, keep], xa @ wt.T, rcond=None)
        full = np.zeros((d + 1, out))
        full[keep] = a
        return full

    def check_energy(a, b):  # the change between two refits on the check rows, scaled to all rows
        return float(np.sum((xb @ (a - b)) ** 2)) * 100 / 40

    s = greedy_obs([(w, xa.T @ xa, np.arange(c), cols, 1.0, xb.T @ xb)], c, steps=c, damp=0.0)
    order = np.argsort(s)
    first = [check_energy(refit([j]), wt.T) for j in range(c)]
    assert int(order[0]) == int(np.argmin(first)) and np.isclose(s[order[0]], min(first), rtol=1e-6)
    base = refit([order[0]])
    second = {j: check_energy(refit([order[0], j]), base) for j in range(c) if j != order[0]}
    assert int(order[1]) == min(second, key=second.get)
    assert np.isclose(s[order[1]], max(second[order[1]], s[order[0]]), rtol=1e-6)


def test_pinned_and_unreached_channels():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 4))
    xt = np.c_[x, np.ones(50)]
    alive = np.array([True, False, True, True, True])
    s = greedy_obs([(rng.standard_normal((2, 4)), xt.T @ xt, np.arange(4), np.arange(4)[:, None])], 5, alive)
    assert np.isposinf(s[1]) and np.isnan(s[4]) and np.isfinite(s[[0, 2, 3]]).all()


def _mlp(tmp_path, scale):
    """x(6) -> Gemm(8) -> Relu -> Gemm(3); hidden unit k's outgoing weights scaled by scale[k]."""
    rng = np.random.default_rng(0)
    n = Net("mlp", seed=0)
    x = n.input("x", ["N", 6])
    w1 = rng.standard_normal((8, 6)).astype(np.float32)
    h = n.relu(n.op("Gemm", [x, n.const(w1, "w1"), n.const(np.full(8, 0.1, np.float32), "b1")], transB=1))
    w2 = (rng.standard_normal((3, 8)) * np.asarray(scale)[None, :]).astype(np.float32)
    n.output(n.op("Gemm", [h, n.const(w2, "w2"), n.const(np.zeros(3, np.float32), "b2")], transB=1))
    path = str(tmp_path / "mlp.onnx")
    onnx.save(n.build(), path)
    xs = rng.standard_normal((64, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    return path, str(tmp_path / "calib.npz"), xs, w1, w2


def test_obs_on_a_model_matches_brute_force(tmp_path, monkeypatch):
    """On a real graph, the unit obs drops first is the one whose removal + refit of the
    consumer (on the calibration data) costs least."""
    from onnxprune.importance import obs

    monkeypatch.setattr(obs, "HELDOUT", False)
    path, calib, xs, w1, w2 = _mlp(tmp_path, [1, 0.3, 2, 1, 0.5, 1, 3, 0.8])
    an = analyze(Model(onnx.load(path)))
    cal = Calibration(calib, ["x"], batch_size=16)
    scores = score_groups(an, "obs", data=ScoreData(activations=record_for(an, cal), calibration=cal))
    gid = next(iter(scores))
    h = np.maximum(xs @ w1.T + 0.1, 0).astype(np.float64)
    ht = np.c_[h, np.ones(len(h))]
    errs = [_refit_error(ht, h @ w2.T.astype(np.float64), [j]) for j in range(8)]
    assert int(np.argmin(scores[gid])) == int(np.argmin(errs))
    assert scores.notes == {}


def test_obs_needs_calibration_and_prunes_exactly(tmp_path):
    path, calib, *_ = _mlp(tmp_path, [1] * 8)
    an = analyze(Model(onnx.load(path)))
    with pytest.raises(onnxprune.OnnxPruneError, match="calib"):
        score_groups(an, "obs")
    p = onnxprune.plan(path, criterion="obs", calib=calib, ratio=0.5, round_to=1)
    assert p.criterion == "obs" and sum(len(g.remove) for g in p.groups) == 4


def test_obs_through_sensitivity_and_quality_search(tmp_path):
    """obs reaches its calibration data from every entry point that scores (sensitivity ranking,
    the --target-cosine search)."""
    path, calib, *_ = _mlp(tmp_path, [1, 0.3, 2, 1, 0.5, 1, 3, 0.8])
    from onnxprune.api import sensitivity

    table = sensitivity(path, calib=calib, rank_by="obs", ratios=[0.5])
    assert len(table.rows) == 1
    res = onnxprune.prune(path, str(tmp_path / "out.onnx"), criterion="obs", calib=calib, target_cosine=0.9,
                          round_to=1)
    assert res.plan.criterion == "obs"
