"""``onnxprune sweep``: prune at several targets, judge and time each point, plot quality against latency.

Each point is one :func:`onnxprune.prune` at one target (a fraction of the FLOPs to keep; the
:data:`TARGET_KINDS` table maps a kind of target to the prune option it sets, so that other kinds,
e.g. an output-cosine target, are one entry). A point is judged on held-out ``data`` (never the
calibration data) with :func:`onnxprune.validate.compare_models` and then timed.

Two stages:

1. **prune and judge** — points run in parallel processes (``jobs``) or as Ray tasks on a
   cluster (``ray``: an address such as ``127.0.0.1:6379``). A Ray task gets the model and data
   files as bytes and sends the pruned model back, so the cluster's machines need onnxprune's
   dependencies but no shared file system.
2. **time** — on this machine, after stage 1, all points and the original together: each round
   runs every model once in a shuffled order, so that every latency is measured under the same
   conditions (parallel timing would measure the contention; a busy machine slows whole
   stretches of time). Timing is redone on every run, resumed or not.

The output folder is the sweep's state (resumable: a rerun skips what is recorded)::

    DIR/sweep.json          settings: model digest, options, data (a rerun with other settings is refused)
    DIR/points/<key>.onnx   the pruned model of a point
    DIR/points/<key>.json   its row (stage 1 done); ``latency`` is filled by stage 2
    DIR/results.json|.csv|.md   the table (quality, FLOPs, parameters, latency, Pareto front)
    DIR/sweep.png           quality vs latency, the Pareto front marked

The Pareto front: the points that no other point beats on both quality (higher is better) and
latency (lower is better). Latency is taken relative to the original model, timed interleaved with
it (median ratio), which stays comparable on a busy machine where absolute times drift.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from .errors import OnnxPruneError
from .outputs import write_text
from .options import resolve, signature, without

__all__ = ["Target", "TARGET_KINDS", "SweepResult", "sweep", "pareto_front"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# kind of target → the prune option it sets (one entry per kind)
TARGET_KINDS: dict[str, str] = {"flops": "target_flops"}


@dataclass(frozen=True)
class Target:
    kind: str
    value: float

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.value:.4f}"

    def prune_options(self) -> dict:
        return {TARGET_KINDS[self.kind]: self.value}


@dataclass
class SweepResult:
    rows: list[dict]
    folder: str
    plot: str | None
    quality: str  # which quality the plot shows: "accuracy" or "cosine"

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "folder": self.folder, "plot": self.plot, "quality": self.quality,
                "points": self.rows}


# ---------------------------------------------------------------------------------------------------------------
# one point


def _prune_and_judge(model: str, out: str, prune_opts: dict, target: Target, judge: dict) -> dict:
    """Prune ``model`` at ``target`` into ``out`` and compare it with the original on the judge data."""
    from . import api
    from .validate import Tolerances, compare_models, parse_tolerances

    row: dict = {"key": target.key, "kind": target.kind, "target": target.value}
    t0 = time.perf_counter()
    try:
        res = api.prune(model, out, **prune_opts, **target.prune_options())
    except OnnxPruneError as e:  # e.g. a target out of reach: the point is recorded as failed, the sweep goes on
        row.update(error=str(e), prune_s=time.perf_counter() - t0)
        return row
    row["prune_s"] = time.perf_counter() - t0
    b, a = res.before, res.after
    row.update(flops_ratio=a.flops / b.flops if b.flops else None, params_ratio=a.params / b.params if b.params else None,
               removed_channels=res.plan.n_removed, removed_blocks=len(res.removed_blocks))
    def limit(name):
        v = judge.get(name)
        return None if v == "off" else v

    tol = Tolerances(parse_tolerances(judge["atol"], "atol"), parse_tolerances(judge["rtol"], "rtol"),
                     min_cosine=limit("min_cosine"), min_agreement=limit("min_agreement"),
                     max_accuracy_drop=limit("max_accuracy_drop"))
    rep = compare_models(model, out, providers=["cpu"], data=judge["data"], seed=judge["validate_seed"],
                         batch=judge["batch"], dims=judge["dims"], tol=tol, latency=False, labels_key=judge["labels_key"])
    p = rep.providers[0]
    row.update(passed=rep.passed, failures=[str(f) for f in (*rep.failures, *p.failures,
                                                           *(f for o in p.outputs for f in o.failures))],
               accuracy_original=p.accuracy_original, accuracy=p.accuracy_pruned,
               cosine=min((o.cosine for o in p.outputs), default=None),
               top1_agreement=min((o.top1_agreement for o in p.outputs if o.top1_agreement is not None), default=None),
               max_abs=max((o.max_abs for o in p.outputs), default=None), inputs=rep.inputs,
               file_bytes=rep.pruned.file_bytes, file_bytes_original=rep.original.file_bytes)
    return row


def _local_point(model: str, out: str, prune_opts: dict, target: Target, judge: dict) -> dict:
    """In a worker process: one thread pool per process, then the point."""
    from .validate.runtime import use_global_thread_pool

    use_global_thread_pool()
    return _prune_and_judge(model, out, prune_opts, target, judge)


def _file_options(prune_opts: dict, judge: dict) -> list[tuple[dict, str]]:
    """The (dict, key) pairs that hold paths of files a remote worker needs."""
    pairs = [(prune_opts, k) for k in ("calib", "gradients", "plan") if isinstance(prune_opts.get(k), str)]
    if judge.get("data"):
        pairs.append((judge, "data"))
    return pairs


def _remote_point(model_bytes: bytes, files: dict[str, bytes], prune_opts: dict, target: Target,
                  judge: dict) -> tuple[dict, bytes | None]:
    """On a Ray worker: write the files into a temporary folder, run the point, return its row and model."""
    from .validate.runtime import use_global_thread_pool

    use_global_thread_pool()
    prune_opts, judge = dict(prune_opts), dict(judge)
    with tempfile.TemporaryDirectory(prefix="onnxprune-sweep-") as tmp:
        model = os.path.join(tmp, "model.onnx")
        with open(model, "wb") as f:
            f.write(model_bytes)
        for (d, k) in _file_options(prune_opts, judge):
            path = os.path.join(tmp, f"{k}{os.path.splitext(d[k])[1]}")
            with open(path, "wb") as f:
                f.write(files[k])
            d[k] = path
        out = os.path.join(tmp, "pruned.onnx")
        row = _prune_and_judge(model, out, prune_opts, target, judge)
        data = None
        if "error" not in row:
            with open(out, "rb") as f:
                data = f.read()
    return row, data


# ---------------------------------------------------------------------------------------------------------------
# runners


def _run_local(todo: list[Target], model: str, folder: str, prune_opts: dict, judge: dict, jobs: int,
               done: Callable[[Target, dict], None]) -> None:
    if jobs == 1:
        for t in todo:
            done(t, _prune_and_judge(model, _model_path(folder, t), prune_opts, t, judge))
        return
    import multiprocessing

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_local_point, model, _model_path(folder, t), prune_opts, t, judge): t for t in todo}
        for fut in as_completed(futures):
            done(futures[fut], fut.result())


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _check_reachable(address: str) -> None:
    """A clear error instead of ray.init's endless retries when nothing listens at ``address``."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise OnnxPruneError(f"Ray address '{address}': expected HOST:PORT, e.g. 127.0.0.1:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise OnnxPruneError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                             f"'ray start --head --port={port}' or fix the address") from None


def _import_ray(address: str | None = None):
    if address and _loopback(address.rpartition(":")[0].strip("[]")):
        # Ray replaces a loopback address by the machine's IP unless its single-machine mode is on
        # (read once, when ray is imported); a cluster started on 127.0.0.1 listens on loopback only
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise OnnxPruneError("running a sweep on a Ray cluster needs the 'ray' package: "
                             "pip install 'onnxprune[ray]'") from None
    return ray


def _run_ray(todo: list[Target], model: str, folder: str, prune_opts: dict, judge: dict, address: str,
             done: Callable[[Target, dict], None]) -> None:
    _check_reachable(address)
    ray = _import_ray(address)
    if os.path.exists(model + ".data") or os.path.isdir(prune_opts.get("calib") or ""):
        raise OnnxPruneError("a sweep on Ray sends the model and data as files: models with external data and image "
                             "folders as calibration data are not supported there; run it locally (jobs)")
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                     runtime_env={"py_modules": [os.path.dirname(os.path.abspath(__file__))]})
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise OnnxPruneError(f"cannot connect to the Ray cluster at {address}: {' '.join(str(e).split())[:300]}") from None
    try:
        with open(model, "rb") as f:
            model_ref = ray.put(f.read())
        files = {}
        for d, k in _file_options(prune_opts, judge):
            with open(d[k], "rb") as f:
                files[k] = f.read()
        files_ref = ray.put(files)
        task = ray.remote(num_cpus=1)(_remote_point)
        refs = {task.remote(model_ref, files_ref, prune_opts, t, judge): t for t in todo}
        log.info("sweep: %d point(s) submitted to the Ray cluster at %s", len(refs), address)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            row, data = ray.get(ready[0])
            t = refs[ready[0]]
            if data is not None:
                write_text(_model_path(folder, t), data)
            row["ray"] = address
            done(t, row)
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# timing, table, plot


def _time_points(model: str, pruned: dict[str, str], judge: dict, warmup: int, repeats: int) -> dict[str, dict]:
    """Time the original and every point together: each round runs all of them once, in a shuffled order.

    All models then see the same machine load (a busy machine slows whole stretches of time); each
    point's ``ratio`` is its median over the original's median.
    """
    from .validate.inputs import InputSpec, npz_dataset, random_dataset
    from .validate.runtime import make_session

    sessions = {"": make_session(model, "cpu")}
    sessions.update({k: make_session(p, "cpu") for k, p in pruned.items()})
    specs = InputSpec.from_session(sessions[""])
    ds = (npz_dataset(judge["data"], specs, labels_key=judge["labels_key"]) if judge["data"]
          else random_dataset(specs, seed=judge["validate_seed"], batch=judge["batch"], dims=judge["dims"]))
    feeds = ds.batches[0]
    names = {k: [o.name for o in s.get_outputs()] for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    rng = np.random.default_rng(0)
    keys = list(sessions)
    for r in range(warmup + repeats):
        for i in rng.permutation(len(keys)):
            k = keys[i]
            t0 = time.perf_counter()
            sessions[k].run(names[k], feeds)
            if r >= warmup:
                times[k].append((time.perf_counter() - t0) * 1e3)
    base = float(np.median(times[""]))
    common = {"original_ms": base, "repeats": repeats, "warmup": warmup, "provider": "cpu", "threads": _threads(),
              "batch": int(next(iter(feeds.values())).shape[0])}
    return {k: {**common, "pruned_ms": float(np.median(t)), "pruned_p90_ms": float(np.percentile(t, 90)),
                "ratio": float(np.median(t)) / base if base else None}
            for k, t in times.items() if k}


def _threads() -> int:
    return int(os.environ.get("ONNXPRUNE_THREADS", "0")) or (os.cpu_count() or 1)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, quality) points that no other point beats on both (lower, higher)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


_COLUMNS = ("target", "flops_ratio", "params_ratio", "accuracy", "cosine", "top1_agreement", "pruned_ms",
            "latency_ratio", "pareto", "passed", "error")


def _flat(row: dict) -> dict:
    lat = row.get("latency") or {}
    return {**{k: row.get(k) for k in _COLUMNS}, "pruned_ms": lat.get("pruned_ms"), "latency_ratio": lat.get("ratio")}


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _write_tables(folder: str, result: SweepResult) -> None:
    write_text(os.path.join(folder, "results.json"), json.dumps(result.to_dict(), indent=1).encode())
    rows = [_flat(r) for r in result.rows]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    write_text(os.path.join(folder, "results.csv"), buf.getvalue().encode())
    md = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    md += ["| " + " | ".join(_fmt(r[c]) for c in _COLUMNS) + " |" for r in rows]
    write_text(os.path.join(folder, "results.md"), ("\n".join(md) + "\n").encode())


def _plot(folder: str, model: str, rows: list[dict], quality: str) -> str | None:
    ok = [r for r in rows if r.get("latency") and r.get(quality) is not None]
    if not ok:
        return None
    try:
        import matplotlib
    except ImportError:
        log.warning("sweep: no plot, matplotlib is missing (pip install 'onnxprune[report]'); the tables are written")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["latency"]["ratio"] for r in ok]
    ys = [r[quality] for r in ok]
    front = [r["key"] for r in ok if r.get("pareto")]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(xs, ys, c="#888", s=30, label="points", zorder=2)
    fx = [r["latency"]["ratio"] for r in ok if r["key"] in front]
    fy = [r[quality] for r in ok if r["key"] in front]
    order = np.argsort(fx)
    ax.plot(np.array(fx)[order], np.array(fy)[order], "-o", c="#d62728", ms=7, label="Pareto front", zorder=3)
    base_q = 1.0 if quality == "cosine" else ok[0].get("accuracy_original")
    if base_q is not None:
        ax.scatter([1.0], [base_q], marker="*", s=160, c="#1f77b4", label="original", zorder=4)
    labels: dict[tuple, list[str]] = {}  # points with the same result (e.g. rounding) share one label
    for r, x, y in zip(ok, xs, ys):
        labels.setdefault((round(r["flops_ratio"], 6), y), [x]).append(f"{r['target']:g}")
    for (_, y), (x, *names) in labels.items():
        ax.annotate(",".join(names), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    lat = ok[0]["latency"]
    ax.set_xlabel(f"latency relative to the original (median of {lat['repeats']} interleaved runs; "
                  f"onnxruntime CPU, batch {lat['batch']}, {lat['threads']} thread(s))", fontsize=8)
    ax.set_ylabel("top-1 accuracy on held-out data" if quality == "accuracy"
                  else "output cosine similarity to the original (held-out data)")
    ax.set_title(f"{os.path.basename(model)}: FLOPs targets (labels: fraction kept)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = os.path.join(folder, "sweep.png")
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_text(path, png.getvalue())
    return path


# ---------------------------------------------------------------------------------------------------------------
# the sweep


def _model_path(folder: str, t: Target) -> str:
    return os.path.join(folder, "points", t.key + ".onnx")


def _row_path(folder: str, t: Target) -> str:
    return os.path.join(folder, "points", t.key + ".json")


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _settings(model: str, prune_opts: dict, judge: dict) -> dict:
    def jsonable(v):
        if isinstance(v, str) and os.path.exists(v):  # a file: the same one from any working directory
            return os.path.abspath(v)
        return v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else (
            list(v) if isinstance(v, tuple) else repr(v))

    return {"schema_version": SCHEMA_VERSION, "model": os.path.abspath(model), "model_sha256": _digest(model),
            "prune_options": {k: jsonable(v) for k, v in sorted(prune_opts.items())},
            "judge": {k: jsonable(v) for k, v in sorted(judge.items())}}


def _check_folder(folder: str, settings: dict) -> None:
    os.makedirs(os.path.join(folder, "points"), exist_ok=True)
    path = os.path.join(folder, "sweep.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != json.loads(json.dumps(settings)):
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != json.loads(json.dumps(settings)).get(k))
            raise OnnxPruneError(f"{folder} holds a sweep with other settings ({', '.join(diff)} differ); "
                                 "choose another output folder or delete it")
        return
    write_text(path, json.dumps(settings, indent=1).encode())


def sweep(model: str, folder: str, **options) -> SweepResult:
    """Prune ``model`` at each target, judge, time, and write the table and plot into ``folder``.

    Options: ``targets`` (fractions of the FLOPs to keep), ``jobs`` or ``ray`` (an address),
    judging (``data``, ``labels_key``, ``batch``, ``dims``, ``validate_seed``, ``atol``, ``rtol``,
    ``min_cosine``, ``max_accuracy_drop``), timing (``repeats``, ``warmup``), and the planning,
    calibration and recovery options of :func:`onnxprune.prune` (defined in
    ``onnxprune.options``).

    Raises:
        OnnxPruneError: bad options, an unreadable model, a folder holding another sweep, or no
            Ray when ``ray`` is given.
    """
    o = resolve("sweep", options)
    if not os.path.isfile(model):
        raise OnnxPruneError(f"no such model file: {model}")
    judge = o.pick(("data", "labels_key", "batch", "dims", "validate_seed", "atol", "rtol", "min_cosine", "min_agreement",
                    "max_accuracy_drop"))
    prune_opts = without({k: o[k] for k in o.given}, "validation", "sweep")
    if o.ray:  # fail before any work
        _check_reachable(o.ray)
        _import_ray(o.ray)
    targets = [Target("flops", float(v)) for v in dict.fromkeys(o.targets)]
    _check_folder(folder, _settings(model, prune_opts, judge))
    rows: dict[str, dict] = {}
    for t in targets:
        p = _row_path(folder, t)
        if os.path.exists(p):
            with open(p) as f:
                rows[t.key] = json.load(f)
    todo = [t for t in targets if t.key not in rows]
    if len(todo) < len(targets):
        log.info("sweep: %d of %d point(s) already done in %s, skipped", len(targets) - len(todo), len(targets), folder)

    def done(t: Target, row: dict) -> None:
        rows[t.key] = row
        write_text(_row_path(folder, t), json.dumps(row, indent=1).encode())
        log.info("sweep: point %s %s", t.key, row.get("error") or f"pruned, flops {row['flops_ratio']:.3f}")

    if todo:
        if o.ray:
            _run_ray(todo, model, folder, prune_opts, judge, o.ray, done)
        else:
            _run_local(todo, model, folder, prune_opts, judge, o.jobs, done)
    timed = {t.key: _model_path(folder, t) for t in targets if "error" not in rows[t.key]}
    if timed:  # stage 2: timing here, all points together (every run: the same conditions for all)
        for key, lat in _time_points(model, timed, judge, o.warmup, o.repeats).items():
            rows[key]["latency"] = lat
            write_text(os.path.join(folder, "points", key + ".json"), json.dumps(rows[key], indent=1).encode())
    out = [rows[t.key] for t in targets]
    quality = "accuracy" if all(r.get("accuracy") is not None for r in out if "error" not in r) and any(
        "error" not in r for r in out) else "cosine"
    timed = [r for r in out if r.get("latency") and r.get(quality) is not None]
    front = {timed[i]["key"] for i in pareto_front([(r["latency"]["ratio"], r[quality]) for r in timed])}
    for r in out:
        r["pareto"] = r["key"] in front
    result = SweepResult(out, folder, None, quality)
    result.plot = _plot(folder, model, out, quality)
    _write_tables(folder, result)
    return result


sweep.__signature__ = signature("sweep", "model", "folder")
