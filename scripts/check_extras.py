"""Install onnxprune as users do, one fresh venv per extra, and run the README example of each extra.

For each extra (``base`` = no extra): ``python -m venv`` (a real fresh venv, no system site
packages) → ``pip install "<copy of the tree>[extra]"`` (not editable: as a user installs it) →
the README block marked ``<!-- extra: NAME -->`` runs in a scratch folder holding a copy of
``models/``. ``sh`` blocks run with the venv's ``bin`` first on PATH; ``python`` blocks with the
venv's interpreter. The ``ray`` example starts a cluster on loopback on a free port (instead of
6379) and stops it by ending the ``ray start --block`` process it started (``ray stop`` would end
every Ray process on the machine).

Usage: python scripts/check_extras.py [--extras base,torch,images,report,ray] [--work DIR] [--json OUT]
Exit 0 when every extra passed. pip reads the machine's pip configuration (e.g. a local wheel of
torch 2.13.0).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRAS = ("base", "torch", "images", "report", "ray")


def readme_examples() -> dict[str, tuple[str, str]]:
    text = open(os.path.join(ROOT, "README.md")).read()
    out = {}
    for m in re.finditer(r"<!-- extra: (\w+) -->\s*```(\w+)\n(.*?)```", text, re.S):
        out[m.group(1)] = (m.group(2), m.group(3))
    return out


def copy_tree(dst: str) -> None:
    """The tracked (and untracked, not ignored) files of the work tree: what a user's checkout holds."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for f in filter(None, files):
        src = os.path.join(ROOT, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, f)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, f))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, log, **kw) -> int:
    log.write(f"$ {cmd if isinstance(cmd, str) else ' '.join(cmd)}\n")
    log.flush()
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **kw).returncode


def check(extra: str, src: str, work: str, example: tuple[str, str], log) -> dict:
    venv = os.path.join(work, f"venv-{extra}")
    shutil.rmtree(venv, ignore_errors=True)
    t0 = time.time()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    row = {"extra": extra}
    if run([sys.executable, "-m", "venv", venv], log) != 0:
        return {**row, "ok": False, "step": "venv"}
    py = os.path.join(venv, "bin", "python")
    spec = src if extra == "base" else f"{src}[{extra}]"
    if run([py, "-m", "pip", "install", "-q", spec], log, env=env) != 0:
        return {**row, "ok": False, "step": "pip install", "seconds": time.time() - t0}
    row["install_s"] = round(time.time() - t0, 1)
    freeze = subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True, env=env).stdout
    row["packages"] = len(freeze.split())
    row["has"] = {p: any(line.lower().startswith(p + "==") for line in freeze.split())
                  for p in ("torch", "onnxscript", "pillow", "matplotlib", "ray")}
    scratch = os.path.join(work, f"run-{extra}")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "models"), os.path.join(scratch, "models"))
    lang, code = example
    env = dict(env, PATH=os.path.join(venv, "bin") + os.pathsep + env.get("PATH", ""), VIRTUAL_ENV=venv)
    ray_proc = None
    t1 = time.time()
    try:
        if extra == "ray":
            port = _free_port()
            lines = [ln for ln in code.splitlines() if not ln.startswith(("ray start", "ray stop"))]
            code = "\n".join(lines).replace("6379", str(port))
            renv = dict(env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
            temp = f"/tmp/onnxprune-ray-x{port}"
            ray_proc = subprocess.Popen([os.path.join(venv, "bin", "ray"), "start", "--head",
                                         "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                                         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
                                         "--block"], stdout=log, stderr=subprocess.STDOUT, env=renv, cwd=scratch)
            deadline = time.time() + 180
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if ray_proc.poll() is not None or time.time() > deadline:
                        return {**row, "ok": False, "step": "ray start"}
                    time.sleep(1)
        if lang == "python":
            rc = run([py, "-c", code], log, env=env, cwd=scratch)
        else:
            rc = run(["bash", "-euo", "pipefail", "-c", code], log, env=env, cwd=scratch)
    finally:
        if ray_proc is not None:
            ray_proc.terminate()
            try:
                ray_proc.wait(60)
            except subprocess.TimeoutExpired:
                ray_proc.kill()
            shutil.rmtree(temp, ignore_errors=True)
    return {**row, "ok": rc == 0, "step": "example", "example_s": round(time.time() - t1, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--extras", default=",".join(EXTRAS))
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "onnxprune-extras"))
    ap.add_argument("--json")
    ap.add_argument("--keep", action="store_true", help="keep the venvs")
    a = ap.parse_args()
    examples = readme_examples()
    os.makedirs(a.work, exist_ok=True)
    src = os.path.join(a.work, "src")
    shutil.rmtree(src, ignore_errors=True)
    copy_tree(src)
    results = []
    for extra in a.extras.split(","):
        if extra not in examples:
            results.append({"extra": extra, "ok": False, "step": "no README example marked <!-- extra: %s -->" % extra})
            continue
        with open(os.path.join(a.work, f"{extra}.log"), "w") as log:
            r = check(extra, src, a.work, examples[extra], log)
        r["log"] = os.path.join(a.work, f"{extra}.log")
        results.append(r)
        print(json.dumps(r), flush=True)
        if not a.keep:
            shutil.rmtree(os.path.join(a.work, f"venv-{extra}"), ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    ok = all(r["ok"] for r in results)
    print(f"{sum(r['ok'] for r in results)} passed, {sum(not r['ok'] for r in results)} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
