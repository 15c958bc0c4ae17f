"""Command line: ``onnxprune inspect | plan | prune | validate``.

Exit codes: 0 ok, 1 user error (one line on stderr, no traceback), 2 validation failed.
"""
from __future__ import annotations

import argparse
import json
import sys

from .. import __version__, api
from .. import options
from ..errors import OnnxPruneError
from ..options import OptionError
from ..outputs import check_output, interrupt_on_signals
from ..provenance import SCHEMA_VERSION

__all__ = ["main"]

EXIT_OK, EXIT_USER, EXIT_VALIDATION, EXIT_BUG = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors are user errors too: exit 1, one line
        self.exit(EXIT_USER, f"onnxprune: error: {message} (see '{self.prog} --help')\n")


def _planning(p: argparse.ArgumentParser, command: str) -> None:
    """Planning and calibration flags, from the one option table (``onnxprune.options``)."""
    options.add_arguments(p, command, groups=("planning", "calibration"))


def _validation(p: argparse.ArgumentParser, command: str) -> None:
    """Validation flags, from the one option table (``onnxprune.options``)."""
    options.add_arguments(p, command, groups=("validation",))


def _frac(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "n/a: nothing countable"


def _at(cost) -> str:
    if not cost.at:
        return ""
    from ..graph.shapes import format_shapes

    return " at input " + format_shapes(cost.at)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnxprune", description="Structural pruning of ONNX models, validated with onnxruntime.")
    p.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    v = p.add_mutually_exclusive_group()
    v.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr; no progress bars")
    v.add_argument("-v", "--verbose", action="store_true", help="debug log lines on stderr")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("inspect", help="channel groups, barriers and cost of a model")
    s.add_argument("model")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    options.add_arguments(s, "inspect")
    s.add_argument("--members", action="store_true", help="list each group's weights")
    s.add_argument("--hidden", action="store_true", help="analyse in hidden-size mode (LayerNorm/RMSNorm-coupled "
                   "residual streams as hidden groups, listed apart)")

    s = sub.add_parser("plan", help="write a pruning plan (JSON) without changing the model")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="plan file to write")
    s.add_argument("--json", action="store_true", help="machine-readable summary")
    options.add_arguments(s, "plan", groups=("planning", "calibration", "recovery", "deployment"))

    s = sub.add_parser("prune", help="prune a model (from options or an edited plan)")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="pruned model to write")
    s.add_argument("--save-plan", help="also write the plan used")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    options.add_arguments(s, "prune", groups=("planning", "calibration", "recovery", "deployment", "quantization",
                                                    "report"))
    _validation(s, "prune")

    s = sub.add_parser("sparsify", help="zero single weights with the smallest recorded gradients (size-only)")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--gradients", required=True, help="gradient record (.npz)")
    t = s.add_mutually_exclusive_group(required=True)
    t.add_argument("--ratio", type=float, help="fraction of weights to zero")
    t.add_argument("--threshold", type=float, help="zero weights scoring at most this")
    s.add_argument("--by", default="gw", choices=("g", "gw"), help="score: |g| or |w|·|g| (default)")
    s.add_argument("--per-layer", action="store_true", help="the ratio applies per tensor, not globally")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("sensitivity", help="measure each group's error at several removal ratios")
    s.add_argument("model")
    s.add_argument("-o", "--output", help="write the table as JSON")
    s.add_argument("--json", action="store_true")
    options.add_arguments(s, "sensitivity")

    s = sub.add_parser("sweep", help="prune at several FLOPs targets; judge, time and plot quality vs latency")
    s.add_argument("model")
    s.add_argument("-o", "--output", default="sweep", metavar="DIR",
                   help="folder for the points, table and plot (a rerun continues it; default ./sweep)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    options.add_arguments(s, "sweep")

    s = sub.add_parser("validate", help="compare a pruned model with its original")
    s.add_argument("original")
    s.add_argument("pruned")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _validation(s, "validate")
    options.add_arguments(s, "validate", groups=("planning",))  # --dim

    s = sub.add_parser("report", help="a before/after report with figures (self-contained HTML, or Markdown)")
    s.add_argument("original")
    s.add_argument("pruned")
    s.add_argument("-o", "--output", required=True, help="report file: .html (figures embedded) or .md")
    s.add_argument("--profile-runs", type=int, default=20, help="profiled runs per model for per-op latency")
    s.add_argument("--json", action="store_true", help="also print the report's data as JSON")
    _validation(s, "validate")
    options.add_arguments(s, "validate", groups=("planning",))  # --dim
    return p


def _read_options(a) -> None:
    """``a.given``: the options typed on the command line; ``a.opts``: all of them, checked as the library does."""
    command = "validate" if a.command == "report" else a.command  # a report validates first
    a.given = options.from_namespace(a, command)
    a.opts = options.resolve(command, a.given)


def _off(v):
    return None if v == "off" else v


def _validate(a, original: str, pruned: str, keep_errors: bool = False):
    from ..validate import Tolerances, compare_models, parse_tolerances
    from ..validate.runtime import parse_providers

    o = a.opts
    tol = Tolerances(parse_tolerances(o.atol, "--atol"), parse_tolerances(o.rtol, "--rtol"), _off(o.min_cosine),
                     _off(o.min_agreement), _off(o.max_accuracy_drop))
    return compare_models(original, pruned, providers=parse_providers(o.providers), data=o.data,
                          seed=o.validate_seed, batch=o.batch, dims=o.dims, tol=tol, latency=not o.no_latency,
                          warmup=o.warmup, repeats=o.repeats, strict_providers=o.strict_providers,
                          labels_key=o.labels_key, latency_batch=o.latency_batch, threads=o.threads,
                          keep_errors=keep_errors)


def _cmd_inspect(a) -> int:
    ins = api.inspect(a.model, protect=a.opts.protect, dims=a.opts.dims, hidden=a.hidden)
    d = ins.to_dict()
    if a.json:
        print(json.dumps({"schema_version": SCHEMA_VERSION, **d}, indent=1))
        return EXIT_OK
    c = ins.cost
    print(f"{a.model}: opset {ins.opset}, IR {ins.ir_version}, {ins.nodes} nodes, {c.params:,} parameters, "
          f"{c.flops:,} FLOPs ({c.macs:,} MACs){_at(c) or ' per sample'}")
    if c.unknown:
        print("cost not counted for: " + ", ".join(f"{op}×{n}" for op, n in sorted(c.unknown.items())))
    print(f"{len(d['groups'])} channel groups, {d['prunable_channels']} of {d['channels']} channels prunable exactly")
    for h in d["hidden_groups"]:
        print(f"hidden size: group {h['group']}, {h['prunable']} of {h['channels']} channels prunable "
              "(--hidden-ratio; norms re-normalise over the kept channels)")
    print()
    print(f"{'group':>5}  {'kind':<9}  {'channels':>8}  {'prunable':>8}  name / reason")
    for g in d["groups"]:
        why = "" if g["prunable"] == g["channels"] else "  <- " + "; ".join(g["reasons"][:2])
        tag = "[not exact] " if g["kind"] == "hidden" else ""
        print(f"{g['group']:>5}  {g['kind']:<9}  {g['channels']:>8}  {g['prunable']:>8}  {tag}{g['name']}{why}")
        if a.members:
            for mem in g["members"]:
                print(f"{'':>38}{mem}")
    if d["barriers"]:
        print("\nbarriers (channels through these nodes are kept):")
        for b in d["barriers"]:
            print(f"  {b['node']} ({b['op']}): {b['reason']}")
    return EXIT_OK


def _plan_summary(plan) -> str:
    e = plan.estimate
    b, f = e.get("before", {}), e.get("after", {})
    if not b:
        return f"{plan.n_removed} channels removed"
    lat = e.get("latency")
    lat = (f"; predicted latency on {lat['provider']} {lat['before_ms']:.3f} -> {lat['predicted_ms']:.3f} ms"
           if lat else "")
    return (f"{plan.n_removed} channels removed; parameters {b['params']:,} -> {f['params']:,} "
            f"({_frac(f['params'], b['params'])}), FLOPs {b['flops']:,} -> {f['flops']:,} "
            f"({_frac(f['flops'], b['flops'])}){lat}")


def _print_trajectory(plan) -> None:
    st = plan.settings
    if "trajectory" not in st:
        return
    print(f"quality search for {st['quality_target']} on {st['check_samples']} held-back calibration samples "
          f"({st['fit_samples']} fit); {st['stopped']}:")
    print(f"  {'phase':<9}  {'FLOPs kept':>10}  {'params kept':>11}  {'score':>8}  result  worst output")
    for s in st["trajectory"]:
        worst = min(s["outputs"], key=lambda q: min(q["cosine"], q["decision"] if q["decision"] is not None else 1),
                    default=None)
        w = (f"{worst['name']} ({worst['kind']}): cosine {worst['cosine']:.4f}, rel. error {worst['rel_error']:.4f}"
             + (f", decisions {worst['decision']:.4f}" if worst["decision"] is not None else "")) if worst else ""
        print(f"  {s.get('phase', 'global'):<9}  {s['flops']:>10.3f}  {s['params']:>11.3f}  {s['score']:>8.4f}  {'met ' if s['met'] else 'MISS'}    {w}")


def _cmd_plan(a) -> int:
    check_output(a.output, "the plan")
    plan = api.plan(a.model, **a.given)
    plan.save(a.output)
    if a.json:
        from ..provenance import plan_digest

        print(json.dumps({"schema_version": SCHEMA_VERSION, "output": a.output, "plan_digest": plan_digest(plan),
                          "criterion": plan.criterion, "removed_channels": plan.n_removed,
                          "groups": [{"group": g.group, "name": g.name, "before": g.size, "after": g.kept,
                                      "pinned": g.pinned} for g in plan.groups],
                          "before": plan.estimate.get("before"), "after": plan.estimate.get("after")}, indent=1))
    else:
        print(f"plan written to {a.output}: {_plan_summary(plan)}")
        _print_trajectory(plan)
        for g in plan.groups:
            if g.kind == "hidden" and g.remove:
                print(f"hidden size: {g.size} -> {g.kept} (group {g.group}; not exact: norms re-normalise over the "
                      "kept channels)")
    return EXIT_OK


def _prune_kwargs(a) -> dict:
    """``api.prune``'s options from the command line; with ``--save-plan``, one step unless asked (a plan
    applies to the input model only when made for it)."""
    kw = options.without(a.given, "validation", "quantization", "report")
    if a.save_plan and "steps" not in kw:
        kw["steps"] = 1
    return kw


def _removed(res) -> int:
    """Channels removed, over every step (a plan holds the last step's only)."""
    return res.plan.n_removed if res.steps == 1 else sum(g["before"] - g["after"] for g in res.groups)


def _cmd_prune(a) -> int:
    if a.save_plan:
        check_output(a.save_plan, "the plan")
        if (a.opts.get("steps") or 1) > 1:
            raise OptionError("--save-plan: with --steps N each step's plan is made for the step before's result, "
                              "none applies to the input model; save a plan with --steps 1 (or `onnxprune plan`)")
    if a.opts.report:
        check_output(a.opts.report, "the report")
    if a.opts.quantize:
        return _prune_quantize(a)
    res = api.prune(a.model, a.output, **_prune_kwargs(a))
    if a.save_plan:
        res.plan.save(a.save_plan)
    b, f = res.before, res.after
    dead = sum(len(g.dead) for g in res.plan.groups)
    removed = _removed(res)
    summary = {"schema_version": SCHEMA_VERSION, "output": res.output, "removed_channels": removed, "steps": res.steps,
               "dead_channels": dead, "removed_blocks": list(res.removed_blocks), "recovery": list(res.recovery),
               "before": b.as_dict(), "after": f.as_dict(), "groups": list(res.groups), "hidden": list(res.hidden),
               "norm_refits": list(res.norm_refits), "latency": res.latency,
               "search": {k: res.plan.settings[k] for k in ("quality_target", "trajectory", "stopped")
                          if k in res.plan.settings},
               "kept": True}
    if not a.json:
        extra = f" ({dead} dead)" if dead else ""
        blocks = f", {len(res.removed_blocks)} residual blocks bypassed" if res.removed_blocks else ""
        steps = f" in {res.steps} steps" if res.steps > 1 else ""
        print(f"wrote {res.output}: {removed} channels removed{steps}{extra}{blocks}; parameters {b.params:,} -> "
              f"{f.params:,} ({_frac(f.params, b.params)}), FLOPs {b.flops:,} -> {f.flops:,} "
              f"({_frac(f.flops, b.flops)}){_at(b)}")
        if b.unknown:
            print("cost not counted for: " + ", ".join(f"{op}×{n}" for op, n in sorted(b.unknown.items())))
        for h in res.hidden:
            print(f"hidden size: {h['channels']} -> {h['kept']} (group {h['group']}, {h['norm_sites']} norms "
                  "re-normalise over the kept channels; not exact)")
        if res.recovery:
            print(f"recovery ({a.opts.recover or (api.CALIB_RECOVER if a.opts.calib else 'none')}): "
                  f"{len(res.recovery)} consumer(s) updated")
        if res.latency:
            print(_latency_line(res.latency))
        if res.norm_refits:
            done = sum("refitted" in r for r in res.norm_refits)
            print(f"hidden size: {done} of {len(res.norm_refits)} norm(s) refitted (γ/β)")
        _print_trajectory(res.plan)
        from ..validate.report import format_groups

        print(format_groups(res.groups))
    code = EXIT_OK
    report = None
    if a.opts.validate:
        from ..validate import format_report

        report = _validate(a, a.model, a.output, keep_errors=bool(a.opts.report))
        summary["validation"] = report.to_dict()
        if not a.json:
            print()
            print(format_report(report))
        code = EXIT_OK if report.passed else EXIT_VALIDATION
    if a.opts.report:
        _write_report(a, a.model, a.output, a.opts.report, report)
    if code == EXIT_VALIDATION and not a.opts.keep_failed:
        from ..graph.io import remove_saved

        remove_saved(a.output)
        summary["kept"] = False
        if not a.json:
            print(f"removed {a.output} (validation failed; --keep-failed keeps it)")
    if a.json:
        print(json.dumps(summary, indent=1))
    return code


def _latency_line(d: dict) -> str:
    want = f", target ×{d['target_speedup']:.3f}" if d.get("target_speedup") else ""
    pred = (f"predicted {d['predicted_ms']:.3f} ms (×{d['predicted_speedup']:.3f}), " if "predicted_ms" in d
            else "")  # a quality-target result is timed, not predicted
    line = (f"latency on {d['provider']}: {pred}"
            f"measured {d['pruned_ms']:.3f} ms vs original {d['original_ms']:.3f} ms (×{d['speedup']:.3f}{want})")
    if d.get("slower"):
        line += " -- SLOWER than the original"
    return line


def _prune_quantize(a) -> int:
    """prune → quantize: the fp32 pruned model next to -o, the quantized one at -o, one validation table."""
    import os

    from ..quantize import fp32_path, quantize

    mid = fp32_path(a.output)
    res = api.prune(a.model, mid, **_prune_kwargs(a))
    if a.save_plan:
        res.plan.save(a.save_plan)
    o = a.opts
    q = quantize(mid, a.output, o.quantize, method=o.quant_method, calib=o.calib, calib_batch=o.calib_batch,
                 image_spec=o.image_spec, calib_limit=o.calib_limit)
    summary = {"schema_version": SCHEMA_VERSION, "output": a.output, "pruned_fp32": mid, "removed_channels": _removed(res),
               "quantization": q.as_dict(), "before": res.before.as_dict(), "after": res.after.as_dict(),
               "latency": res.latency}
    if not a.json:
        print(f"wrote {mid}: {_removed(res)} channels removed; FLOPs {res.before.flops:,} -> {res.after.flops:,} "
              f"({_frac(res.after.flops, res.before.flops)})")
        if res.latency:
            print(_latency_line(res.latency))
        print(f"wrote {a.output}: {q.summary()} ({os.path.getsize(a.output):,} bytes)")
    code = EXIT_OK
    if a.opts.validate:
        from ..validate import format_report
        from ..validate.report import format_three

        pruned = _validate(a, a.model, mid)
        quant = _validate(a, a.model, a.output)
        summary["validation"] = {"pruned": pruned.to_dict(), "quantized": quant.to_dict()}
        if not a.json:
            print()
            print(format_three(pruned, quant, o.quantize))
        code = EXIT_OK if pruned.passed and quant.passed else EXIT_VALIDATION
        if not a.json and not quant.passed:
            print(format_report(quant))
    if a.json:
        print(json.dumps(summary, indent=1))
    return code


def _cmd_validate(a) -> int:
    from ..validate import format_report

    report = _validate(a, a.original, a.pruned)
    print(json.dumps(report.to_dict(), indent=1) if a.json else format_report(report))
    return EXIT_OK if report.passed else EXIT_VALIDATION


def _write_report(a, original: str, pruned: str, output: str, validation=None) -> dict:
    from ..validate.visual import build_report, write_report

    data = build_report(original, pruned, validation=validation or _validate(a, original, pruned, keep_errors=True),
                        profile_runs=getattr(a, "profile_runs", 20), threads=a.opts.threads)
    write_report(data, output)
    if not getattr(a, "json", False):
        print(f"report written to {output}")
    return data


def _cmd_report(a) -> int:
    report = _validate(a, a.original, a.pruned, keep_errors=True)
    data = _write_report(a, a.original, a.pruned, a.output, report)
    if a.json:
        print(json.dumps({"schema_version": SCHEMA_VERSION, "output": a.output, **data["summary"]}, indent=1))
    return EXIT_OK if report.passed else EXIT_VALIDATION


def _cmd_sparsify(a) -> int:
    from ..unstructured import sparsify

    res = sparsify(a.model, a.output, gradients=a.gradients, ratio=a.ratio, threshold=a.threshold, by=a.by,
                   per_layer=a.per_layer)
    if a.json:
        print(json.dumps({"schema_version": SCHEMA_VERSION, "output": res.output, "zeroed": res.zeroed,
                          "total": res.total, "per_tensor": res.per_tensor,
                          "file_bytes": {"before": res.file_bytes[0], "after": res.file_bytes[1]},
                          "gzip_bytes": {"before": res.gzip_bytes[0], "after": res.gzip_bytes[1]}}, indent=1))
    else:
        print(f"wrote {res.output}: {res.summary()}")
    return EXIT_OK


def _cmd_sensitivity(a) -> int:
    if a.output:
        check_output(a.output, "the sensitivity table")
    table = api.sensitivity(a.model, **a.given)
    if a.output:
        table.save(a.output)
    print(json.dumps({"schema_version": SCHEMA_VERSION, **table.to_dict()}, indent=1) if a.json else table.format())
    return EXIT_OK


def _cmd_sweep(a) -> int:
    from ..sweep import sweep

    res = sweep(a.model, a.output, **a.given)
    if a.json:
        print(json.dumps({"schema_version": SCHEMA_VERSION, **res.to_dict()}, indent=1))
        return EXIT_OK
    print(f"{'target':>7} {'FLOPs':>6} {'params':>6} {res.quality:>9} {'ms':>8} {'latency':>7}  pareto")
    for r in res.rows:
        if "error" in r:
            print(f"{r['target']:>7g}  failed: {r['error']}")
            continue
        lat = r.get("latency") or {}
        print(f"{r['target']:>7g} {r['flops_ratio']:>6.3f} {r['params_ratio']:>6.3f} {r[res.quality]:>9.4f} "
              f"{lat.get('pruned_ms', float('nan')):>8.3f} {lat.get('ratio', float('nan')):>7.3f}  "
              f"{'*' if r['pareto'] else ''}")
    print(f"table: {a.output}/results.md (.csv, .json); plot: {res.plot or 'none (no timed point, or no matplotlib: the report extra)'}")
    return EXIT_OK


COMMANDS = {"sweep": _cmd_sweep, "inspect": _cmd_inspect, "plan": _cmd_plan, "prune": _cmd_prune, "validate": _cmd_validate,
            "sensitivity": _cmd_sensitivity, "sparsify": _cmd_sparsify, "report": _cmd_report}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (one line already on stderr), --help or --version
        return e.code if isinstance(e.code, int) else EXIT_USER
    from ..logs import configure

    configure(quiet=args.quiet, verbose=args.verbose)
    try:
        if argv is None:  # a process of our own: SIGTERM/SIGHUP clean up like Ctrl-C; one ORT thread pool
            from ..validate.runtime import use_global_thread_pool

            interrupt_on_signals()
            use_global_thread_pool(getattr(args, "threads", None))
        if args.command in options.COMMANDS or args.command == "report":
            _read_options(args)
        return COMMANDS[args.command](args)
    except OnnxPruneError as e:  # user error: one line, no traceback; options named by their flags
        msg = e.render(options.flag) if isinstance(e, OptionError) else str(e)
        print(f"onnxprune: error: {msg}", file=sys.stderr)
        return EXIT_USER
    except Exception as e:  # anything else is a bug in onnxprune: say so, traceback with --debug
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        print(f"onnxprune: internal error (a bug, please report it with the model): {type(e).__name__}: "
              f"{' '.join(str(e).split())[:300]}" + ("" if getattr(args, "debug", False) else
                                                     "; run again with --debug for the traceback"),
              file=sys.stderr)
        return EXIT_BUG
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: temporary files are gone, the old output stays
        print("onnxprune: interrupted; no output was changed unless it was complete", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
