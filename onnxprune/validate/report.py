"""Human-readable tables for a validation report (the CLI prints them; ``--json`` prints the dict)."""
from __future__ import annotations

from .compare import Report

__all__ = ["format_report"]


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


def format_report(r: Report) -> str:
    o, p = r.original, r.pruned
    rows = [["", "original", "pruned", "ratio"]]
    for key, label in (("params", "parameters"), ("macs", "MACs"), ("flops", "FLOPs"), ("file_bytes", "file size (B)")):
        a, b = getattr(o, key), getattr(p, key)
        rows.append([label, _human(a), _human(b), f"{b / a:.3f}" if a else "-"])
    out = [f"original: {o.path}", f"pruned:   {p.path}", f"inputs:   {r.inputs or '-'}", "", _table(rows)]
    for pr in r.providers:
        out.append("")
        if not pr.available:
            out.append(f"[{pr.provider}] UNAVAILABLE: {pr.reason}")
            continue
        out.append(f"[{pr.provider}]")
        if pr.outputs:
            rows = [["output", "shape", "max abs", "mean abs", "cosine", "top-1 agree", "status"]]
            for c in pr.outputs:
                rows.append([c.name, "x".join(map(str, c.shape_pruned)), f"{c.max_abs:.3g}", f"{c.mean_abs:.3g}",
                             f"{c.cosine:.6f}", "-" if c.top1_agreement is None else f"{c.top1_agreement:.3f}",
                             "ok" if c else "FAIL: " + "; ".join(c.failures)])
            out.append(_table(rows))
        if pr.accuracy_original is not None:
            out.append(f"accuracy: original {pr.accuracy_original:.4f}  pruned {pr.accuracy_pruned:.4f}  "
                       f"(change {pr.accuracy_pruned - pr.accuracy_original:+.4f})")
        if pr.latency is not None:
            la = pr.latency
            out.append(f"latency (ms, {la.repeats} interleaved runs after {la.warmup} warm-ups): "
                       f"original median {la.original_ms['median']:.3f} p90 {la.original_ms['p90']:.3f} | "
                       f"pruned median {la.pruned_ms['median']:.3f} p90 {la.pruned_ms['p90']:.3f} | "
                       f"ratio {la.ratio:.3f}")
        for f in pr.failures:
            out.append(f"FAIL: {f}")
    for f in r.failures:
        out.append(f"FAIL: {f}")
    out.append("")
    out.append("validation: " + ("PASSED" if r.passed else "FAILED"))
    return "\n".join(out)
