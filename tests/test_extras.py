"""Packaging: each extra brings what its code path imports, and has a README example that runs.

The full check (a fresh venv per extra, ``pip install .[extra]``, the README example) is
``scripts/check_extras.py``; ``ONNXPRUNE_CHECK_EXTRAS=1`` runs it here too (minutes per extra).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import check_extras  # noqa: E402


def _extras() -> dict[str, list[str]]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def _names(reqs: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~; \[]", r, maxsplit=1)[0].lower() for r in reqs}


# what each extra's code path imports (beyond the base dependencies)
NEEDS = {"torch": {"torch", "onnxscript"}, "images": {"pillow"}, "report": {"matplotlib"}, "ray": {"ray"}}


def test_each_extra_declares_what_its_code_imports():
    extras = _extras()
    for extra, needs in NEEDS.items():
        assert needs <= _names(extras[extra]), (extra, extras[extra])


def test_each_checked_extra_has_a_readme_example():
    examples = check_extras.readme_examples()
    assert set(check_extras.EXTRAS) <= set(examples)
    assert set(check_extras.EXTRAS) - {"base"} <= set(_extras())
    assert "onnx_path=" in examples["torch"][1]  # the README's record_gradients path that needed onnxscript


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ONNXPRUNE_CHECK_EXTRAS") != "1", reason="set ONNXPRUNE_CHECK_EXTRAS=1 (minutes)")
def test_extras_install_into_fresh_venvs(tmp_path):
    extras = os.environ.get("ONNXPRUNE_EXTRAS", ",".join(check_extras.EXTRAS))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "check_extras.py"), "--extras", extras,
                        "--work", str(tmp_path)], capture_output=True, text=True, timeout=3600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
