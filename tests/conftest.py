"""Shared test helpers: build tiny graphs, prune them, and assert the consumer-zeroing oracle."""
from __future__ import annotations

import numpy as np
import pytest

from onnxprune.testing import check_oracle

TOL = 2e-5  # relative to the output scale; float32 sums in another order (seen: <1e-6)


def assert_oracle(proto, *, expect_removed: bool = True, **kw):
    """Prune and check structural removal == consumer-side zeroing; return the OracleResult."""
    res = check_oracle(proto, **kw)
    assert res.max_err <= TOL * max(1.0, res.scale), f"oracle error {res.max_err} (scale {res.scale})"
    if expect_removed:
        assert res.removed > 0, "nothing was removed: the test would be vacuous"
        # the zeroed reference really differs from the original: the oracle is not trivially met
        diffs = [float(np.abs(a - b).max()) for a, b in zip(res.original_out, res.reference_out)]
        assert max(diffs) > 1e-3, "zeroing the removed channels changed nothing"
    return res


def group_sizes(an) -> list[tuple[int, int]]:
    """(size, prunable) per group, in order."""
    return [(g.size, g.n_prunable) for g in an.groups]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True, scope="session")
def _latency_cache(tmp_path_factory):
    """Measured latency tables and alignment probes go to a per-run folder, not the user's cache."""
    import os

    old = os.environ.get("ONNXPRUNE_CACHE_DIR")
    os.environ["ONNXPRUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("onnxprune-cache"))
    yield
    if old is None:
        os.environ.pop("ONNXPRUNE_CACHE_DIR", None)
    else:
        os.environ["ONNXPRUNE_CACHE_DIR"] = old
