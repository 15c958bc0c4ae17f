"""onnxruntime sessions on named providers.

Two sessions timed in turn distort each other when each owns a spinning thread pool (idle
sessions' threads spin). Sessions made here never spin; a program that owns its process (the
CLI, the benchmarks) may also call :func:`use_global_thread_pool` first so all sessions share one
pool. That is opt-in because afterwards *every* onnxruntime session in the process must opt out
of per-session threads, which would break a library user's own sessions.

A provider asked for but not usable (no CUDA build, no driver) is reported, never silently
replaced by the CPU: :class:`ProviderUnavailable` carries the reason.
"""
from __future__ import annotations

import os

from ..errors import OnnxPruneError

__all__ = ["PROVIDERS", "DEVICE_PROVIDERS", "ProviderUnavailable", "make_session", "parse_providers", "use_global_thread_pool"]

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
DEVICE_PROVIDERS = ("cuda", "tensorrt")  # inputs/outputs bound on the GPU when timing (IO binding)
_state = {"global_pool": False}


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


def use_global_thread_pool(threads: int | None = None) -> bool:
    """Make every session of this process share one thread pool (call before any session).

    Returns False when onnxruntime's environment already exists (sessions then keep their own
    non-spinning pools).
    """
    if _state["global_pool"]:
        return True
    try:
        n = threads or int(os.environ.get("ONNXPRUNE_THREADS", "0")) or (os.cpu_count() or 1)
        _ort().set_global_thread_pool_sizes(n, 1)
        _state["global_pool"] = True
    except Exception:  # environment already created in this process
        pass
    return bool(_state["global_pool"])


def make_session(model: str | bytes, provider: str, *, optimize: bool = True, quiet: bool = False,
                 threads: int = 0):
    """An InferenceSession on exactly ``provider`` (a key of ``PROVIDERS``).

    ``threads`` > 0 sets the session's intra-op threads (ignored under the shared global pool).
    TensorRT sessions fall back to CUDA then CPU for the nodes TensorRT does not take.

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
    so.log_severity_level = 4 if quiet else 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if _state["global_pool"]:
        so.use_per_session_threads = False
    elif threads > 0:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = {"CPUExecutionProvider": [ep], "CUDAExecutionProvider": [ep, "CPUExecutionProvider"]}.get(
        ep, [ep, "CUDAExecutionProvider", "CPUExecutionProvider"])
    try:
        sess = ort.InferenceSession(model, so, providers=providers)
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise OnnxPruneError(f"onnxruntime cannot load the model on {ep}: {msg}") from None
    if sess.get_providers()[0] != ep:
        raise ProviderUnavailable(f"{ep} failed to initialise (GPU libraries such as CUDA/cuDNN/TensorRT missing, or no GPU); "
                                  f"the session fell back to {sess.get_providers()[0]}")
    return sess
