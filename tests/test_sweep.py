"""``onnxprune sweep``: table, plot, Pareto front, resuming, and a Ray cluster on loopback."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from onnxprune.cli import main
from onnxprune.sweep import pareto_front, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "digits_cnn.onnx")
DATA = os.path.join(ROOT, "models", "digits_test.npz")
FAST = dict(repeats=2, warmup=0, min_channels=8)  # min_channels 8: a target of 0.01 is out of reach


def test_pareto_front():
    pts = [(1.0, 0.9), (0.5, 0.8), (0.6, 0.7), (0.3, 0.5), (0.3, 0.6), (2.0, 0.9)]
    assert sorted(pareto_front(pts)) == [0, 1, 4]
    assert pareto_front([]) == []


def test_sweep_writes_table_and_plot_and_resumes(tmp_path, caplog):
    folder = str(tmp_path / "sw")
    res = sweep(MODEL, folder, targets=(0.6, 0.3, 0.01), data=DATA, **FAST)
    rows = {r["key"]: r for r in res.rows}
    assert res.quality == "accuracy" and len(rows) == 3
    ok = [r for r in res.rows if "error" not in r]
    assert len(ok) == 2 and "cannot reach" in rows["flops-0.0100"]["error"]  # recorded, the sweep goes on
    for r in ok:
        assert r["flops_ratio"] <= r["target"] + 1e-9 and 0 <= r["accuracy"] <= 1
        assert r["latency"]["batch"] == 64 and r["latency"]["repeats"] == 2
        assert os.path.exists(os.path.join(folder, "points", r["key"] + ".onnx"))
    assert any(r["pareto"] for r in ok)
    assert res.plot and open(res.plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    table = json.load(open(os.path.join(folder, "results.json")))
    assert table["schema_version"] == 1 and len(table["points"]) == 3
    assert open(os.path.join(folder, "results.md")).read().startswith("| target |")
    assert len(open(os.path.join(folder, "results.csv")).read().splitlines()) == 4
    # resumable: a rerun with one more point only runs that point
    stamp = os.path.getmtime(os.path.join(folder, "points", "flops-0.6000.onnx"))  # timing is redone, pruning not
    caplog.set_level("INFO", logger="onnxprune.sweep")
    res2 = sweep(MODEL, folder, targets=(0.6, 0.3, 0.01, 0.8), data=DATA, **FAST)
    assert os.path.getmtime(os.path.join(folder, "points", "flops-0.6000.onnx")) == stamp
    assert {r["key"]: r["prune_s"] for r in res2.rows if r["key"] in rows} == {k: r["prune_s"] for k, r in rows.items()}
    assert "3 of 4 point(s) already done" in caplog.text and len(res2.rows) == 4
    # other settings in the same folder are refused, naming what differs
    with pytest.raises(Exception, match="other settings.*prune_options"):
        sweep(MODEL, folder, targets=(0.6,), data=DATA, round_to=4, **FAST)


def test_sweep_cli_parallel_jobs(tmp_path, capsys):
    folder = str(tmp_path / "sw")
    assert main(["sweep", MODEL, "-o", folder, "--targets", "0.7,0.4", "--data", DATA, "--jobs", "2",
                 "--repeats", "2", "--warmup", "0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [p["target"] for p in d["points"]] == [0.7, 0.4] and all("error" not in p for p in d["points"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(tmp_path):
    """A one-node Ray cluster on loopback, started with ``ray start --head --block`` and stopped by ending that
    process (it drains and ends the cluster's processes; ``ray stop`` would end every Ray process on the machine)."""
    pytest.importorskip("ray")
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray_bin is None:
        pytest.skip("the ray command is not installed")
    port = _free_port()
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keep 127.0.0.1 (see sweep._import_ray)
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    temp = f"/tmp/onnxprune-ray-{os.getpid()}-{port}"  # short: Ray's socket paths are length-limited
    log = open(tmp_path / "ray.log", "w")
    proc = subprocess.Popen([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}", "--block"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("ray start failed: " + open(tmp_path / "ray.log").read()[-2000:])
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # ~30 s alone (cluster start, task workers, Ray's package upload); > 60 s on a busy machine
def test_sweep_on_a_local_ray_cluster(ray_cluster, tmp_path):
    folder = str(tmp_path / "sw")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "onnxprune", "sweep", MODEL, "-o", folder, "--targets", "0.7,0.4",
                        "--data", DATA, "--ray", ray_cluster, "--repeats", "2", "--warmup", "0", "--json"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    d = json.loads(p.stdout)
    assert [r["target"] for r in d["points"]] == [0.7, 0.4]
    for r in d["points"]:
        assert r["ray"] == ray_cluster and "error" not in r  # pruned and judged by a Ray task
        assert os.path.getsize(os.path.join(folder, "points", r["key"] + ".onnx")) > 1000  # sent back
        assert r["latency"]["pruned_ms"] > 0  # timed here


def test_ray_address_nobody_answers(tmp_path, capsys):
    pytest.importorskip("ray")
    port = _free_port()
    assert main(["sweep", MODEL, "-o", str(tmp_path / "s"), "--targets", "0.5", "--ray", f"127.0.0.1:{port}"]) == 1
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in capsys.readouterr().err
