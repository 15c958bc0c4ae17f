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
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("inspect", help="channel groups, barriers and cost of a model")
    s.add_argument("model")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    options.add_arguments(s, "inspect")
    s.add_argument("--members", action="store_true", help="list each group's weights")

    s = sub.add_parser("plan", help="write a pruning plan (JSON) without changing the model")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="plan file to write")
    _planning(s, "plan")

    s = sub.add_parser("prune", help="prune a model (from options or an edited plan)")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="pruned model to write")
    s.add_argument("--save-plan", help="also write the plan used")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    options.add_arguments(s, "prune", groups=("planning", "calibration", "recovery"))
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
    return p


def _read_options(a) -> None:
    """``a.given``: the options typed on the command line; ``a.opts``: all of them, checked as the library does."""
    a.given = options.from_namespace(a, a.command)
    a.opts = options.resolve(a.command, a.given)


def _validate(a, original: str, pruned: str):
    from ..validate import Tolerances, compare_models, parse_tolerances
    from ..validate.runtime import parse_providers

    o = a.opts
    tol = Tolerances(parse_tolerances(o.atol, "--atol"), parse_tolerances(o.rtol, "--rtol"), o.min_cosine,
                     o.max_accuracy_drop)
    return compare_models(original, pruned, providers=parse_providers(o.providers), data=o.data,
                          seed=o.validate_seed, batch=o.batch, dims=o.dims, tol=tol, latency=not o.no_latency,
                          warmup=o.warmup, repeats=o.repeats, strict_providers=o.strict_providers,
                          labels_key=o.labels_key)


def _cmd_inspect(a) -> int:
    ins = api.inspect(a.model, protect=a.opts.protect, dims=a.opts.dims)
    d = ins.to_dict()
    if a.json:
        print(json.dumps(d, indent=1))
        return EXIT_OK
    c = ins.cost
    print(f"{a.model}: opset {ins.opset}, IR {ins.ir_version}, {ins.nodes} nodes, {c.params:,} parameters, "
          f"{c.flops:,} FLOPs ({c.macs:,} MACs){_at(c) or ' per sample'}")
    if c.unknown:
        print("cost not counted for: " + ", ".join(f"{op}×{n}" for op, n in sorted(c.unknown.items())))
    print(f"{len(d['groups'])} channel groups, {d['prunable_channels']} of {d['channels']} channels prunable\n")
    print(f"{'group':>5}  {'channels':>8}  {'prunable':>8}  name / reason")
    for g in d["groups"]:
        why = "" if g["prunable"] == g["channels"] else "  <- " + "; ".join(g["reasons"][:2])
        print(f"{g['group']:>5}  {g['channels']:>8}  {g['prunable']:>8}  {g['name']}{why}")
        if a.members:
            for mem in g["members"]:
                print(f"{'':>27}{mem}")
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
    return (f"{plan.n_removed} channels removed; parameters {b['params']:,} -> {f['params']:,} "
            f"({_frac(f['params'], b['params'])}), FLOPs {b['flops']:,} -> {f['flops']:,} "
            f"({_frac(f['flops'], b['flops'])})")


def _cmd_plan(a) -> int:
    plan = api.plan(a.model, **a.given)
    plan.save(a.output)
    print(f"plan written to {a.output}: {_plan_summary(plan)}")
    return EXIT_OK


def _cmd_prune(a) -> int:
    res = api.prune(a.model, a.output, **options.without(a.given, "validation"))
    if a.save_plan:
        res.plan.save(a.save_plan)
    b, f = res.before, res.after
    dead = sum(len(g.dead) for g in res.plan.groups)
    summary = {"output": res.output, "removed_channels": res.plan.n_removed, "dead_channels": dead,
               "removed_blocks": list(res.removed_blocks), "recovery": list(res.recovery),
               "before": b.as_dict(), "after": f.as_dict()}
    if not a.json:
        extra = f" ({dead} dead)" if dead else ""
        blocks = f", {len(res.removed_blocks)} residual blocks bypassed" if res.removed_blocks else ""
        print(f"wrote {res.output}: {res.plan.n_removed} channels removed{extra}{blocks}; parameters {b.params:,} -> "
              f"{f.params:,} ({_frac(f.params, b.params)}), FLOPs {b.flops:,} -> {f.flops:,} "
              f"({_frac(f.flops, b.flops)}){_at(b)}")
        if b.unknown:
            print("cost not counted for: " + ", ".join(f"{op}×{n}" for op, n in sorted(b.unknown.items())))
        if res.recovery:
            print(f"recovery ({a.opts.recover}): {len(res.recovery)} consumer(s) updated")
    code = EXIT_OK
    if a.opts.validate:
        from ..validate import format_report

        report = _validate(a, a.model, a.output)
        summary["validation"] = report.to_dict()
        if not a.json:
            print()
            print(format_report(report))
        code = EXIT_OK if report.passed else EXIT_VALIDATION
    if a.json:
        print(json.dumps(summary, indent=1))
    return code


def _cmd_validate(a) -> int:
    from ..validate import format_report

    report = _validate(a, a.original, a.pruned)
    print(json.dumps(report.to_dict(), indent=1) if a.json else format_report(report))
    return EXIT_OK if report.passed else EXIT_VALIDATION


def _cmd_sparsify(a) -> int:
    from ..unstructured import sparsify

    res = sparsify(a.model, a.output, gradients=a.gradients, ratio=a.ratio, threshold=a.threshold, by=a.by,
                   per_layer=a.per_layer)
    print(f"wrote {res.output}: {res.summary()}")
    return EXIT_OK


def _cmd_sensitivity(a) -> int:
    table = api.sensitivity(a.model, **a.given)
    if a.output:
        table.save(a.output)
    print(json.dumps(table.to_dict(), indent=1) if a.json else table.format())
    return EXIT_OK


def _cmd_sweep(a) -> int:
    from ..sweep import sweep

    res = sweep(a.model, a.output, **a.given)
    if a.json:
        print(json.dumps(res.to_dict(), indent=1))
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
            "sensitivity": _cmd_sensitivity, "sparsify": _cmd_sparsify}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # a process of our own: share one ORT thread pool between timed sessions
        from ..validate.runtime import use_global_thread_pool

        use_global_thread_pool()
    try:
        if args.command in options.COMMANDS:
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
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head & co.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
