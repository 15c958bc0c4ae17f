"""The command line as a user runs it: outputs, JSON, exit codes 0/1/2, one-line errors."""
import json
import os
import subprocess
import sys

import onnx
import pytest

from onnxprune.cli import main
from onnxprune.testing.archs import mobilenetv2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "mnv2.onnx"
    onnx.save(mobilenetv2(image=32, width=8), str(path))
    return str(path)


def test_inspect_table_and_json(model, capsys):
    assert main(["inspect", model]) == 0
    out = capsys.readouterr().out
    assert "channel groups" in out and "graph output" in out
    assert main(["inspect", model, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["prunable_channels"] > 0 and d["cost"]["flops"] > 0


def test_plan_then_prune_with_plan(model, tmp_path, capsys):
    plan = str(tmp_path / "plan.json")
    assert main(["plan", model, "-o", plan, "--target-flops", "0.6", "--round-to", "8"]) == 0
    assert "plan written" in capsys.readouterr().out
    out = str(tmp_path / "p.onnx")
    assert main(["prune", model, "-o", out, "--plan", plan, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["after"]["flops"] <= 0.6 * d["before"]["flops"]


def test_prune_validate_json(model, tmp_path, capsys):
    out = str(tmp_path / "p.onnx")
    code = main(["prune", model, "-o", out, "--ratio", "0.5", "--validate", "--json", "--repeats", "3",
                 "--warmup", "1", "--providers", "cpu,cuda"])
    d = json.loads(capsys.readouterr().out)
    v = d["validation"]
    cpu = next(p for p in v["providers"] if p["provider"] == "cpu")
    assert cpu["available"] and cpu["outputs"][0]["cosine"] < 1 and cpu["latency"]["ratio"] > 0
    assert v["ratios"]["flops"] < 0.6
    cuda = next(p for p in v["providers"] if p["provider"] == "cuda")
    if not cuda["available"]:
        assert "onnxruntime said" in cuda["reason"]  # its own words, not silently replaced by the CPU
    # random weights at half width: outputs change a lot; the default limits fail it, with data
    assert d["schema_version"] == 1 and v["schema_version"] == 1
    checks = {f["check"] for f in cpu["outputs"][0]["failures"]}
    assert code == (0 if v["passed"] else 2) and (v["passed"] or checks <= {"min_cosine", "min_agreement"})
    assert v["inputs"]["kind"] == "random" and cpu["latency"]["batch"] == 1 and cpu["latency"]["threads"] >= 1


def test_validation_failure_exits_2(model, tmp_path, capsys):
    out = str(tmp_path / "p.onnx")
    assert main(["prune", model, "-o", out, "--ratio", "0.5"]) == 0
    capsys.readouterr()
    assert main(["validate", model, out, "--min-cosine", "0.99999", "--no-latency"]) == 2
    assert "FAILED" in capsys.readouterr().out
    assert main(["validate", model, model, "--atol", "0", "--no-latency"]) == 0  # identical: passes
    capsys.readouterr()
    # the tightest limits the report states do pass, and a hair tighter fails
    assert main(["validate", model, out, "--no-latency", "--json", "--min-cosine", "off", "--min-agreement", "off"]) == 0
    t = json.loads(capsys.readouterr().out)["tightest_passing"]
    args = ["validate", model, out, "--no-latency", "--min-agreement", str(t["min_agreement"])]
    (name, atol), = t["atol"].items()
    assert main(args + ["--min-cosine", str(t["min_cosine"]), "--atol", f"{name}:{atol}"]) == 0
    assert main(args + ["--min-cosine", str(min(1.0, t["min_cosine"] + 1e-3))]) == 2


def test_strict_unavailable_provider_fails(model, tmp_path, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        from onnxprune.validate.runtime import ProviderUnavailable, make_session

        try:
            make_session(model, "cuda")
            pytest.skip("CUDA works here")
        except ProviderUnavailable:
            pass
    assert main(["validate", model, model, "--providers", "cuda", "--strict-providers", "--no-latency"]) == 2
    out = capsys.readouterr().out
    assert "[cuda] not tested: CUDAExecutionProvider" in out and "onnxruntime said" in out
    assert "FAIL: provider cuda unavailable" in out
    assert main(["validate", model, model, "--providers", "cpu,cuda", "--no-latency"]) == 0  # not strict: noted


@pytest.mark.parametrize("argv,msg", [
    (["inspect", "missing.onnx"], "no such file"),
    (["prune", "MODEL", "-o", "x.onnx"], "say how much to prune"),
    (["prune", "MODEL", "-o", "x.onnx", "--ratio", "1.5"], "must be in [0, 1)"),
    (["prune", "MODEL", "-o", "x.onnx", "--ratio", "0.5", "--protect", "zzz"], "match no node"),
    (["validate", "MODEL", "MODEL", "--providers", "tpu"], "unknown provider"),
    (["validate", "MODEL", "MODEL", "--atol", "typo:0.1"], "names output(s) 'typo'"),
    (["validate", "MODEL", "MODEL", "--dim", "nope=4"], "name no dynamic dim"),
    (["inspect", "MODEL", "--dim", "nope=4"], "name no dynamic dim"),
    (["prune", "MODEL", "-o", "MODEL", "--ratio", "0.5"], "is the input model"),
    (["prune", "MODEL"], "required"),
])
def test_user_errors_one_line_exit_1(model, argv, msg):
    argv = [model if a == "MODEL" else a for a in argv]
    proc = subprocess.run([sys.executable, "-m", "onnxprune", *argv], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert msg in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
