"""Every user option, defined once: name, type, default, range, choices, help, commands.

The CLI builds its flags from :data:`OPTIONS` (``add_arguments``) and the library's keyword
options are checked by the same table (``resolve``): defaults, types, ranges, choices (taken from
the registries, e.g. ``importance.CRITERIA``) and contradictions (:data:`RULES`) are the same
whichever way an option arrives. Adding an option is one :class:`Option` entry (plus a rule if it
contradicts another).

Direction of the sizes: ``ratio``, ``head_ratio`` and ``heads`` say how much to **remove**;
``target_flops``, ``target_params`` and ``block_target_flops`` say how much to **keep** (a
fraction of the original).

Library errors name options by their keyword (``target_flops``); the CLI renders the same error
with its flags (``--target-flops``): an :class:`OptionError` keeps its message as a template
whose ``{fields}`` are option names.

    >>> from onnxprune.options import resolve
    >>> resolve("plan", {"ratio": 0.5}).round_to
    1
    >>> resolve("plan", {"ratio": 0.5, "target_flops": 0.6})
    Traceback (most recent call last):
    ...
    onnxprune.options.OptionError: give only one of ratio, target_flops
"""
from __future__ import annotations

import argparse
import logging
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import PlanError

__all__ = ["Option", "Range", "OPTIONS", "RULES", "OptionError", "Resolved", "resolve", "check", "add_arguments", "flag",
           "option_names", "signature"]

log = logging.getLogger(__name__)

PLAN, PRUNE, SENS, SWEEP, VALIDATE = "plan", "prune", "sensitivity", "sweep", "validate"
PLANNING = frozenset({PLAN, PRUNE, SWEEP})  # commands that make a plan
CALIBRATED = frozenset({PLAN, PRUNE, SWEEP, SENS})
COMMANDS = frozenset({"inspect", PLAN, PRUNE, SENS, SWEEP, VALIDATE})  # the commands whose options live here
VALIDATING = frozenset({PRUNE, VALIDATE, SWEEP})


class OptionError(PlanError):
    """A bad option value or combination. ``str()`` names library keywords; ``render(flag)`` CLI flags.

    ``template`` holds ``{name}`` fields for option names (other braces doubled, as in
    ``str.format``).
    """

    def __init__(self, template: str, **values: Any):
        self.template, self.values = template, values
        super().__init__(self.render(lambda n: n))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.template) if f)

    def render(self, name_of: Callable[[str], str]) -> str:
        return self.template.format(**{n: name_of(n) for n in self.names})


@dataclass(frozen=True)
class Range:
    """A numeric interval; ``None`` is unbounded on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)))

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '≥'} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


FRACTION_REMOVED = Range(0, 1, hi_open=True)   # a share to remove: 1 would remove everything
FRACTION_KEPT = Range(0, 1, lo_open=True)      # a share to keep: 0 would keep nothing
AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)


def _criteria() -> tuple[str, ...]:
    from .importance import CRITERIA

    return (*CRITERIA, "sensitivity")


def _rankings() -> tuple[str, ...]:
    from .importance import CRITERIA

    return CRITERIA


def _reductions() -> tuple[str, ...]:
    from .importance import REDUCE

    return tuple(REDUCE)


def _normalisations() -> tuple[str, ...]:
    from .importance import NORMALIZE

    return tuple(NORMALIZE)


def _recoveries() -> tuple[str, ...]:
    from .rewrite.recover import MODES

    return MODES


def _modes() -> tuple[str, ...]:
    from .planner import MODES

    return MODES


def round_to_value(v):
    """``auto`` (the target's measured alignment, ``latency.resolve_round_to``) or an integer ≥ 1."""
    if isinstance(v, str):
        if v.strip().lower() == "auto":
            return "auto"
        try:
            v = int(v)
        except ValueError:
            raise ValueError(f"expected an integer ≥ 1 or 'auto', got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer ≥ 1 or 'auto', got {v!r}")
    return v  # the range check says when it is < 1


round_to_value.__name__ = "N|auto"


def limit_value(v):
    """A validation limit, or ``off`` (the limit switched off)."""
    if isinstance(v, str):
        if v.strip().lower() in ("off", "none"):
            return "off"
        try:
            return float(v)
        except ValueError:
            raise ValueError(f"expected a number or 'off', got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise ValueError(f"expected a number or 'off', got {v!r}")
    return float(v)


def _tolerance_default(name: str):
    from .validate.compare import DEFAULTS

    return getattr(DEFAULTS, name)


@dataclass(frozen=True)
class Option:
    """One option.

    Attributes:
        name: the library keyword (and the CLI's dest).
        type: converts one CLI word (and checks a library value): ``float``, ``int``, ``str``,
            ``bool``; ``None`` passes values through (objects such as a ``Plan``).
        default: used when the option is not given (``None``: "not given").
        help: one line; the CLI adds the default.
        commands: the commands (and library functions) that take it.
        group: the CLI argument group.
        range: allowed numeric values (every element for lists).
        choices: allowed values, or a function returning them (read lazily from a registry).
        flags: CLI spellings; the first is shown in errors, the others are aliases. Empty: the
            dashed name. ``()`` with ``cli=None``: library only.
        cli: how the CLI reads it: ``value``, ``flag`` (store_true), ``append`` (repeatable),
            ``many`` (nargs +), ``csv`` (comma list, ``count`` items), ``dims`` (``NAME=N``, repeatable),
            ``None`` (not on the command line).
        plans: shapes the plan (refused together with a ready ``plan``).
    """

    name: str
    type: Callable | None
    default: Any = None
    help: str = ""
    commands: frozenset[str] = PLANNING
    group: str = "planning"
    range: Range | None = None
    choices: Sequence | Callable[[], Sequence] | None = None
    flags: tuple[str, ...] = ()
    cli: str | None = "value"
    metavar: str | None = None
    count: int | None = None
    plans: bool = False

    @property
    def flag(self) -> str:
        return self.flags[0] if self.flags else "--" + self.name.replace("_", "-")

    def allowed(self) -> tuple | None:
        c = self.choices() if callable(self.choices) else self.choices
        return tuple(c) if c is not None else None


def _opt(name, type, default=None, help="", **kw) -> Option:
    return Option(name, type, default, help, **kw)


OPTIONS: tuple[Option, ...] = (
    # planning: how much, which channels
    _opt("plan", None, help="apply this plan (a Plan or its JSON path) instead of planning", commands=frozenset({PRUNE}),
         metavar="PLAN"),
    _opt("ratio", float, help="fraction of each group's channels to REMOVE, e.g. 0.5", range=FRACTION_REMOVED,
         plans=True, flags=("--ratio", "--remove-ratio"), metavar="R", commands=frozenset({PLAN, PRUNE})),
    _opt("target_flops", float, help="fraction of the original FLOPs to KEEP, e.g. 0.6", range=FRACTION_KEPT,
         plans=True, commands=frozenset({PLAN, PRUNE}), flags=("--target-flops", "--keep-flops"), metavar="F"),
    _opt("target_params", float, help="fraction of the original parameters to KEEP", range=FRACTION_KEPT,
         plans=True, flags=("--target-params", "--keep-params"), metavar="P", commands=frozenset({PLAN, PRUNE})),
    _opt("heads", int, help="REMOVE N attention heads from every head group (ratio/targets then apply to the "
         "other groups)", range=AT_LEAST_0, metavar="N", plans=True),
    _opt("head_ratio", float, help="REMOVE this fraction of every head group's heads", range=FRACTION_REMOVED,
         metavar="R", plans=True),
    _opt("hidden", int, help="hidden-size pruning: REMOVE N channels of the residual stream (LayerNorm/RMSNorm-"
         "coupled; not exact: norms re-normalise over the kept channels)", range=AT_LEAST_0, metavar="N", plans=True),
    _opt("hidden_ratio", float, help="hidden-size pruning: REMOVE this fraction of the residual stream's channels "
         "(ratio and targets apply to the other groups)", range=FRACTION_REMOVED, metavar="R", plans=True),
    _opt("hidden_compensate", bool, True, "rescale (data-free) or refit (with calibration data) the norms' γ/β "
         "after hidden-size pruning", cli=None, commands=frozenset({PRUNE})),
    _opt("criterion", str, None, "channel importance (default: l2; with calibration data the measured best: "
         "sensitivity ranked by obs for a FLOPs/params or quality target, else wanda); activation/apoz/wanda/sensitivity need calibration data, taylor/fisher/grad/hybrid a gradient "
         "record", choices=_criteria, plans=True),
    _opt("mode", str, "uniform", "same ratio in every group, or one global ranking", choices=_modes, plans=True),
    _opt("round_to", round_to_value, "auto", "kept widths become multiples of N; auto: the step the target's kernels "
         "are fastest at, measured once per machine and provider (8 or 16)", range=AT_LEAST_1, plans=True,
         metavar="N|auto"),
    _opt("min_channels", int, 1, "smallest kept width of a group", range=AT_LEAST_1, plans=True),
    _opt("protect", str, (), "keep every channel of nodes/constants matching this name glob (repeatable)",
         cli="append", metavar="GLOB", commands=PLANNING | {SENS, "inspect"}),
    _opt("reduce", str, "mean", "how a group's members combine", choices=_reductions, plans=True),
    _opt("normalize", str, "mean", "score scaling across groups", choices=_normalisations, plans=True),
    _opt("seed", int, 0, "seed for the random criterion", range=AT_LEAST_0, plans=True),
    _opt("dims", int, None, "value of a named dynamic input dim (NAME=N, repeatable) for the concrete shapes "
         "costs are counted at", flags=("--dim",), cli="dims", metavar="NAME=N", commands=PLANNING | {VALIDATE, "inspect"},
         range=AT_LEAST_1),
    # calibration
    _opt("calib", str, None, ".npz of input samples (first axis = samples) or a folder of images", group="calibration",
         commands=CALIBRATED),
    _opt("image_spec", str, None, "preprocessing of calibration images, e.g. "
         "size=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW", group="calibration",
         commands=CALIBRATED),
    _opt("calib_batch", int, 32, "calibration batch size", group="calibration", range=AT_LEAST_1, commands=CALIBRATED),
    _opt("calib_limit", int, None, "use at most this many calibration samples", group="calibration",
         range=AT_LEAST_1, commands=CALIBRATED),
    _opt("calib_mask", str, "auto", "input whose zeros mark padded positions, left out of statistics and refits "
         "(auto: an input named attention_mask/input_mask holding 0/1; none: keep every position)",
         group="calibration", commands=CALIBRATED, metavar="INPUT|auto|none", plans=True),
    _opt("remove_dead", bool, None, "remove channels constant on calibration data, folding them into biases "
         "(default: when calibration data is given); --keep-dead turns it off", group="calibration",
         cli="bool", flags=("--remove-dead", "--keep-dead"), plans=True),
    _opt("dead_tol", float, 1e-6, "relative range under which a channel is constant", group="calibration",
         range=AT_LEAST_0, plans=True),
    _opt("drop_nonfinite", bool, False, "skip calibration samples holding NaN/Inf (default: refuse such data)",
         group="calibration", cli="flag", commands=CALIBRATED),
    _opt("rank_by", str, "l2", "within-group ranking for criterion sensitivity (obs when sensitivity is the "
         "calibrated default)", group="calibration",
         choices=_rankings, commands=PLANNING | {SENS}, plans=True),
    _opt("gradients", None, None, "gradient record (.npz from onnxprune.torch.record_gradients) for "
         "taylor/fisher/grad/hybrid", group="calibration", plans=True, metavar="NPZ"),
    _opt("hybrid_weights", float, (1.0, 1.0, 1.0), "weights of magnitude, gradient and activation scores in "
         "criterion hybrid", group="calibration", cli="csv", count=3, range=AT_LEAST_0, metavar="M,G,A",
         plans=True),
    _opt("sensitivity_ratios", float, None, "removal ratios measured per group (default 0.2 0.4 0.6 0.8)",
         group="calibration", cli="many", range=Range(0, 1, lo_open=True, hi_open=True), metavar="R", plans=True),
    _opt("ratios", float, None, "removal ratios measured per group (default 0.2 0.4 0.6 0.8)",
         group="calibration", cli="many", range=Range(0, 1, lo_open=True, hi_open=True), metavar="R",
         commands=frozenset({SENS})),
    # recovery and layer removal
    _opt("recover", str, None, "bias compensation (data-free from BatchNorm without calibration data), "
         "least-squares refits of each consumer (lsq), or sequential reconstruction on the pruned model's own "
         "inputs (seq); default: seq with calibration data, else none", group="recovery", choices=_recoveries,
         commands=frozenset({PLAN, PRUNE, SWEEP})),
    _opt("steps", int, None, "reach a FLOPs/params target in N steps, each planned, pruned and reconstructed on "
         "the previous step's result: errors of the first step are measured before the next is planned. Default: 1, "
         "except with calibration data, a FLOPs/params target and the default criterion: 1 and 2 both made, the "
         "result closer to the original on the calibration data kept (2 steps is better on some models, worse on "
         "others)",
         group="recovery", range=Range(1), metavar="N", commands=frozenset({PRUNE})),
    _opt("remove_blocks", int, 0, "bypass the N least important residual blocks (needs calibration data)",
         group="recovery", range=AT_LEAST_0, metavar="N", commands=frozenset({PRUNE, SWEEP})),
    _opt("block_target_flops", float, None, "bypass residual blocks, least important first, until this fraction "
         "of the FLOPs is KEPT (needs calibration data)", group="recovery", range=FRACTION_KEPT, metavar="F",
         commands=frozenset({PRUNE})),
    _opt("block_metric", str, "cosine", "how residual blocks are ranked", group="recovery",
         choices=("cosine", "error"), commands=frozenset({PRUNE, SWEEP})),
    # validation (prune --validate, validate, and each point of a sweep)
    _opt("validate", bool, False, "compare the result with the input model", group="validation", cli="flag",
         commands=frozenset({PRUNE})),
    _opt("report", str, None, "also write a before/after report (.html with figures, or .md for CI logs); "
         "validates as --validate does", group="report", metavar="PATH", commands=frozenset({PRUNE})),
    _opt("keep_failed", bool, False, "keep the output when validation fails (by default it is removed)",
         group="validation", cli="flag", commands=frozenset({PRUNE})),
    _opt("providers", str, "cpu", "comma list of onnxruntime execution providers, short or full names: cpu, cuda, "
         "tensorrt, openvino, CUDAExecutionProvider...", group="validation",
         commands=frozenset({PRUNE, VALIDATE})),
    _opt("data", str, None, ".npz of inputs (first axis = samples) and optional labels; in a sweep, the held-out "
         "data each point is judged on", group="validation", commands=VALIDATING),
    _opt("labels_key", str, "labels", "name of the labels array in the data", group="validation",
         commands=VALIDATING),
    _opt("batch", int, 1, "batch size of random inputs", group="validation", range=AT_LEAST_1, commands=VALIDATING),
    _opt("atol", str, None, "fail above this absolute error (repeatable: X for all outputs, OUTPUT:X for one)",
         group="validation", cli="append", metavar="[OUTPUT:]X", commands=VALIDATING),
    _opt("rtol", str, None, "relative tolerance with atol (repeatable, as atol)", group="validation",
         cli="append", metavar="[OUTPUT:]X", commands=VALIDATING),
    _opt("min_cosine", limit_value, _tolerance_default("min_cosine"), "fail when an output's cosine similarity "
         "is lower ('off' switches it off)", group="validation", range=Range(-1, 1), commands=VALIDATING,
         metavar="X|off"),
    _opt("min_agreement", limit_value, _tolerance_default("min_agreement"), "fail when the top-1/decision "
         "agreement is lower ('off' switches it off)", group="validation", range=Range(0, 1), commands=VALIDATING,
         metavar="X|off"),
    _opt("max_accuracy_drop", limit_value, _tolerance_default("max_accuracy_drop"), "fail when top-1 accuracy "
         "(with labels) drops more than this fraction ('off' switches it off)", group="validation",
         range=Range(0, 1), commands=VALIDATING, metavar="X|off"),
    _opt("latency_batch", int, None, "samples per timed run, random or file inputs alike (default: batch, or the "
         "model's fixed batch)", group="validation", range=AT_LEAST_1, metavar="N", commands=VALIDATING),
    _opt("threads", int, None, "onnxruntime intra-op threads (default: one per CPU)", group="validation",
         range=AT_LEAST_1, metavar="N", commands=VALIDATING),
    _opt("repeats", int, 30, "timed runs per model (interleaved)", group="validation", range=AT_LEAST_1,
         commands=VALIDATING),
    _opt("warmup", int, 5, "untimed runs per model first", group="validation", range=AT_LEAST_0,
         commands=VALIDATING),
    _opt("no_latency", bool, False, "skip timing", group="validation", cli="flag", commands=frozenset({PRUNE, VALIDATE})),
    _opt("strict_providers", bool, False, "an unavailable provider fails validation", group="validation", cli="flag",
         commands=frozenset({PRUNE, VALIDATE})),
    _opt("validate_seed", int, 0, "seed of random inputs", group="validation", range=AT_LEAST_0,
         commands=VALIDATING),
    # quality targets (searched: prune, recover, measure on held-back calibration samples)
    _opt("target_cosine", float, None, "remove as much as keeps every output's cosine (and decisions) ≥ C on "
         "held-back calibration samples (needs calibration data)", range=Range(0, 1, lo_open=True), metavar="C",
         plans=True, commands=frozenset({PLAN, PRUNE})),
    _opt("target_error", float, None, "remove as much as keeps every output's relative L2 error ≤ E on held-back "
         "calibration samples (needs calibration data)", range=Range(0, 1, hi_open=True), metavar="E", plans=True,
         commands=frozenset({PLAN, PRUNE})),
    _opt("quality_search", str, "pergroup", "how a quality target is searched: one global FLOPs fraction "
         "(bisection), or that then a greedy per-group refinement (each candidate pruned, recovered and checked)",
         choices=("pergroup", "global"), plans=True, commands=frozenset({PLAN, PRUNE})),
    _opt("metric", None, None, "a quality measure metric(original_outputs, pruned_outputs) -> float, higher is "
         "better, searched like target_cosine", cli=None, plans=True, commands=frozenset({PLAN, PRUNE})),
    _opt("metric_target", float, None, "the value metric must reach", cli=None, plans=True,
         commands=frozenset({PLAN, PRUNE})),
    # deployment target (latency measured on it)
    _opt("target_latency", float, None, "plan to this latency (ms) on the target", group="deployment",
         range=Range(0, lo_open=True), metavar="MS", plans=True, commands=frozenset({PLAN, PRUNE})),
    _opt("target_speedup", float, None, "plan to X times faster than the original, measured on the target",
         group="deployment", range=Range(1), metavar="X", plans=True, commands=frozenset({PLAN, PRUNE})),
    _opt("never_slower", bool, False, "measure the target even where the default skips it (a pinned round_to, a "
         "model too small to time): cut only widths that save time, report a slower result", group="deployment",
         cli="flag", plans=True, commands=frozenset({PLAN, PRUNE})),
    _opt("allow_slower", bool, False, "do not measure the target for a ratio/FLOPs/params/quality target (by default "
         "widths that save no time are not cut and the result is timed against the original)", group="deployment",
         cli="flag", plans=True, commands=frozenset({PLAN, PRUNE})),
    _opt("latency_provider", str, "cpu", "provider the latency is measured on (cpu, cuda, tensorrt)",
         group="deployment", commands=frozenset({PLAN, PRUNE})),
    _opt("latency_threads", int, 0, "intra-op threads while measuring (0: all)", group="deployment",
         range=AT_LEAST_0, commands=frozenset({PLAN, PRUNE})),
    _opt("quantize", str, None, "quantize after pruning (int8: static QDQ with the calibration data, dynamic for "
         "MatMul-heavy models or without it; fp16: float16 weights and compute); the pruned fp32 model is written "
         "next to the output as *.fp32.onnx", group="quantization", choices=("int8", "fp16"),
         commands=frozenset({PRUNE})),
    _opt("quant_method", str, "auto", "int8 method (auto: static with calibration data unless MatMul-heavy)",
         group="quantization", choices=("auto", "static", "dynamic"), commands=frozenset({PRUNE})),
    # sweep
    _opt("targets", float, None, "FLOPs fractions to KEEP, one point each, e.g. 0.9,0.8,0.7", group="sweep",
         cli="csv", range=FRACTION_KEPT, metavar="F,F,...", commands=frozenset({SWEEP})),
    _opt("jobs", int, 1, "points pruned in parallel processes", group="sweep", range=AT_LEAST_1, metavar="N",
         commands=frozenset({SWEEP})),
    _opt("ray", str, None, "run the points on this Ray cluster (e.g. 127.0.0.1:6379; needs the 'ray' extra)",
         group="sweep", metavar="ADDRESS", commands=frozenset({SWEEP})),
    _opt("external_data", bool, None, "write weights to an external-data file (default: as the input)",
         group="recovery", cli=None, commands=frozenset({PRUNE})),
)

_BY_NAME: dict[str, Option] = {}
for _o in OPTIONS:
    if _o.name in _BY_NAME:
        raise ValueError(f"option {_o.name} is defined twice")
    _BY_NAME[_o.name] = _o
del _o


def option_names(command: str, skip_groups: Iterable[str] = ()) -> tuple[str, ...]:
    return tuple(o.name for o in OPTIONS if command in o.commands and o.group not in skip_groups)


def without(values: Mapping[str, Any], *groups: str) -> dict[str, Any]:
    """``values`` less the options of ``groups`` (e.g. the CLI's validation flags before ``api.prune``)."""
    return {k: v for k, v in values.items() if k not in _BY_NAME or _BY_NAME[k].group not in groups}


def flag(name: str) -> str:
    """The CLI spelling of an option (the name itself when it has none)."""
    o = _BY_NAME.get(name)
    return o.flag if o is not None and o.cli is not None else name


# ---------------------------------------------------------------------------------------------------------------
# contradictions: each rule sees the resolved values and the set of options that were given


@dataclass(frozen=True)
class Rule:
    """A check over several options: ``test(values, given)`` returns an error template or ``None``."""

    commands: frozenset[str]
    test: Callable[[Mapping[str, Any], frozenset[str]], str | None]


def _one_of(*names: str) -> Callable:
    def test(v, given):
        both = [n for n in names if n in given]
        return f"give only one of {', '.join('{' + n + '}' for n in both)}" if len(both) > 1 else None
    return test


def _needs(name: str, when: Callable[[Any], bool], other: str | tuple[str, ...], why: str) -> Callable:
    others = (other,) if isinstance(other, str) else other

    def test(v, given):
        if name in given and when(v[name]) and not any(o in given for o in others):
            alts = " or ".join("{" + o + "}" for o in others)
            shown = "" if isinstance(v[name], bool) else f" {v[name]}"
            return f"{{{name}}}{shown}: {why}: give {alts}"
        return None
    return test


def _only_with(name: str, other: str, when: Callable[[Any], bool], what: str) -> Callable:
    def test(v, given):
        if name in given and not when(v[other]):
            return f"{{{name}}} only applies to {what}; drop it or set {{{other}}}"
        return None
    return test


_NOT_STEPPED = frozenset({"hidden", "hidden_ratio", "heads", "head_ratio", "target_latency", "target_speedup"})
"""Options that say how much to remove in one plan (a width, a time): each step would apply them again."""


def _plan_given(v, given):
    clash = [n for n in given if _BY_NAME[n].plans]
    if "plan" in given and clash:
        return ("a ready {plan} already says what to remove; drop "
                + ", ".join("{" + n + "}" for n in clash))
    return None


def _how_much(v, given):
    sizes = ("plan", "ratio", "target_flops", "target_params", "remove_blocks", "block_target_flops", "heads",
             "head_ratio", "hidden", "hidden_ratio", "target_latency", "target_speedup", "target_cosine",
             "target_error", "metric")
    if not any(n in given for n in sizes) and v.get("criterion") != "sensitivity":
        names = [n for n in sizes if n in v]
        return "say how much to prune: give " + ", ".join("{" + n + "}" for n in names)
    return None


_DATA = ("activation", "apoz", "wanda", "obs", "sensitivity")
_GRADS = ("taylor", "fisher", "grad", "hybrid")

RULES: tuple[Rule, ...] = (
    Rule(PLANNING, _one_of("ratio", "target_flops", "target_params", "target_latency", "target_speedup",
                           "target_cosine", "target_error", "metric")),
    Rule(frozenset({PLAN, PRUNE}), lambda v, g: (
        "a quality target decides how much to remove; drop " + ", ".join("{" + n + "}" for n in sorted(
            g & {"heads", "head_ratio", "hidden", "hidden_ratio", "remove_blocks", "block_target_flops"}))
        if g & {"target_cosine", "target_error", "metric"}
        and g & {"heads", "head_ratio", "hidden", "hidden_ratio", "remove_blocks", "block_target_flops"} else None)),
    Rule(frozenset({PLAN, PRUNE}), _needs("target_cosine", lambda _: True, "calib",
                                          "a quality target is measured on held-back calibration samples")),
    Rule(frozenset({PLAN, PRUNE}), _needs("target_error", lambda _: True, "calib",
                                          "a quality target is measured on held-back calibration samples")),
    Rule(frozenset({PLAN, PRUNE}), _needs("metric", lambda _: True, "calib",
                                          "a quality target is measured on held-back calibration samples")),
    Rule(frozenset({PLAN, PRUNE}), _needs("quality_search", lambda _: True, ("target_cosine", "target_error", "metric"),
                                          "it says how a quality target is searched")),
    Rule(frozenset({PLAN, PRUNE}), lambda v, g: (
        "{metric} must be a callable metric(original_outputs, pruned_outputs) given with {metric_target}"
        if "metric" in g and (not callable(v["metric"]) or v.get("metric_target") is None) else None)),
    Rule(PLANNING, _one_of("hidden", "hidden_ratio")),
    Rule(frozenset({PLAN, PRUNE}), _one_of("never_slower", "allow_slower")),
    Rule(frozenset({PLAN, PRUNE}), lambda v, g: (
        "a latency target is planned against measured times; drop {allow_slower}"
        if v.get("allow_slower") and g & {"target_latency", "target_speedup"} else None)),
    Rule(PLANNING, _one_of("heads", "head_ratio")),
    Rule(frozenset({PRUNE}), _one_of("remove_blocks", "block_target_flops")),
    Rule(frozenset({PRUNE}), lambda v, g: (
        "{steps} > 1 reaches a {target_flops} or {target_params} step by step; give one of them"
        if (v.get("steps") or 1) > 1 and v.get("target_flops") is None and v.get("target_params") is None
        and not g & {"target_flops", "target_params"} else None)),
    Rule(frozenset({PRUNE}), lambda v, g: (
        "{steps} > 1 does not combine with " + ", ".join("{" + n + "}" for n in sorted(g & _NOT_STEPPED))
        + "; drop them or {steps}" if (v.get("steps") or 1) > 1 and g & _NOT_STEPPED else None)),
    Rule(frozenset({PRUNE}), _plan_given),
    Rule(frozenset({PLAN, PRUNE}), _how_much),
    Rule(PLANNING, _needs("criterion", lambda c: c in _DATA, "calib", "this criterion scores on calibration data")),
    Rule(PLANNING, _needs("criterion", lambda c: c in _GRADS, "gradients", "this criterion reads recorded gradients")),
    Rule(frozenset({PLAN, PRUNE}), _needs("criterion", lambda c: c == "sensitivity", ("target_flops", "target_params"),
                                          "criterion sensitivity allocates ratios for a target")),
    Rule(PLANNING, _only_with("rank_by", "criterion", lambda c: c == "sensitivity", "criterion sensitivity")),
    Rule(PLANNING, _only_with("sensitivity_ratios", "criterion", lambda c: c == "sensitivity",
                              "criterion sensitivity")),
    Rule(PLANNING, _only_with("hybrid_weights", "criterion", lambda c: c == "hybrid", "criterion hybrid")),
    Rule(PLANNING, _needs("remove_dead", bool, "calib", "removing dead channels needs calibration data")),
    Rule(PLANNING, _only_with("dead_tol", "remove_dead", lambda r: r is not False, "dead-channel removal")),
    Rule(CALIBRATED, _needs("drop_nonfinite", bool, "calib", "dropping samples applies to calibration data")),
    Rule(CALIBRATED, _needs("image_spec", lambda _: True, "calib", "an image spec preprocesses calibration images")),
    Rule(CALIBRATED, _needs("calib_limit", lambda _: True, "calib", "a sample limit applies to calibration data")),
    Rule(CALIBRATED, _needs("calib_batch", lambda _: True, "calib", "a batch size applies to calibration data")),
    Rule(CALIBRATED, _needs("calib_mask", lambda _: True, "calib", "a padding mask applies to calibration data")),
    Rule(frozenset({PLAN, PRUNE, SWEEP}), _needs("recover", lambda r: r in ("lsq", "seq"), "calib",
                                                 "this recovery needs calibration data")),
    Rule(frozenset({PRUNE, SWEEP}), _needs("remove_blocks", bool, "calib",
                                           "ranking residual blocks needs calibration data")),
    Rule(frozenset({PRUNE}), _needs("block_target_flops", lambda _: True, "calib",
                                    "ranking residual blocks needs calibration data")),
    Rule(frozenset({PRUNE, SWEEP}), lambda v, g: (
        "{block_metric} only applies to removing residual blocks; drop it or set {remove_blocks}"
        + (" or {block_target_flops}" if "block_target_flops" in v else "")
        if "block_metric" in g and not ({"remove_blocks", "block_target_flops"} & g) else None)),
    Rule(frozenset({PRUNE}), lambda v, g: (
        "validation options ({}) only apply with {{validate}}".format(
            ", ".join("{" + n + "}" for n in sorted(g) if _BY_NAME[n].group == "validation"))
        if not {"validate", "report"} & g and any(_BY_NAME[n].group == "validation" for n in g) else None)),
    Rule(frozenset({SWEEP}), lambda v, g: None if "targets" in g else "give the sweep's points: {targets}"),
    Rule(frozenset({SWEEP}), _one_of("jobs", "ray")),
    Rule(frozenset({SENS}), lambda v, g: None if "calib" in g else "measuring sensitivity needs calibration data: "
         "give {calib}"),
    Rule(frozenset({PRUNE}), lambda v, g: (
        "a gradient record fits the model before blocks are removed; prune blocks ({remove_blocks}, "
        "{block_target_flops}) and channels in two runs, recording {gradients} for the second"
        if "gradients" in g and {"remove_blocks", "block_target_flops"} & g else None)),
)


# ---------------------------------------------------------------------------------------------------------------
# resolving values


class Resolved(dict):
    """Option values by name (every option of the command, defaults filled) and ``given``: the ones set."""

    def __init__(self, values: dict, given: frozenset[str]):
        super().__init__(values)
        self.given = given

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def pick(self, names: Iterable[str]) -> dict:
        return {n: self[n] for n in names if n in self}


def _convert(o: Option, v: Any) -> Any:
    if o.type is None or v is None:
        return v
    if o.cli in ("append", "many", "csv"):
        if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
            if o.cli == "append" and isinstance(v, str):
                v = (v,)
            else:
                raise OptionError(f"{{{o.name}}} expects a list, got {v!r}")
        items = tuple(_scalar(o, x) for x in v)
        if o.cli == "many" and len(set(items)) != len(items):
            raise OptionError(f"{{{o.name}}} {' '.join(map(str, items))}: a value is repeated")
        if o.count is not None and len(items) != o.count:
            raise OptionError(f"{{{o.name}}} expects {o.count} values, got {len(items)}")
        return items
    if o.cli == "dims":
        if not isinstance(v, Mapping):
            raise OptionError(f"{{{o.name}}} expects a mapping of dim names to sizes, got {v!r}")
        out = {}
        for k, x in v.items():
            try:
                out[str(k)] = _scalar(o, x)
            except OptionError as e:
                if o.range is not None and isinstance(x, (int, float)) and x not in o.range:
                    raise OptionError(f"{{{o.name}}} {k}={x} must be {o.range}") from None
                raise
        return out
    return _scalar(o, v)


def _scalar(o: Option, v: Any) -> Any:
    t = o.type
    if t is bool:
        if not isinstance(v, bool):
            raise OptionError(f"{{{o.name}}} expects True or False, got {v!r}")
        return v
    if t in (int, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (t is int and not float(v).is_integer()):
            raise OptionError(f"{{{o.name}}} expects {'an integer' if t is int else 'a number'}, got {v!r}")
        v = t(v)
        if v != v:
            raise OptionError(f"{{{o.name}}} is NaN")
    elif t is str and not isinstance(v, str):
        raise OptionError(f"{{{o.name}}} expects a string, got {v!r}")
    elif t not in (str, int, float, bool):  # a value type of its own (round_to_value, limit_value)
        try:
            v = t(v)
        except (TypeError, ValueError) as e:
            raise OptionError(f"{{{o.name}}}: {e}") from None
        if not isinstance(v, (int, float)):
            return v
    if o.range is not None and v not in o.range:
        raise OptionError(f"{{{o.name}}} {v:g} must be {o.range}" + _why(o))
    allowed = o.allowed()
    if allowed is not None and v not in allowed:
        raise OptionError(f"{{{o.name}}}: unknown value {v!r}; choose one of {', '.join(map(str, allowed))}")
    return v


def check(name: str, value: Any) -> Any:
    """One option's value checked (type, range, choices) and converted, as :func:`resolve` does.

    For library functions outside the table's commands that take the same values (e.g.
    ``validate.compare_models``'s ``batch``), so that each range is written once.
    """
    return _convert(_BY_NAME[name], value)


def _why(o: Option) -> str:
    if o.range is FRACTION_REMOVED:
        return ": the fraction to remove"
    if o.range is FRACTION_KEPT:
        return ": the fraction of the original to keep"
    return ""


def resolve(command: str, kwargs: Mapping[str, Any], *, extra: Iterable[str] = (),
            skip_groups: Iterable[str] = ()) -> Resolved:
    """Check a command's options and fill in defaults.

    An option counts as *given* when its value is not ``None`` and differs from its default.

    Args:
        command: ``plan``, ``prune``, ``sweep``, ``sensitivity`` or ``validate``.
        kwargs: option values by name.
        extra: further names the caller handles itself (passed through unchecked).
        skip_groups: option groups the caller does not take (the library's ``prune`` does not validate).

    Raises:
        TypeError: an option the command does not take (as Python does for a bad keyword).
        OptionError: a bad value or a contradiction.
    """
    names = option_names(command, skip_groups)
    unknown = [k for k in kwargs if k not in names and k not in extra]
    if unknown:
        raise TypeError(f"{command}() got unexpected option(s) {', '.join(unknown)}; it takes: {', '.join(names)}")
    values, given = {}, set()
    for n in names:
        o = _BY_NAME[n]
        v = kwargs.get(n)
        if v is None:
            values[n] = o.default
            continue
        v = _convert(o, v)
        values[n] = v
        if v != o.default:
            given.add(n)
    for k in extra:
        if k in kwargs:
            values[k] = kwargs[k]
    g = frozenset(given)
    for rule in RULES:
        if command in rule.commands:
            msg = rule.test(values, g)
            if msg:
                raise OptionError(msg)
    log.debug("%s options given: %s", command, {n: values[n] for n in sorted(g)})
    return Resolved(values, g)


def signature(command: str, *leading: str, skip_groups: Iterable[str] = ()):
    """An ``inspect.Signature`` for a library function taking ``command``'s options as keywords."""
    import inspect

    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in leading]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=_BY_NAME[n].default)
               for n in option_names(command, skip_groups)]
    return inspect.Signature(params)


# ---------------------------------------------------------------------------------------------------------------
# the command line


_GROUP_TITLES = {
    "planning": "planning (--ratio and --heads REMOVE a fraction/count; --target-* KEEP a fraction)",
    "calibration": "calibration (scoring and recovery; never the data you judge the result on)",
    "recovery": "recovery and layer removal",
    "validation": "validation",
    "sweep": "sweep",
    "deployment": "deployment target (latency measured on it, cached under $XDG_CACHE_HOME/onnxprune)",
    "quantization": "quantization after pruning",
    "report": "report",
}


def _word(o: Option) -> Callable[[str], Any]:
    """argparse type: one CLI word → value, or a one-line error naming the flag."""
    t = o.type

    def parse(text: str):
        if o.cli == "csv":
            try:
                return tuple(t(x) for x in text.split(","))
            except ValueError:
                raise argparse.ArgumentTypeError(f"'{text}': expected numbers separated by commas") from None
        if o.cli == "dims":
            name, eq, value = text.partition("=")
            if not eq or not value.isdigit():
                raise argparse.ArgumentTypeError(f"'{text}': expected NAME=N, e.g. batch=4")
            return name, int(value)
        try:
            return t(text) if t is not None else text
        except ValueError as e:
            if t not in (int, float):
                raise argparse.ArgumentTypeError(str(e)) from None
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if t is int else 'a number'}") from None
    parse.__name__ = o.name
    return parse


def _help(o: Option) -> str:
    h = o.help
    if o.default not in (None, (), False) and o.cli not in ("bool",):
        d = ",".join(f"{x:g}" for x in o.default) if isinstance(o.default, tuple) else o.default
        h += f" (default {d})"
    if o.range is not None:
        h += f"; {o.range}"
    return h.replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser, command: str, groups: Iterable[str] | None = None,
                  skip: Iterable[str] = ()) -> None:
    """Add ``command``'s options (of ``groups``, default all) to ``parser``; values not given are absent.

    Absent options get their defaults from :func:`resolve` (via :func:`from_namespace`), so that
    only what the user typed counts as given.
    """
    made: dict[str, argparse._ArgumentGroup] = {}
    skip = set(skip)
    for o in OPTIONS:
        if command not in o.commands or o.cli is None or o.name in skip or (groups is not None and o.group not in groups):
            continue
        g = made.get(o.group)
        if g is None:
            g = made[o.group] = parser.add_argument_group(_GROUP_TITLES.get(o.group, o.group))
        kw: dict[str, Any] = dict(dest=o.name, default=argparse.SUPPRESS, help=_help(o))
        if o.cli == "bool":
            on, off = o.flags
            g.add_argument(on, action="store_true", **kw)
            g.add_argument(off, action="store_false", dest=o.name, default=argparse.SUPPRESS,
                           help=f"the opposite of {on}")
            continue
        if o.metavar:
            kw["metavar"] = o.metavar
        allowed = o.allowed()
        if allowed is not None:
            kw["choices"] = allowed
        if o.cli == "flag":
            kw["action"] = "store_true"
        else:
            kw["type"] = _word(o)
            if o.cli in ("append", "dims"):
                kw["action"] = "append"
            elif o.cli == "many":
                kw["nargs"] = "+"
        flags = o.flags or (o.flag,)
        g.add_argument(*flags, **kw)


def from_namespace(ns: argparse.Namespace, command: str) -> dict[str, Any]:
    """The options a parsed command line gave (``dims`` pairs become a dict)."""
    out = {}
    for n in option_names(command):
        if hasattr(ns, n):
            v = getattr(ns, n)
            out[n] = dict(v) if _BY_NAME[n].cli == "dims" else v
    return out
