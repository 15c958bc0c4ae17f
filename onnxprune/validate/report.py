"""Human-readable tables for a validation report (the CLI prints them; ``--json`` prints the dict)."""
from __future__ import annotations

from .compare import Report

__all__ = ["format_report", "format_tightest", "format_groups", "format_three"]


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _inputs(d: dict) -> str:
    if not d:
        return "-"
    shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in d.get("shapes", {}).items())
    if d.get("kind") == "file":
        return f"{d['path']} ({d['samples']} samples, {d['batches']} batch(es) of {shapes})"
    return f"random (seed {d.get('seed')}): {shapes}"


def format_tightest(t: dict) -> str:
    """The tightest passing limits as command-line options."""
    parts = [f"--atol {k}:{v:g}" for k, v in t.get("atol", {}).items()]
    for key, flag in (("min_cosine", "--min-cosine"), ("min_agreement", "--min-agreement"),
                      ("max_accuracy_drop", "--max-accuracy-drop")):
        if key in t:
            parts.append(f"{flag} {t[key]:g}")
    return " ".join(parts) or "-"


def format_report(r: Report) -> str:
    o, p = r.original, r.pruned
    rows = [["", "original", "pruned", "ratio"]]
    for key, label in (("params", "parameters"), ("macs", "MACs"), ("flops", "FLOPs"), ("file_bytes", "file size (B)")):
        a, b = getattr(o, key), getattr(p, key)
        rows.append([label, _human(a), _human(b), f"{b / a:.3f}" if a else "-"])
    out = [f"original: {o.path}", f"pruned:   {p.path}", f"inputs:   {_inputs(r.inputs)}",
           f"criteria: {r.tolerances.describe()}", "", _table(rows)]
    for pr in r.providers:
        out.append("")
        if not pr.available:
            out.append(f"[{pr.provider}] not tested: {pr.reason}")
            for f in pr.failures:
                out.append(f"FAIL: {f}")
            continue
        out.append(f"[{pr.provider}]")
        if pr.outputs:
            rows = [["output", "shape", "max abs", "mean abs", "cosine", "top-1 agree", "status"]]
            for c in pr.outputs:
                rows.append([c.name, "x".join(map(str, c.shape_pruned)), f"{c.max_abs:.3g}", f"{c.mean_abs:.3g}",
                             "-" if c.cosine is None else f"{c.cosine:.6f}",
                             "-" if c.top1_agreement is None else f"{c.top1_agreement:.3f}",
                             "ok" if c else "FAIL: " + "; ".join(map(str, c.failures))])
            out.append(_table(rows))
        if pr.accuracy_original is not None:
            out.append(f"accuracy: original {pr.accuracy_original:.4f}  pruned {pr.accuracy_pruned:.4f}  "
                       f"(change {pr.accuracy_pruned - pr.accuracy_original:+.4f})")
        if pr.latency is not None:
            la = pr.latency
            shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in la.input_shapes.items())
            out.append(f"latency (ms; batch {la.batch}, {la.threads} threads, {shapes}; {la.repeats} interleaved "
                       f"runs after {la.warmup} warm-ups): original median {la.original_ms['median']:.3f} "
                       f"p90 {la.original_ms['p90']:.3f} | pruned median {la.pruned_ms['median']:.3f} "
                       f"p90 {la.pruned_ms['p90']:.3f} | ratio {la.ratio:.3f}")
            if la.ratio > 1:
                out.append(f"note: the pruned model is SLOWER than the original on {pr.provider} "
                           f"({la.ratio:.3f}× its time); prune with --never-slower or --target-speedup")
        for f in pr.failures:
            out.append(f"FAIL: {f}")
    for f in r.failures:
        out.append(f"FAIL: {f}")
    out.append("")
    out.append("tightest passing: " + format_tightest(r.tightest()))
    out.append("validation: " + ("PASSED" if r.passed else "FAILED"))
    return "\n".join(out)


def format_groups(groups, *, limit: int = 40) -> str:
    """The per-group table printed after ``prune``: width before -> after and FLOPs share.

    Groups whose width did not change are counted, not listed; at most ``limit`` rows.
    """
    changed = [g for g in groups if g["after"] != g["before"]]
    if not changed:
        return "no group changed width"
    rows = [["group", "kind", "width", "FLOPs share (of the original)"]]
    for g in changed[:limit]:
        rows.append([g["name"], g["kind"], f"{g['before']} -> {g['after']}",
                     f"{g['flops_share_before']:.1%} -> {g['flops_share_after']:.1%}"])
    out = _table(rows)
    rest = len(changed) - min(len(changed), limit)
    notes = []
    if rest:
        notes.append(f"{rest} more changed group(s) in --json")
    if len(groups) > len(changed):
        notes.append(f"{len(groups) - len(changed)} group(s) unchanged")
    return out + ("\n(" + "; ".join(notes) + ")" if notes else "")
def format_three(pruned: Report, quantized: Report, label: str = "quantized") -> str:
    """Original, pruned and pruned+quantized side by side (both reports compare with the same original)."""
    o, p, q = pruned.original, pruned.pruned, quantized.pruned
    rows = [["", "original", "pruned", f"pruned+{label}", "pruned/orig", f"+{label}/orig"]]
    for key, name in (("params", "parameters"), ("macs", "MACs"), ("file_bytes", "file size (B)")):
        a, b, c = getattr(o, key), getattr(p, key), getattr(q, key)
        rows.append([name, _human(a), _human(b), _human(c), f"{b / a:.3f}" if a else "-", f"{c / a:.3f}" if a else "-"])
    for pp, qq in zip(pruned.providers, quantized.providers):
        if not (pp.available and qq.available):
            continue
        tag = f"[{pp.provider}] "
        if pp.accuracy_original is not None and qq.accuracy_pruned is not None:
            rows.append([tag + "accuracy", f"{pp.accuracy_original:.4f}", f"{pp.accuracy_pruned:.4f}",
                         f"{qq.accuracy_pruned:.4f}", f"{pp.accuracy_pruned - pp.accuracy_original:+.4f}",
                         f"{qq.accuracy_pruned - pp.accuracy_original:+.4f}"])
        if pp.outputs and qq.outputs:
            rows.append([tag + "cosine to original", "1", f"{min(c.cosine for c in pp.outputs):.6f}",
                         f"{min(c.cosine for c in qq.outputs):.6f}", "", ""])
        if pp.latency is not None and qq.latency is not None:
            lo, lp, lq = pp.latency.original_ms["median"], pp.latency.pruned_ms["median"], qq.latency.pruned_ms["median"]
            lq_rel = qq.latency.ratio  # against its own interleaved original run
            rows.append([tag + "latency (ms, median)", f"{lo:.3f}", f"{lp:.3f}", f"{lq:.3f}", f"{pp.latency.ratio:.3f}",
                         f"{lq_rel:.3f}"])
    status = "PASSED" if pruned.passed and quantized.passed else "FAILED"
    fails = [f"FAIL (pruned): {f}" for pr in pruned.providers for f in pr.failures] + \
            [f"FAIL (+{label}): {f}" for pr in quantized.providers for f in pr.failures]
    return "\n".join([f"original: {o.path}", f"pruned:   {p.path}", f"+{label}:  {q.path}",
                      f"inputs:   {pruned.inputs or '-'}", "", _table(rows), *fails, "", f"validation: {status}"])
