"""Validation as a gate and as data: named dims, the latency batch, providers by name, provenance,
progress feedback, --quiet, and the JSON every command prints."""
import json
import logging
import os

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from onnxprune.testing import Net


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """x[N,16] -> Gemm 32 -> Relu -> Gemm 8 (a dynamic batch named N)."""
    n = Net("mlp", seed=3)
    x = n.input("x", ["N", 16])
    n.output(n.gemm(n.relu(n.gemm(x, 16, 32)), 32, 8))
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    onnx.save(n.build(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "x.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((10, 16)).astype(np.float32))
    return str(path)


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_named_batch_dim_is_the_batch(mlp, capsys):
    assert main(["validate", mlp, mlp, "--dim", "N=4", "--json", "--repeats", "2", "--warmup", "0"]) == 0
    d = _json(capsys)
    assert d["inputs"] == {"kind": "random", "path": None, "seed": 0, "samples": 4, "batches": 1, "labels": False,
                           "shapes": {"x": [4, 16]}}
    assert d["providers"][0]["latency"]["batch"] == 4
    assert main(["validate", mlp, mlp, "--dim", "N=4", "--repeats", "2", "--warmup", "0"]) == 0
    text = capsys.readouterr().out
    assert "x=4x16" in text and "batch 4" in text and "batch 1" not in text


def test_latency_batch_is_the_same_for_random_and_file_inputs(mlp, data, capsys):
    common = ["--json", "--repeats", "2", "--warmup", "0"]
    for extra, batch in (([], 1), (["--latency-batch", "3"], 3)):
        assert main(["validate", mlp, mlp, *common, *extra]) == 0
        rnd = _json(capsys)["providers"][0]["latency"]
        assert main(["validate", mlp, mlp, "--data", data, *common, *extra]) == 0
        fil = _json(capsys)["providers"][0]["latency"]
        assert rnd["batch"] == fil["batch"] == batch and rnd["input_shapes"] == fil["input_shapes"] == {"x": [batch, 16]}
        assert rnd["threads"] == fil["threads"] >= 1


def test_providers_by_full_name_and_unavailable_ones_are_not_tested(mlp, capsys):
    import onnxruntime as ort

    assert main(["validate", mlp, mlp, "--providers", "CPUExecutionProvider", "--json", "--no-latency"]) == 0
    assert _json(capsys)["providers"][0]["provider"] == "cpu"
    missing = [p for p in ("tensorrt", "openvino", "coreml") if p not in {x[:-17].lower() for x in ort.get_available_providers()}]
    assert main(["validate", mlp, mlp, "--providers", f"cpu,{missing[0]}", "--json", "--no-latency"]) == 0
    d = _json(capsys)
    other = d["providers"][1]
    assert not other["available"] and "ExecutionProvider" in other["reason"] and d["passed"]
    assert main(["validate", mlp, mlp, "--providers", f"cpu,{missing[0]}", "--no-latency", "--strict-providers"]) == 2
    assert f"[{missing[0]}] not tested" in capsys.readouterr().out


def test_library_defaults_fail_a_bad_prune_and_can_be_switched_off(mlp, tmp_path):
    import onnxprune
    from onnxprune.validate import DEFAULTS, Tolerances, compare_models

    out = str(tmp_path / "p.onnx")
    onnxprune.prune(mlp, out, ratio=0.9, criterion="random")
    r = compare_models(mlp, out, latency=False)
    assert DEFAULTS.min_cosine == 0.99 and DEFAULTS.min_agreement == 0.99 and DEFAULTS.max_accuracy_drop == 0.01
    assert not r.passed and {f.check for f in r.providers[0].outputs[0].failures} >= {"min_cosine"}
    off = Tolerances(min_cosine=None, min_agreement=None, max_accuracy_drop=None)
    assert compare_models(mlp, out, latency=False, tol=off).passed
    assert "none (only shapes" in off.describe()


def test_provenance_in_the_pruned_model(mlp, tmp_path):
    import onnxprune
    from onnxprune.provenance import plan_digest, read_provenance

    out = str(tmp_path / "p.onnx")
    res = onnxprune.prune(mlp, out, ratio=0.5, round_to=4)
    prov = read_provenance(out)
    assert prov["version"] == onnxprune.__version__ and prov["source"] == "mlp.onnx"
    assert prov["plan_digest"] == plan_digest(res.plan) and len(prov["plan_digest"]) == 64
    assert prov["options"]["ratio"] == 0.5 and prov["options"]["round_to"] == 4
    g = [r for r in res.groups if r["before"] != r["after"]]
    assert g and g[0]["before"] == 32 and g[0]["after"] == 16 and g[0]["kind"] == "ffn"
    assert 0 < g[0]["flops_share_after"] < g[0]["flops_share_before"] <= 1


def test_prune_prints_a_group_table_and_json_has_schema(mlp, tmp_path, capsys):
    out = str(tmp_path / "p.onnx")
    assert main(["prune", mlp, "-o", out, "--ratio", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "FLOPs share" in text and "32 -> 16" in text and "ffn" in text
    assert main(["prune", mlp, "-o", out, "--ratio", "0.5", "--json"]) == 0
    d = _json(capsys)
    assert d["schema_version"] == 1 and d["groups"][0]["before"] == 32 and d["kept"]
    plan = str(tmp_path / "plan.json")
    assert main(["plan", mlp, "-o", plan, "--ratio", "0.25", "--round-to", "8", "--json"]) == 0
    d = _json(capsys)
    assert d["schema_version"] == 1 and d["groups"][0]["after"] == 24 and len(d["plan_digest"]) == 64
    assert main(["inspect", mlp, "--json"]) == 0
    d = _json(capsys)
    assert d["schema_version"] == 1 and [g["kind"] for g in d["groups"]][0] == "ffn"


def test_failed_prune_leaves_nothing_unless_kept(mlp, tmp_path, capsys):
    out = str(tmp_path / "p.onnx")
    argv = ["prune", mlp, "-o", out, "--ratio", "0.9", "--criterion", "random", "--validate", "--no-latency"]
    assert main(argv) == 2 and not os.path.exists(out)
    assert "removed" in capsys.readouterr().out
    assert main(argv + ["--keep-failed"]) == 2 and os.path.exists(out)


def test_progress_falls_back_to_log_lines(monkeypatch, caplog):
    from onnxprune import progress as prog

    monkeypatch.setattr(prog, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr(prog, "_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="onnxprune"):
        assert list(prog.progress(range(3), "phase", unit="steps")) == [0, 1, 2]
    msgs = [r.getMessage() for r in caplog.records]
    assert "phase: 1/3 steps, 0 s" in msgs and msgs[-1].startswith("phase: 3 steps in")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnxprune"):  # --quiet
        assert list(prog.progress(range(3), "phase")) == [0, 1, 2]
    assert not caplog.records


def test_progress_bar_on_a_terminal(monkeypatch, capsys):
    from onnxprune import progress as prog

    monkeypatch.setattr(prog, "_terminal", lambda: True)
    logging.getLogger("onnxprune").setLevel(logging.INFO)
    assert list(prog.progress(range(5), "recording statistics", unit="batches")) == list(range(5))
    err = capsys.readouterr().err
    assert "recording statistics:   0%" in err and "0/5 [" in err  # tqdm drew its bar (then cleared it)


def test_quiet_and_verbose(mlp, capsys):
    assert main(["validate", mlp, mlp, "--repeats", "2", "--warmup", "0"]) == 0
    assert "latency: 2 runs" not in capsys.readouterr().err  # a phase of < 10 s ends without a line
    assert main(["-q", "validate", mlp, mlp, "--repeats", "2", "--warmup", "0"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["-v", "validate", mlp, mlp, "--repeats", "2", "--warmup", "0"]) == 0
    assert "onnxprune: DEBUG: latency: 2 runs" in capsys.readouterr().err
    main(["validate", mlp, mlp, "--no-latency"])  # back to the default level for later tests


def test_agreement_is_not_asked_of_normalised_embeddings():
    from onnxprune.validate.compare import DEFAULTS, _compare_output

    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 64))
    b = a + 0.02 * rng.standard_normal(a.shape)
    a, b = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b)]
    c = _compare_output("emb", a.astype(np.float32), b.astype(np.float32), [], DEFAULTS)
    assert c.top1_agreement is None and c.passed and c.cosine > 0.99
    c = _compare_output("logits", 5 * a.astype(np.float32), 5 * b.astype(np.float32), [], DEFAULTS)
    assert c.top1_agreement is not None  # scores, not an embedding: the decision is checked
