"""The bounded part of scripts/bench_latency.py: the digits CNN, one reduction, a few repeats."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_latency_quick_runs_end_to_end(tmp_path):
    out = str(tmp_path / "rows.json")
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_latency.py"), "--quick", "--models",
                        "digits", "--reductions", "1.5", "--repeats", "3", "--work", str(tmp_path / "w"),
                        "--json", out], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.load(open(out))
    assert [row["variant"] for row in rows] == ["default@1.5", "speedup@1.5"]
    default, speedup = rows
    assert default["macs_reduction"] >= 1.4 and default["speedup"] > 0 and default["original_ms"] > 0
    assert default["round_to"] in (8, 16)
    # a 0.05 ms model on a busy machine: the target may be out of reach, which must be said clearly
    assert "speedup" in speedup or "cannot reach" in speedup["error"], speedup
    if "speedup" in speedup:
        assert speedup["check"]["target_speedup"] == 1.5 and "target_met_10pct" in speedup
    assert "speed/MACs" in r.stdout and "digits" in r.stdout
