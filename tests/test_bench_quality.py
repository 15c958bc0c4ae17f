"""The bounded part of scripts/bench_quality.py: the digits CNN at one FLOPs budget without recovery, and
the Markdown tables from saved rows."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def test_bench_quality_digits_budget_runs_end_to_end(tmp_path):
    out, md = str(tmp_path / "rows.json"), str(tmp_path / "table.md")
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_quality.py"), "--cache", str(tmp_path / "c"),
                        "--models", "digits_cnn", "--parts", "flops", "--criteria", "l2", "wanda", "--recover", "none",
                        "--flops", "0.8", "--no-defaults", "--json", out, "--markdown", md],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.load(open(out))
    assert [(row["variant"], row["target"]) for row in rows] == [("l2+none", 0.8), ("wanda+none", 0.8)]
    for row in rows:
        assert 0 < row["flops"] <= 0.8 + 0.02 and 0 < row["cosine"] <= 1 + 1e-6
        assert 0 <= row["accuracy"] <= 1 and row["accuracy_original"] > 0.9  # the held-out split has labels
    text = open(md).read()
    assert "| digits_cnn | 0.8 |" in text and "l2+none" in text and "wanda+none" in text


def test_tables_from_rows_and_shared_cosine():
    import bench_quality
    from _devset_eval import cosines

    rows = [{"model": "m", "part": "cosine", "target": 0.95, "search": "pergroup", "variant": "d", "flops": 0.4,
             "cosine": 0.96, "decision": None, "seconds": 12.0, "global_phase_flops": 0.5},
            {"model": "m", "part": "cosine", "target": 0.95, "search": "global", "variant": "d",
             "error": "not run: budget"},
            {"model": "m", "part": "flops", "target": 0.6, "variant": "l2+none", "flops": 0.5, "cosine": 0.9,
             "decision": 0.8, "seconds": 3.0}]
    text = bench_quality.markdown(rows)
    assert "**60%** removed (its global phase: 50%), 0.960 (12 s)" in text and "not run" in text
    assert "(kept 0.50) 0.900 / dec 0.80" in text
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert np.allclose(cosines(a, np.array([[2.0, 0.0], [1.0, 1.0]])), [1.0, np.sqrt(0.5)])


def test_quality_runs_digits(tmp_path):
    """scripts/quality_runs.py: chosen options side by side (numbers parsed), FLOPs kept and quality printed."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "quality_runs.py"), "digits_cnn", "0.7",
                        "criterion=l2,recover=none", "criterion=l2,recover=none,calib_limit=16", "--cache",
                        str(tmp_path / "c")], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("digits_cnn 0.7")]
    assert len(lines) == 2 and all("FLOPs kept" in ln and "acc" in ln for ln in lines), r.stdout
