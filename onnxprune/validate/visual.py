"""A before/after report of a pruning: one self-contained HTML file (figures embedded), or Markdown.

Sections (``build_report`` collects the data, ``write_report`` renders it by file suffix):

1. **Summary** — paths, parameters, MACs, FLOPs, file size before/after, how the pruned model
   was made (its provenance metadata), and the validation verdict with the limits applied.
2. **Channel groups** — each group's width before and after (a bar chart and a table). Groups
   are matched by name (the producers' node names, which the rewrite keeps).
3. **FLOPs per layer** — the share of the original model's FLOPs in each of the heaviest
   layers, before and after (matched by node name).
4. **Latency per op type** — onnxruntime's profiler (``SessionOptions.enable_profiling``) on the
   validation's timing feeds: kernel time per op type and run (median of the runs), before and after. Profile
   files go to a temporary folder that is removed afterwards, never to the working directory.
5. **Output errors** — the distribution of |original - pruned| per output (histograms).
6. **Accuracy and latency** — from the validation run (shown right after the summary).

Figures are drawn by matplotlib with the Agg backend and embedded as base64 PNG, so the HTML
file needs nothing else. The Markdown variant (``.md``) has the same tables and no figures, for
CI logs.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import shutil
import tempfile
from collections import defaultdict

import numpy as np

from ..errors import OnnxPruneError
from .compare import Report
from .report import format_tightest

__all__ = ["build_report", "write_report", "render_html", "render_markdown", "profile_op_types"]

log = logging.getLogger("onnxprune.validate")
TOP_LAYERS = 20


# ----------------------------------------------------------------------------- data
def profile_op_types(path: str, feeds: dict, *, provider: str = "cpu", runs: int = 20,
                     threads: int | None = None) -> dict[str, float]:
    """Kernel time (ms) per op type and run (median over ``runs``), from onnxruntime's profiler.

    The profile JSON is written into a temporary folder that is removed before returning.
    """
    from .runtime import make_session

    tmp = tempfile.mkdtemp(prefix="onnxprune-profile-")
    try:
        sess = make_session(path, provider, threads=threads, profile_dir=tmp)
        names = [o.name for o in sess.get_outputs()]
        sess.run(names, feeds)  # warm-up: its events are dropped below
        for _ in range(runs):
            sess.run(names, feeds)
        prof = sess.end_profiling()
        with open(prof) as f:
            events = json.load(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    timed = _split_runs(events)[1:]  # the first run warmed up
    ops = {op for r in timed for op in r}
    per_op = {op: float(np.median([r.get(op, 0.0) for r in timed])) for op in ops}
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def _split_runs(events: list[dict]) -> list[dict[str, float]]:
    """Node kernel times grouped per run: a ``model_run`` event ends each run."""
    out: list[dict[str, float]] = []
    cur: dict[str, float] = defaultdict(float)
    for e in sorted(events, key=lambda e: e.get("ts", 0) + e.get("dur", 0)):
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            cur[e.get("args", {}).get("op_name", "?")] += e.get("dur", 0) / 1e3
        elif e.get("cat") == "Session" and e.get("name") == "model_run":
            out.append(dict(cur))
            cur = defaultdict(float)
    return out


def _groups(original: str, pruned: str) -> list[dict]:
    from .. import api

    a = api.inspect(original).to_dict()["groups"]
    try:
        b = {g["name"]: g for g in api.inspect(pruned).to_dict()["groups"]}
    except OnnxPruneError as e:
        log.warning("channel groups of the pruned model not analysed (%s); widths after are unknown", e)
        b = {}
    return [{"name": g["name"], "kind": g["kind"], "before": g["channels"],
             "after": b[g["name"]]["channels"] if g["name"] in b else None} for g in a]


def _layer_flops(path: str) -> tuple[dict[str, int], dict[str, str]]:
    from ..cost import CostModel
    from ..graph import load_model

    m = load_model(path)
    flops = CostModel(m).node_flops()
    return ({m.node_name(n): f for n, f in flops.items()}, {m.node_name(n): n.op_type for n in flops})


def _layers(original: str, pruned: str) -> list[dict]:
    fa, ops = _layer_flops(original)
    fb, _ = _layer_flops(pruned)
    total = sum(fa.values()) or 1
    rows = [{"layer": k, "op": ops[k], "flops_before": v, "flops_after": fb.get(k, 0),
             "share_before": v / total, "share_after": fb.get(k, 0) / total}
            for k, v in sorted(fa.items(), key=lambda kv: -kv[1])]
    return rows


def build_report(original: str, pruned: str, *, validation: Report, profile_runs: int = 20,
                 threads: int | None = None) -> dict:
    """Everything the report shows, as data (``summary`` is what ``--json`` prints).

    Args:
        validation: a :class:`Report` from ``compare_models(..., keep_errors=True)`` (its timing
            feeds are profiled).
        profile_runs: profiled runs per model (0: no per-op latency).
        threads: intra-op threads of the profiled sessions. The first provider the validation
            could run is profiled.
    """
    from ..provenance import read_provenance

    tested = [p for p in validation.providers if p.available]
    prov = tested[0] if tested else None
    op_latency = None
    if prov is not None and profile_runs > 0 and validation.feeds:
        before = profile_op_types(original, validation.feeds, provider=prov.provider, runs=profile_runs, threads=threads)
        after = profile_op_types(pruned, validation.feeds, provider=prov.provider, runs=profile_runs, threads=threads)
        op_latency = {"provider": prov.provider, "runs": profile_runs,
                      "shapes": {k: list(np.shape(v)) for k, v in validation.feeds.items()},
                      "ops": [{"op": op, "before_ms": before.get(op, 0.0), "after_ms": after.get(op, 0.0)}
                              for op in sorted(set(before) | set(after), key=lambda o: -before.get(o, 0.0))]}
    v = validation.to_dict()
    summary = {"original": v["original"], "pruned": v["pruned"], "ratios": v["ratios"], "passed": v["passed"],
               "criteria": validation.tolerances.describe(), "tightest_passing": v["tightest_passing"],
               "provenance": read_provenance(pruned), "groups": _groups(original, pruned),
               "layers": _layers(original, pruned), "op_latency": op_latency,
               "providers": [{k: p[k] for k in ("provider", "available", "reason", "accuracy_original",
                                                "accuracy_pruned", "latency", "outputs", "failures")}
                             for p in v["providers"]],
               "inputs": v["inputs"]}
    errors = {o: e for o, e in prov.errors.items()} if prov is not None else {}
    return {"summary": summary, "errors": errors}


# ----------------------------------------------------------------------------- figures
def _plt():
    try:
        import matplotlib
    except ImportError:
        raise OnnxPruneError("the HTML report's figures need matplotlib: pip install 'onnxprune[report]' "
                             "(or write a Markdown report, report.md)") from None

    matplotlib.use("Agg")  # no display, no window: files only
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bars(labels: list[str], before: list[float], after: list[float], xlabel: str, title: str) -> str:
    plt = _plt()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(9, max(2.0, 0.32 * n + 1)))
    y = np.arange(n)
    ax.barh(y - 0.2, before, height=0.4, label="before", color="#9aa5b1")
    ax.barh(y + 0.2, after, height=0.4, label="after", color="#2f6fdf")
    ax.set_yticks(y, [lab if len(lab) <= 40 else lab[:37] + "..." for lab in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _histograms(errors: dict[str, np.ndarray]) -> str | None:
    items = [(k, e) for k, e in errors.items() if e.size]
    if not items:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(items), 1, figsize=(9, 2.6 * len(items)), squeeze=False)
    for ax, (name, e) in zip(axes[:, 0], items):
        pos = e[e > 0]
        if pos.size:
            bins = np.logspace(np.log10(pos.min()), np.log10(max(pos.max(), pos.min() * 1.01)), 50)
            ax.hist(pos, bins=bins, color="#2f6fdf")
            ax.set_xscale("log")
        ax.set_title(f"{name}: |original - pruned| ({e.size:,} values, {int((e == 0).sum()):,} exactly 0)",
                     fontsize=10)
        ax.set_ylabel("count")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _figures(data: dict) -> dict[str, str]:
    s = data["summary"]
    figs = {}
    groups = [g for g in s["groups"] if g["after"] is not None][:60]
    if groups:
        figs["groups"] = _bars([f"{g['name']} ({g['kind']})" for g in groups], [g["before"] for g in groups],
                               [g["after"] for g in groups], "width (channels, units or heads)",
                               "Channel groups: width before and after")
    layers = s["layers"][:TOP_LAYERS]
    if layers:
        figs["layers"] = _bars([f"{r['layer']} ({r['op']})" for r in layers],
                               [100 * r["share_before"] for r in layers], [100 * r["share_after"] for r in layers],
                               "% of the original model's FLOPs", f"FLOPs per layer (heaviest {len(layers)})")
    if s["op_latency"] and s["op_latency"]["ops"]:
        ops = s["op_latency"]["ops"][:25]
        figs["ops"] = _bars([o["op"] for o in ops], [o["before_ms"] for o in ops], [o["after_ms"] for o in ops],
                            "kernel time per run (ms, median)",
                            f"onnxruntime profiler, {s['op_latency']['provider']}: time per op type")
    hist = _histograms(data["errors"])
    if hist:
        figs["errors"] = hist
    return figs


# ----------------------------------------------------------------------------- rendering
def _h(n) -> str:
    if n is None:
        return "-"
    if isinstance(n, float):
        return f"{n:.4g}"
    return f"{n:,}"


def _tables(s: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    o, p, r = s["original"], s["pruned"], s["ratios"]
    t = {"summary": (["", "original", "pruned", "ratio"],
                     [[lab, _h(o[k]), _h(p[k]), _h(r[k])] for k, lab in
                      (("params", "parameters"), ("macs", "MACs"), ("flops", "FLOPs"), ("file_bytes", "file size (bytes)"))])}
    t["groups"] = (["group", "kind", "before", "after"],
                   [[g["name"], g["kind"], _h(g["before"]), _h(g["after"])] for g in s["groups"]])
    t["layers"] = (["layer", "op", "FLOPs before", "FLOPs after", "share before", "share after"],
                   [[x["layer"], x["op"], _h(x["flops_before"]), _h(x["flops_after"]), f"{x['share_before']:.1%}",
                     f"{x['share_after']:.1%}"] for x in s["layers"][:TOP_LAYERS]])
    if s["op_latency"]:
        t["ops"] = (["op type", "before (ms/run)", "after (ms/run)"],
                    [[x["op"], f"{x['before_ms']:.4f}", f"{x['after_ms']:.4f}"] for x in s["op_latency"]["ops"]])
    rows = []
    for pr in s["providers"]:
        if not pr["available"]:
            rows.append([pr["provider"], "not tested", pr["reason"][:200], "", "", ""])
            continue
        for c in pr["outputs"]:
            rows.append([pr["provider"], c["name"], _h(c["max_abs"]), _h(c["cosine"]), _h(c["top1_agreement"]),
                         "ok" if not c["failures"] else "FAIL: " + "; ".join(f["message"] for f in c["failures"])])
    t["outputs"] = (["provider", "output", "max abs error", "cosine", "top-1 agreement", "status"], rows)
    rows = []
    for pr in s["providers"]:
        if pr["available"]:
            la = pr["latency"]
            lat = (f"{la['original_ms']['median']:.3f} -> {la['pruned_ms']['median']:.3f} ms "
                   f"(x{la['ratio']:.3f}; batch {la['batch']}, {la['threads']} threads)") if la else "not timed"
            acc = (f"{pr['accuracy_original']:.4f} -> {pr['accuracy_pruned']:.4f}"
                   if pr["accuracy_original"] is not None else "no labels")
            rows.append([pr["provider"], acc, lat])
    t["accuracy"] = (["provider", "top-1 accuracy", "latency (median)"], rows)
    return t


SECTIONS = [("summary", "Summary"), ("accuracy", "Accuracy and latency"),
            ("groups", "Channel groups: width before and after"), ("layers", "FLOPs per layer"),
            ("ops", "Latency per op type (onnxruntime profiler)"), ("outputs", "Output errors")]

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#1d2530}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccd;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#eef1f6}.pass{color:#14782e;font-weight:bold}
.fail{color:#b3261e;font-weight:bold}img{max-width:100%;border:1px solid #eee}code{background:#f3f4f7;padding:0 .2em}"""


def render_html(data: dict) -> str:
    s = data["summary"]
    figs = _figures(data)
    t = _tables(s)
    esc = html.escape
    verdict = '<span class="pass">PASSED</span>' if s["passed"] else '<span class="fail">FAILED</span>'
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>onnxprune report: {esc(os.path.basename(s['pruned']['path']))}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>onnxprune report: {esc(os.path.basename(s['original']['path']))} &rarr; "
           f"{esc(os.path.basename(s['pruned']['path']))}</h1>",
           f"<p>Validation {verdict}. Criteria: {esc(s['criteria'])}. Tightest passing: "
           f"<code>{esc(format_tightest(s['tightest_passing']))}</code></p>"]
    prov = s["provenance"]
    if prov:
        out.append(f"<p>Made by onnxprune {esc(str(prov.get('version')))}, plan digest "
                   f"<code>{esc(str(prov.get('plan_digest', ''))[:16])}</code>, from "
                   f"<code>{esc(str(prov.get('source')))}</code>.</p>")
    for key, title in SECTIONS:
        if key not in t and key not in figs:
            continue
        out.append(f'<section id="{key}"><h2>{esc(title)}</h2>')
        fig_key = "errors" if key == "outputs" else key
        if fig_key in figs:
            out.append(f'<img alt="{esc(title)}" src="data:image/png;base64,{figs[fig_key]}">')
        if key in t:
            head, rows = t[key]
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
            out.append("</table>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(data: dict) -> str:
    s = data["summary"]
    t = _tables(s)
    out = [f"# onnxprune report: {os.path.basename(s['original']['path'])} -> {os.path.basename(s['pruned']['path'])}",
           "", f"Validation **{'PASSED' if s['passed'] else 'FAILED'}**. Criteria: {s['criteria']}.",
           f"Tightest passing: `{format_tightest(s['tightest_passing'])}`", ""]
    for key, title in SECTIONS:
        if key not in t:
            continue
        head, rows = t[key]
        out += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
        out.append("")
    out.append("(Figures are in the HTML variant: `-o report.html`.)")
    return "\n".join(out) + "\n"


def write_report(data: dict, path: str) -> None:
    """Write ``data`` as HTML (``.html``/``.htm``) or Markdown (``.md``), atomically."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".html", ".htm"):
        text = render_html(data)
    elif ext in (".md", ".markdown"):
        text = render_markdown(data)
    else:
        raise OnnxPruneError(f"report '{path}': use a .html or .md file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OnnxPruneError(f"report '{path}': folder {folder} does not exist")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
