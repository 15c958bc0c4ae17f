"""`onnxprune report` and `prune --report`: one self-contained HTML file, a Markdown variant, the
onnxruntime profiler's per-op times (profile files never left behind), and a real browser render."""
import glob
import json
import os
import sys
import tempfile

import pytest

from onnxprune.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "digits_cnn.onnx")
DATA = os.path.join(ROOT, "models", "digits_test.npz")
SECTIONS = ("summary", "groups", "layers", "ops", "outputs", "accuracy")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    import onnxprune

    out = str(tmp_path_factory.mktemp("rep") / "digits.pruned.onnx")
    onnxprune.prune(MODEL, out, ratio=0.5, round_to=8)
    return out


@pytest.fixture(scope="module")
def html_report(pruned, tmp_path_factory):
    """The HTML report, made with the working directory in an empty folder."""
    work = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(work)
    try:
        before = set(glob.glob(os.path.join(tempfile.gettempdir(), "onnxprune-profile-*")))
        code = main(["report", MODEL, pruned, "--data", DATA, "-o", "report.html", "--repeats", "3",
                     "--profile-runs", "5", "--min-cosine", "off", "--min-agreement", "off", "--max-accuracy-drop", "off"])
        after = set(glob.glob(os.path.join(tempfile.gettempdir(), "onnxprune-profile-*")))
    finally:
        os.chdir(old)
    assert code == 0
    assert sorted(os.listdir(work)) == ["report.html"]  # no profile JSON in the working directory
    assert after == before  # the profiler's temporary folders are removed
    return str(work / "report.html")


def test_html_is_self_contained_with_every_section(html_report):
    text = open(html_report, encoding="utf-8").read()
    for s in SECTIONS:
        assert f'<section id="{s}">' in text
    assert text.count("data:image/png;base64,") == 4  # groups, layers, op latency, error histograms
    assert "src=\"http" not in text and "<script" not in text and "<link" not in text
    assert "/3/Conv" in text and "Made by onnxprune" in text and "Conv</td>" in text


def test_markdown_variant_and_exit_code(pruned, tmp_path, capsys):
    out = str(tmp_path / "report.md")
    assert main(["report", MODEL, pruned, "--data", DATA, "-o", out, "--no-latency", "--profile-runs", "2",
                 "--json"]) == 2  # l2 at half width without recovery fails the default limits
    d = json.loads(capsys.readouterr().out)
    assert d["schema_version"] == 1 and d["passed"] is False
    assert d["groups"][0] == {"name": "/0/Conv", "kind": "channels", "before": 32, "after": 16}
    assert {o["op"] for o in d["op_latency"]["ops"]} >= {"Conv", "Gemm"}
    text = open(out, encoding="utf-8").read()
    assert "Validation **FAILED**" in text and "| /3/Conv | channels | 64 | 32 |" in text
    assert "## Latency per op type" in text and "data:image" not in text


def test_prune_report_flag_and_bad_suffix(tmp_path, capsys):
    rep = str(tmp_path / "r.md")
    out = str(tmp_path / "p.onnx")
    code = main(["prune", MODEL, "-o", out, "--ratio", "0.25", "--report", rep, "--no-latency", "--min-cosine", "off",
                 "--min-agreement", "off", "--max-accuracy-drop", "off"])
    assert code == 0
    assert os.path.exists(rep) and "## Channel groups" in open(rep).read()
    assert main(["report", MODEL, out, "-o", str(tmp_path / "r.pdf"), "--no-latency"]) == 1
    assert "use a .html or .md" in capsys.readouterr().err


@pytest.mark.slow
def test_report_renders_in_headless_chromium(html_report, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import report_screenshot as rs

    if rs.find_chromium() is None:
        pytest.skip("chromium is not installed")
    png = str(tmp_path / "shot.png")
    dom, stats = rs.render(html_report, png)
    assert rs.check(dom, stats) == [], stats
    assert stats["width"] == 1200 and stats["height"] == 3000 and stats["non_white"] > 0.05
