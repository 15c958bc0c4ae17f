"""Options defined once: the CLI and the library refuse the same values and combinations.

Each case is given both ways: as library keywords (the error names the keywords) and as a command
line (the same error, naming the flags; exit 1, one line).
"""
from __future__ import annotations

import argparse
import inspect
import os

import pytest

import onnxprune
from onnxprune import options
from onnxprune.cli import build_parser, main
from onnxprune.importance import CRITERIA, NORMALIZE, REDUCE
from onnxprune.options import OPTIONS, OptionError, resolve
from onnxprune.rewrite.recover import MODES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "models", "digits_calib.npz")

# (library keywords, command-line flags, what both messages say, the names the library message uses,
#  the flags the CLI message uses)
CASES = [
    (dict(plan="p.json", ratio=0.5), ["--plan", "p.json", "--ratio", "0.5"], "already says what to remove",
     ["plan", "ratio"], ["--plan", "--ratio"]),
    (dict(ratio=0.5, target_flops=0.6), ["--ratio", "0.5", "--target-flops", "0.6"], "only one of",
     ["ratio, target_flops"], ["--ratio, --target-flops"]),
    (dict(ratio=1.5), ["--ratio", "1.5"], "must be in [0, 1)", ["ratio 1.5"], ["--ratio 1.5"]),
    (dict(target_flops=0), ["--target-flops", "0"], "must be in (0, 1]", ["target_flops 0"], ["--target-flops 0"]),
    (dict(ratio=0.5, round_to=0), ["--ratio", "0.5", "--round-to", "0"], "must be ≥ 1", ["round_to"], ["--round-to"]),
    (dict(ratio=0.5, recover="lsq"), ["--ratio", "0.5", "--recover", "lsq"], "needs calibration data",
     ["give calib"], ["give --calib"]),
    (dict(ratio=0.5, rank_by="l1"), ["--ratio", "0.5", "--rank-by", "l1"], "only applies to criterion sensitivity",
     ["rank_by", "criterion"], ["--rank-by", "--criterion"]),
    (dict(ratio=0.5, hybrid_weights=(1, 0, 0)), ["--ratio", "0.5", "--hybrid-weights", "1,0,0"],
     "only applies to criterion hybrid", ["hybrid_weights"], ["--hybrid-weights"]),
    (dict(ratio=0.5, calib_batch=8), ["--ratio", "0.5", "--calib-batch", "8"], "applies to calibration data",
     ["calib_batch", "give calib"], ["--calib-batch", "give --calib"]),
    (dict(ratio=0.5, criterion="wanda"), ["--ratio", "0.5", "--criterion", "wanda"], "scores on calibration data",
     ["give calib"], ["give --calib"]),
    (dict(ratio=0.5, block_metric="error"), ["--ratio", "0.5", "--block-metric", "error"],
     "only applies to removing residual blocks", ["block_metric", "remove_blocks"], ["--block-metric",
                                                                                     "--remove-blocks"]),
    (dict(heads=1, head_ratio=0.5), ["--heads", "1", "--head-ratio", "0.5"], "only one of", ["heads, head_ratio"],
     ["--heads, --head-ratio"]),
    (dict(), [], "say how much to prune", ["ratio", "target_flops"], ["--ratio", "--target-flops"]),
    (dict(remove_dead=True, ratio=0.5), ["--remove-dead", "--ratio", "0.5"], "dead channels needs calibration",
     ["give calib"], ["give --calib"]),
]


@pytest.mark.parametrize("kw,argv,says,api_names,cli_names", CASES, ids=[c[2][:24] + str(i) for i, c in
                                                                          enumerate(CASES)])
def test_library_and_cli_refuse_the_same(tmp_path, capsys, kw, argv, says, api_names, cli_names):
    out = str(tmp_path / "x.onnx")
    with pytest.raises(OptionError) as e:
        onnxprune.prune(MODEL, out, **kw)
    msg = str(e.value)
    assert says in msg and all(n in msg for n in api_names), msg
    assert "--" not in msg, f"a library error names a CLI flag: {msg}"
    assert main(["prune", MODEL, "-o", out, *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert says in err and all(n in err for n in cli_names), err
    assert len(err.splitlines()) == 1
    assert not os.path.exists(out)


def test_plan_refuses_as_prune_does():
    with pytest.raises(OptionError, match="only one of ratio, target_params"):
        onnxprune.plan(MODEL, ratio=0.5, target_params=0.5)
    with pytest.raises(OptionError, match=r"round_to 0 must be ≥ 1"):
        onnxprune.plan(MODEL, ratio=0.5, round_to=0)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="ratoi"):
        onnxprune.prune(MODEL, "x.onnx", ratoi=0.5)
    with pytest.raises(TypeError, match="validate"):  # the library's prune does not validate (the CLI's does)
        onnxprune.prune(MODEL, "x.onnx", ratio=0.5, validate=True)


def test_types_are_checked():
    with pytest.raises(OptionError, match="round_to: expected an integer"):
        resolve("prune", {"ratio": 0.5, "round_to": 2.5})
    with pytest.raises(OptionError, match="criterion: unknown value 'l3'"):
        resolve("prune", {"ratio": 0.5, "criterion": "l3"})
    with pytest.raises(OptionError, match="hybrid_weights expects 3 values"):
        resolve("prune", {"criterion": "hybrid", "ratio": 0.5, "hybrid_weights": (1, 1), "gradients": "g.npz"})


def test_defaults_in_one_place():
    sig = inspect.signature(onnxprune.prune)
    by_name = {o.name: o for o in OPTIONS}
    assert sig.parameters["round_to"].default == by_name["round_to"].default == "auto"
    assert sig.parameters["calib_batch"].default == 32
    for name, p in sig.parameters.items():
        if p.kind is p.KEYWORD_ONLY:
            assert p.default == by_name[name].default
    r = resolve("prune", {"ratio": 0.5})
    assert r.calib_batch == 32 and r.criterion is None and r.given == {"ratio"}
    # the CLI shows the same default (argparse never holds one: absent flags are filled by resolve)
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["prune"]
    act = next(a for a in sub._actions if a.dest == "calib_batch")
    assert act.default is argparse.SUPPRESS and "(default 32)" in act.help
    # validate.compare_models keeps keyword defaults of its own: they must agree with the table
    from onnxprune.validate import compare_models

    cm = inspect.signature(compare_models).parameters
    for name in ("batch", "warmup", "repeats", "strict_providers", "labels_key"):
        assert cm[name].default == by_name[name].default, name


def test_cli_choices_come_from_the_registries():
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["prune"]
    choices = {a.dest: tuple(a.choices) for a in sub._actions if a.choices}
    assert choices["criterion"] == (*CRITERIA, "sensitivity")
    assert choices["rank_by"] == CRITERIA
    assert choices["reduce"] == tuple(REDUCE) and choices["normalize"] == tuple(NORMALIZE)
    assert choices["recover"] == MODES


def test_every_option_is_well_formed():
    flags = {}
    for o in OPTIONS:
        assert o.help and o.commands, o.name
        if isinstance(o.default, (int, float)) and o.range is not None:
            assert o.default in o.range, o.name
        for f in o.flags:
            assert f not in flags, f"{f} used by {flags.get(f)} and {o.name}"
            flags[f] = o.name


def test_old_and_new_spellings(tmp_path, capsys):
    """--ratio removes (alias --remove-ratio); --target-flops keeps (alias --keep-flops)."""
    p = build_parser()
    a = p.parse_args(["prune", MODEL, "-o", "x", "--remove-ratio", "0.3"])
    b = p.parse_args(["prune", MODEL, "-o", "x", "--ratio", "0.3"])
    assert options.from_namespace(a, "prune") == options.from_namespace(b, "prune") == {"ratio": 0.3}
    c = p.parse_args(["plan", MODEL, "-o", "x", "--keep-flops", "0.6"])
    assert options.from_namespace(c, "plan") == {"target_flops": 0.6}


def test_validation_options_need_validate(tmp_path, capsys):
    assert main(["prune", MODEL, "-o", str(tmp_path / "x.onnx"), "--ratio", "0.5", "--repeats", "3"]) == 1
    assert "validation options (--repeats) only apply with --validate" in capsys.readouterr().err


def test_sweep_options_checked_before_work(tmp_path, capsys):
    assert main(["sweep", MODEL, "-o", str(tmp_path / "s"), "--targets", "0.5,1.5"]) == 1
    assert "--targets 1.5 must be in (0, 1]" in capsys.readouterr().err
    assert main(["sweep", MODEL, "-o", str(tmp_path / "s"), "--targets", "0.5", "--recover", "lsq"]) == 1
    assert "needs calibration data: give --calib" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")
