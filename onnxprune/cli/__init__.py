"""Command line: ``onnxprune inspect | plan | prune | validate``.

Exit codes: 0 ok, 1 user error (one line on stderr, no traceback), 2 validation failed.
"""
from __future__ import annotations

import argparse
import json
import sys

from .. import __version__, api
from ..errors import OnnxPruneError
from ..importance import CRITERIA, NORMALIZE, REDUCE

__all__ = ["main"]

EXIT_OK, EXIT_USER, EXIT_VALIDATION = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors are user errors too: exit 1, one line
        self.exit(EXIT_USER, f"onnxprune: error: {message} (see '{self.prog} --help')\n")


def _planning(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("planning")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--ratio", type=float, help="fraction of channels to remove, e.g. 0.5")
    t.add_argument("--target-flops", type=float, help="fraction of the original FLOPs to keep, e.g. 0.6")
    t.add_argument("--target-params", type=float, help="fraction of the original parameters to keep")
    g.add_argument("--criterion", default="l2", choices=CRITERIA, help="channel importance (default l2)")
    g.add_argument("--mode", default="uniform", choices=("uniform", "global"),
                   help="same ratio in every group, or one global ranking (default uniform)")
    g.add_argument("--round-to", type=int, default=1, help="kept widths become multiples of N (e.g. 8 or 16)")
    g.add_argument("--min-channels", type=int, default=1, help="smallest kept width of a group")
    g.add_argument("--protect", action="append", default=[], metavar="GLOB",
                   help="keep every channel of nodes/constants matching this name glob (repeatable)")
    g.add_argument("--reduce", default="mean", choices=tuple(REDUCE), help="how a group's members combine")
    g.add_argument("--normalize", default="mean", choices=tuple(NORMALIZE), help="score scaling across groups")
    g.add_argument("--seed", type=int, default=0, help="seed for the random criterion")


def _validation(p: argparse.ArgumentParser, *, with_flag: bool) -> None:
    g = p.add_argument_group("validation")
    if with_flag:
        g.add_argument("--validate", action="store_true", help="compare the result with the input model")
    g.add_argument("--providers", default="cpu", help="comma list of cpu,cuda (default cpu)")
    g.add_argument("--data", help=".npz of inputs (first axis = samples) and optional 'labels'")
    g.add_argument("--labels-key", default="labels", help="name of the labels array in --data")
    g.add_argument("--batch", type=int, default=1, help="batch size of random inputs")
    g.add_argument("--dim", action="append", default=[], metavar="NAME=N", help="value of a named dynamic dim")
    g.add_argument("--atol", action="append", metavar="[OUTPUT:]X", help="fail above this absolute error")
    g.add_argument("--rtol", action="append", metavar="[OUTPUT:]X", help="relative tolerance with --atol")
    g.add_argument("--min-cosine", type=float, help="fail when an output's cosine similarity is lower")
    g.add_argument("--max-accuracy-drop", type=float, help="fail when accuracy drops more than this")
    g.add_argument("--repeats", type=int, default=30, help="timed runs per model (interleaved)")
    g.add_argument("--warmup", type=int, default=5, help="untimed runs per model first")
    g.add_argument("--no-latency", action="store_true", help="skip timing")
    g.add_argument("--strict-providers", action="store_true", help="an unavailable provider fails validation")
    g.add_argument("--validate-seed", type=int, default=0, help="seed of random inputs")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnxprune", description="Structural pruning of ONNX models, validated with onnxruntime.")
    p.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("inspect", help="channel groups, barriers and cost of a model")
    s.add_argument("model")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--protect", action="append", default=[], metavar="GLOB")
    s.add_argument("--members", action="store_true", help="list each group's weights")

    s = sub.add_parser("plan", help="write a pruning plan (JSON) without changing the model")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="plan file to write")
    _planning(s)

    s = sub.add_parser("prune", help="prune a model (from options or an edited plan)")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="pruned model to write")
    s.add_argument("--plan", help="apply this plan instead of planning")
    s.add_argument("--save-plan", help="also write the plan used")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _planning(s)
    _validation(s, with_flag=True)

    s = sub.add_parser("validate", help="compare a pruned model with its original")
    s.add_argument("original")
    s.add_argument("pruned")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _validation(s, with_flag=False)
    return p


def _planning_kwargs(a) -> dict:
    return dict(criterion=a.criterion, ratio=a.ratio, target_flops=a.target_flops, target_params=a.target_params,
                mode=a.mode, round_to=a.round_to, min_channels=a.min_channels, protect=a.protect,
                reduce=a.reduce, normalize=a.normalize, seed=a.seed)


def _dims(specs: list[str]) -> dict[str, int]:
    out = {}
    for s in specs:
        name, eq, value = s.partition("=")
        if not eq or not value.isdigit():
            raise OnnxPruneError(f"--dim '{s}': expected NAME=N, e.g. batch=4")
        out[name] = int(value)
    return out


def _validate(a, original: str, pruned: str):
    from ..validate import Tolerances, compare_models, parse_tolerances
    from ..validate.runtime import parse_providers

    tol = Tolerances(parse_tolerances(a.atol, "--atol"), parse_tolerances(a.rtol, "--rtol"), a.min_cosine,
                     a.max_accuracy_drop)
    return compare_models(original, pruned, providers=parse_providers(a.providers), data=a.data,
                          seed=a.validate_seed, batch=a.batch, dims=_dims(a.dim), tol=tol, latency=not a.no_latency,
                          warmup=a.warmup, repeats=a.repeats, strict_providers=a.strict_providers,
                          labels_key=a.labels_key)


def _cmd_inspect(a) -> int:
    ins = api.inspect(a.model, protect=a.protect)
    d = ins.to_dict()
    if a.json:
        print(json.dumps(d, indent=1))
        return EXIT_OK
    c = ins.cost
    print(f"{a.model}: opset {ins.opset}, IR {ins.ir_version}, {ins.nodes} nodes, {c.params:,} parameters, "
          f"{c.flops:,} FLOPs ({c.macs:,} MACs) per sample")
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
            f"({f['params'] / b['params']:.3f}), FLOPs {b['flops']:,} -> {f['flops']:,} "
            f"({f['flops'] / b['flops']:.3f})")


def _cmd_plan(a) -> int:
    plan = api.plan(a.model, **_planning_kwargs(a))
    plan.save(a.output)
    print(f"plan written to {a.output}: {_plan_summary(plan)}")
    return EXIT_OK


def _cmd_prune(a) -> int:
    if a.plan and (a.ratio is not None or a.target_flops is not None or a.target_params is not None):
        raise OnnxPruneError("--plan already says what to remove; drop --ratio/--target-flops/--target-params")
    if not a.plan and a.ratio is None and a.target_flops is None and a.target_params is None:
        raise OnnxPruneError("say how much to prune: --ratio, --target-flops, --target-params, or --plan FILE")
    kw = _planning_kwargs(a)
    res = api.prune(a.model, a.output, plan=a.plan, **kw)
    if a.save_plan:
        res.plan.save(a.save_plan)
    b, f = res.before, res.after
    summary = {"output": res.output, "removed_channels": res.plan.n_removed, "before": b.as_dict(),
               "after": f.as_dict()}
    if not a.json:
        print(f"wrote {res.output}: {res.plan.n_removed} channels removed; parameters {b.params:,} -> {f.params:,} "
              f"({f.params / b.params:.3f}), FLOPs {b.flops:,} -> {f.flops:,} ({f.flops / b.flops:.3f})")
    code = EXIT_OK
    if a.validate:
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


COMMANDS = {"inspect": _cmd_inspect, "plan": _cmd_plan, "prune": _cmd_prune, "validate": _cmd_validate}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except OnnxPruneError as e:  # user error: one line, no traceback
        print(f"onnxprune: error: {e}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        return 130
