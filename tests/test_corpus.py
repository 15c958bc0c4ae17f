"""The corpus runner's CI subset (scripts/corpus.py --subset ci): no crash, >= 95% of exported rows valid.

Runs without installing anything: the torch-only rows (a small CNN, a tiny BERT from a transformers
config) always run; the torchvision rows (resnet18, mobilenet_v2, shufflenet_v2_x0_5) run when
torchvision is in the corpus extras folder (see the script's docstring: ``pip install --no-deps
--target .venv/corpus-extras``), and their test is skipped otherwise. The subset is bounded
(< 4 minutes on 2 cores). torchvision is never imported in this process: with it importable,
``transformers`` would import it too and fail on its CUDA-linked extension.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxscript")  # the dynamo exporter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "corpus.py")
TORCH_ONLY = {"tiny_cnn", "bert_tiny"}
TORCHVISION = {"resnet18", "mobilenet_v2", "shufflenet_v2_x0_5"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    report = out / "corpus.json"
    p = subprocess.run([sys.executable, SCRIPT, "--subset", "ci", "--out-dir", str(out / "work"), "--json",
                        str(report), "--timeout", "150"], check=False, capture_output=True, text=True, timeout=400,
                       cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(report) as f:
        return json.load(f)


def _describe(rows):
    return "\n".join(f"{r['model']} [{r['exporter']}]: {r['status']} {r.get('error', '')}\n{r.get('traceback', '')}"
                     for r in rows)


def _check(rows):
    crashes = [r for r in rows if r["status"] in ("crash", "timeout")]
    assert not crashes, _describe(crashes)
    exported = [r for r in rows if r["status"] != "export-failed"]
    assert exported, "nothing exported:\n" + _describe(rows)
    valid = [r for r in exported if r["status"] in ("ok", "ok-nothing-prunable", "barrier")]
    assert len(valid) >= 0.95 * len(exported), _describe([r for r in exported if r not in valid])


def test_corpus_torch_only(corpus):
    rows = [r for r in corpus["rows"] if r["model"] in TORCH_ONLY]
    assert {(r["model"], r["exporter"]) for r in rows} == {(m, e) for m in TORCH_ONLY
                                                           for e in ("torchscript", "dynamo")}
    _check(rows)
    # the small CNN is fully supported: it must really be pruned, with both exporters
    cnn = [r for r in rows if r["model"] == "tiny_cnn"]
    assert all(r["status"] == "ok" and r["macs_kept"] < 0.9 for r in cnn), _describe(cnn)
    # BERT with transformers' default (SDPA) attention: heads and FFN prunable with both exporters
    bert = [r for r in rows if r["model"] == "bert_tiny"]
    assert all(r["status"] == "ok" and r["macs_kept"] <= 0.55 for r in bert), _describe(bert)


def test_corpus_torchvision(corpus):
    if any("torchvision" in k for k in corpus["summary"].get("skipped", {})):
        pytest.skip("torchvision not installed (scripts/corpus.py: pip install --no-deps --target "
                    ".venv/corpus-extras 'torchvision==0.28.*' timm)")
    rows = [r for r in corpus["rows"] if r["model"] in TORCHVISION]
    assert {r["model"] for r in rows} == TORCHVISION
    _check(rows)
    # channel shuffle: both exporters expose the same groups (TorchScript reads the counts at run time)
    shuffle = {r["exporter"]: r for r in rows if r["model"] == "shufflenet_v2_x0_5"}
    assert all(r["status"] == "ok" for r in shuffle.values()), _describe(shuffle.values())
    assert len({(r["groups_prunable"], r["groups_total"], r["prunable_channels"]) for r in shuffle.values()}) == 1, \
        _describe(shuffle.values())


def test_corpus_summary(corpus):
    _check(corpus["rows"])
    s = corpus["summary"]
    assert s["crashes"] == 0
    assert s["valid_pct"] is not None and s["valid_pct"] >= 95.0
