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

EXIT_OK, EXIT_USER, EXIT_VALIDATION, EXIT_BUG = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors are user errors too: exit 1, one line
        self.exit(EXIT_USER, f"onnxprune: error: {message} (see '{self.prog} --help')\n")


def _planning(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("planning")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--ratio", type=float, help="fraction of channels to remove, e.g. 0.5")
    t.add_argument("--target-flops", type=float, help="fraction of the original FLOPs to keep, e.g. 0.6")
    t.add_argument("--target-params", type=float, help="fraction of the original parameters to keep")
    t.add_argument("--target-cosine", type=float, metavar="C", help="remove as much as keeps every output's cosine "
                   "(and decisions) >= C on held-back calibration samples (needs --calib)")
    t.add_argument("--target-error", type=float, metavar="E", help="remove as much as keeps every output's relative "
                   "L2 error <= E on held-back calibration samples (needs --calib)")
    g.add_argument("--heads", type=int, metavar="N", help="remove N attention heads from every head group "
                   "(--ratio and targets then apply to the other groups)")
    g.add_argument("--head-ratio", type=float, metavar="R", help="remove this fraction of every head group's heads")
    g.add_argument("--criterion", default=None, choices=(*CRITERIA, "sensitivity"),
                   help="channel importance (default l2; with --calib the measured best); activation/apoz/wanda/sensitivity need --calib, "
                        "taylor/fisher/grad need --gradients")
    g.add_argument("--mode", default="uniform", choices=("uniform", "global"),
                   help="same ratio in every group, or one global ranking (default uniform)")
    g.add_argument("--round-to", type=int, default=1, help="kept widths become multiples of N (e.g. 8 or 16)")
    g.add_argument("--min-channels", type=int, default=1, help="smallest kept width of a group")
    g.add_argument("--protect", action="append", default=[], metavar="GLOB",
                   help="keep every channel of nodes/constants matching this name glob (repeatable)")
    g.add_argument("--reduce", default="mean", choices=tuple(REDUCE), help="how a group's members combine")
    g.add_argument("--normalize", default="mean", choices=tuple(NORMALIZE), help="score scaling across groups")
    g.add_argument("--seed", type=int, default=0, help="seed for the random criterion")
    c = p.add_argument_group("calibration (scoring and recovery; never the data you judge the result on)")
    c.add_argument("--calib", help=".npz of input samples (first axis = samples) or a folder of images")
    c.add_argument("--image-spec", help="preprocessing of calibration images, e.g. "
                   "size=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW")
    c.add_argument("--calib-batch", type=int, default=32, help="calibration batch size")
    c.add_argument("--calib-limit", type=int, help="use at most this many calibration samples")
    c.add_argument("--remove-dead", dest="remove_dead", action="store_true", default=None,
                   help="remove channels constant on calibration data, folding them into biases (default with --calib)")
    c.add_argument("--keep-dead", dest="remove_dead", action="store_false", help="do not remove dead channels")
    c.add_argument("--dead-tol", type=float, default=1e-6, help="relative range under which a channel is constant")
    c.add_argument("--rank-by", default="l2", choices=CRITERIA, help="within-group ranking for --criterion sensitivity")
    c.add_argument("--gradients", help="gradient record (.npz from onnxprune.torch.record_gradients) for "
                   "taylor/fisher/grad/hybrid")
    c.add_argument("--hybrid-weights", default="1,1,1", metavar="M,G,A",
                   help="weights of magnitude, gradient and activation scores in --criterion hybrid")
    c.add_argument("--sensitivity-ratios", type=float, nargs="+", metavar="R",
                   help="removal ratios measured per group (default 0.2 0.4 0.6 0.8)")


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
    s.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="value of a named dynamic input dim for the concrete shapes costs are counted at")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--protect", action="append", default=[], metavar="GLOB")
    s.add_argument("--members", action="store_true", help="list each group's weights")

    s = sub.add_parser("plan", help="write a pruning plan (JSON) without changing the model")
    s.add_argument("model")
    s.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="value of a named dynamic input dim for the concrete shapes costs are counted at")
    s.add_argument("-o", "--output", required=True, help="plan file to write")
    _planning(s)

    s = sub.add_parser("prune", help="prune a model (from options or an edited plan)")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="pruned model to write")
    s.add_argument("--plan", help="apply this plan instead of planning")
    s.add_argument("--save-plan", help="also write the plan used")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _planning(s)
    r = s.add_argument_group("recovery and layer removal")
    r.add_argument("--recover", default=None, choices=("none", "bias", "lsq", "seq"),
                   help="bias compensation (data-free from BatchNorm without --calib), least-squares refits, or "
                        "sequential reconstruction (seq; the default with --calib, else none)")
    r.add_argument("--remove-blocks", type=int, default=0, metavar="N", help="bypass the N least important "
                   "residual blocks (needs --calib)")
    r.add_argument("--block-target-flops", type=float, metavar="F", help="bypass residual blocks, least important "
                   "first, until this fraction of the FLOPs is left (needs --calib)")
    r.add_argument("--block-metric", default="cosine", choices=("cosine", "error"), help="how blocks are ranked")
    _validation(s, with_flag=True)

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
    s.add_argument("--calib", required=True, help=".npz of input samples (optional 'labels') or image folder")
    s.add_argument("-o", "--output", help="write the table as JSON")
    s.add_argument("--rank-by", default="l2", choices=CRITERIA, help="which channels go first within a group")
    s.add_argument("--ratios", type=float, nargs="+", help="removal ratios (default 0.2 0.4 0.6 0.8)")
    s.add_argument("--image-spec")
    s.add_argument("--calib-batch", type=int, default=32)
    s.add_argument("--calib-limit", type=int)
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("validate", help="compare a pruned model with its original")
    s.add_argument("original")
    s.add_argument("pruned")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _validation(s, with_flag=False)
    return p


def _planning_kwargs(a) -> dict:
    return dict(criterion=a.criterion, ratio=a.ratio, target_flops=a.target_flops, target_params=a.target_params,
                mode=a.mode, round_to=a.round_to, min_channels=a.min_channels, protect=a.protect,
                reduce=a.reduce, normalize=a.normalize, seed=a.seed, heads=a.heads, head_ratio=a.head_ratio,
                calib=a.calib, image_spec=a.image_spec,
                calib_batch=a.calib_batch, calib_limit=a.calib_limit, remove_dead=a.remove_dead,
                dead_tol=a.dead_tol, rank_by=a.rank_by, sensitivity_ratios=a.sensitivity_ratios,
                gradients=a.gradients, hybrid_weights=_floats(a.hybrid_weights, "--hybrid-weights", 3),
                dims=_dims(a.dim), target_cosine=a.target_cosine, target_error=a.target_error)


def _floats(text: str, flag: str, n: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n or any(v < 0 for v in values):
        raise OnnxPruneError(f"{flag} '{text}': expected {n} non-negative numbers separated by commas")
    return values


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
    ins = api.inspect(a.model, protect=a.protect, dims=_dims(a.dim))
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
    plan = api.plan(a.model, **_planning_kwargs(a))
    plan.save(a.output)
    print(f"plan written to {a.output}: {_plan_summary(plan)}")
    _print_trajectory(plan)
    return EXIT_OK


def _print_trajectory(plan) -> None:
    st = plan.settings
    if "trajectory" not in st:
        return
    print(f"quality search for {st['quality_target']} on {st['check_samples']} held-back calibration samples "
          f"({st['fit_samples']} fit); {st['stopped']}:")
    print(f"  {'FLOPs kept':>10}  {'params kept':>11}  {'score':>8}  result  worst output")
    for s in st["trajectory"]:
        worst = min(s["outputs"], key=lambda q: min(q["cosine"], q["decision"] if q["decision"] is not None else 1),
                    default=None)
        w = (f"{worst['name']} ({worst['kind']}): cosine {worst['cosine']:.4f}, rel. error {worst['rel_error']:.4f}"
             + (f", decisions {worst['decision']:.4f}" if worst["decision"] is not None else "")) if worst else ""
        print(f"  {s['flops']:>10.3f}  {s['params']:>11.3f}  {s['score']:>8.4f}  {'met ' if s['met'] else 'MISS'}    {w}")


def _cmd_prune(a) -> int:
    if a.plan and (a.ratio is not None or a.target_flops is not None or a.target_params is not None):
        raise OnnxPruneError("--plan already says what to remove; drop --ratio/--target-flops/--target-params")
    if (not a.plan and a.ratio is None and a.target_flops is None and a.target_params is None
            and not a.remove_blocks and a.block_target_flops is None and a.heads is None and a.head_ratio is None
            and a.target_cosine is None and a.target_error is None):
        raise OnnxPruneError("say how much to prune: --ratio, --target-flops, --target-params, --target-cosine, "
                             "--target-error, --remove-blocks, or --plan FILE")
    kw = _planning_kwargs(a)
    res = api.prune(a.model, a.output, plan=a.plan, recover=a.recover, remove_blocks=a.remove_blocks,
                    block_metric=a.block_metric, block_target_flops=a.block_target_flops, **kw)
    if a.save_plan:
        res.plan.save(a.save_plan)
    b, f = res.before, res.after
    dead = sum(len(g.dead) for g in res.plan.groups)
    summary = {"output": res.output, "removed_channels": res.plan.n_removed, "dead_channels": dead,
               "search": {k: res.plan.settings[k] for k in ("quality_target", "trajectory", "stopped")
                          if k in res.plan.settings},
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
            print(f"recovery ({a.recover or 'default'}): {len(res.recovery)} consumer(s) updated")
        _print_trajectory(res.plan)
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


def _cmd_sparsify(a) -> int:
    from ..unstructured import sparsify

    res = sparsify(a.model, a.output, gradients=a.gradients, ratio=a.ratio, threshold=a.threshold, by=a.by,
                   per_layer=a.per_layer)
    print(f"wrote {res.output}: {res.summary()}")
    return EXIT_OK


def _cmd_sensitivity(a) -> int:
    table = api.sensitivity(a.model, calib=a.calib, rank_by=a.rank_by, ratios=a.ratios, calib_batch=a.calib_batch,
                            image_spec=a.image_spec, calib_limit=a.calib_limit)
    if a.output:
        table.save(a.output)
    print(json.dumps(table.to_dict(), indent=1) if a.json else table.format())
    return EXIT_OK


COMMANDS = {"inspect": _cmd_inspect, "plan": _cmd_plan, "prune": _cmd_prune, "validate": _cmd_validate,
            "sensitivity": _cmd_sensitivity, "sparsify": _cmd_sparsify}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # a process of our own: share one ORT thread pool between timed sessions
        from ..validate.runtime import use_global_thread_pool

        use_global_thread_pool()
    try:
        return COMMANDS[args.command](args)
    except OnnxPruneError as e:  # user error: one line, no traceback
        print(f"onnxprune: error: {e}", file=sys.stderr)
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
