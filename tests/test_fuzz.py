"""Bounded fuzzing in CI: mutated real and generated models through ``prune`` in-process.

Contract (onnxprune.testing.fuzz): a clean one-line error (exit 1, nothing written) or a valid
pruned model (full checker, onnxruntime loads it); never an exception, exit 3, a leftover
temporary file, or a write outside the output's folder. Long runs: ``scripts/fuzz.py --cases N``.
"""
from __future__ import annotations

import logging
import os
import random

import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from onnxprune.testing import archs
from onnxprune.testing.fuzz import fuzz_one

HERE = os.path.dirname(__file__)
SOURCES = {
    "digits_cnn": lambda: onnx.load(os.path.join(HERE, "..", "models", "digits_cnn.onnx")),
    "resnet18": lambda: archs.resnet(18, image=16, width=8),
    "mobilenetv2": lambda: archs.mobilenetv2(image=16, width=8),
    "unet": lambda: archs.unet(),
}
_CACHE: dict[str, onnx.ModelProto] = {}


def _model(name: str) -> onnx.ModelProto:
    if name not in _CACHE:
        _CACHE[name] = SOURCES[name]()
    return _CACHE[name]


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(source=st.sampled_from(sorted(SOURCES)), seed=st.integers(0, 2**32 - 1))
def test_mutated_models_keep_the_contract(tmp_path, source, seed):
    logging.disable(logging.CRITICAL)
    try:
        outcome, mutations = fuzz_one(_model(source), random.Random(seed), str(tmp_path / "case"))
    finally:
        logging.disable(logging.NOTSET)
    assert outcome.kind in ("error", "valid", "ort_input"), f"{source} seed {seed} {mutations}: {outcome.detail}"


@pytest.mark.parametrize("seed", range(4))
def test_unmutated_models_prune_validly(tmp_path, seed):
    """The harness itself: without mutations the outcome is a valid output (the check can pass)."""
    from onnxprune.testing.fuzz import run_case

    src = tmp_path / "in"
    out = tmp_path / "out"
    src.mkdir(), out.mkdir()
    name = sorted(SOURCES)[seed]
    onnx.save(_model(name), str(src / "m.onnx"))
    outcome = run_case(str(src / "m.onnx"), str(out), ["--ratio", "0.5"], watch=[str(src)])
    assert outcome.kind == "valid", outcome.detail
