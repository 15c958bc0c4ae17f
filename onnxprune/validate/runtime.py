"""onnxruntime sessions on named providers, sharing one global thread pool.

Two sessions timed in turn distort each other when each owns a thread pool (idle sessions'
threads spin); sessions made here share one global pool when the process has not created an
ORT environment yet, and otherwise disable spinning.

A provider asked for but not usable (no CUDA build, no driver) is reported, never silently
replaced by the CPU: :class:`ProviderUnavailable` carries the reason.
"""
from __future__ import annotations

import os

from ..errors import OnnxPruneError

__all__ = ["PROVIDERS", "ProviderUnavailable", "make_session", "parse_providers"]

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_state = {"global_pool": None}


class ProviderUnavailable(Exception):
    """The provider cannot run here; the message says why."""


def parse_providers(spec: str) -> list[str]:
    names = [p.strip().lower() for p in spec.split(",") if p.strip()]
    bad = [p for p in names if p not in PROVIDERS]
    if bad or not names:
        raise OnnxPruneError(f"unknown provider(s) {', '.join(bad) or '(none)'}; use a comma list of "
                             f"{', '.join(PROVIDERS)}")
    return names


def _ort():
    import onnxruntime as ort

    return ort


def _use_global_pool(ort) -> bool:
    if _state["global_pool"] is None:
        try:
            threads = int(os.environ.get("ONNXPRUNE_THREADS", "0")) or (os.cpu_count() or 1)
            ort.set_global_thread_pool_sizes(threads, 1)
            _state["global_pool"] = True
        except Exception:  # environment already created in this process
            _state["global_pool"] = False
    return bool(_state["global_pool"])


def make_session(model: str | bytes, provider: str, *, optimize: bool = True):
    """An InferenceSession on exactly ``provider`` (a key of ``PROVIDERS``).

    Raises:
        ProviderUnavailable: the provider is not in this onnxruntime build or failed to load.
        OnnxPruneError: onnxruntime rejected the model (message names the cause).
    """
    ort = _ort()
    ep = PROVIDERS[provider]
    if ep not in ort.get_available_providers():
        raise ProviderUnavailable(f"{ep} is not in this onnxruntime build ({ort.__version__}); "
                                  "install onnxruntime-gpu with a matching CUDA")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if _use_global_pool(ort):
        so.use_per_session_threads = False
    else:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [ep] if ep == "CPUExecutionProvider" else [ep, "CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(model, so, providers=providers)
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise OnnxPruneError(f"onnxruntime cannot load the model on {ep}: {msg}") from None
    if sess.get_providers()[0] != ep:
        raise ProviderUnavailable(f"{ep} failed to initialise (CUDA/cuDNN libraries missing or no GPU); "
                                  f"the session fell back to {sess.get_providers()[0]}")
    return sess
