"""onnxruntime sessions on named providers.

Two sessions timed in turn distort each other when each owns a spinning thread pool (idle
sessions' threads spin). Sessions made here never spin; a program that owns its process (the
CLI, the benchmarks) may also call :func:`use_global_thread_pool` first so all sessions share one
pool. That is opt-in because afterwards *every* onnxruntime session in the process must opt out
of per-session threads, which would break a library user's own sessions.

A provider asked for but not usable (no CUDA build, no driver) is reported, never silently
replaced by the CPU: :class:`ProviderUnavailable` carries the reason, which is onnxruntime's own
log text (e.g. ``libcublasLt.so.13: cannot open shared object file``), captured from the native
stderr while the session is created.

Providers are named by onnxruntime's full name (``TensorrtExecutionProvider``) or its short form
(the name without ``ExecutionProvider``, any case: ``cpu``, ``cuda``, ``tensorrt``, ``openvino``).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile

from ..errors import OnnxPruneError

__all__ = ["ProviderUnavailable", "make_session", "parse_providers", "provider_name", "use_global_thread_pool",
           "thread_count", "DEVICE_PROVIDERS"]

log = logging.getLogger("onnxprune.validate")
_SUFFIX = "ExecutionProvider"
_state: dict = {"global_pool": False, "threads": None}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
DEVICE_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")  # timed with IO binding


class ProviderUnavailable(Exception):
    """The provider cannot run here; the message says why."""


def _known() -> dict[str, str]:
    """Short name (lower case) -> onnxruntime's provider name, for every provider it knows of."""
    out = {}
    for ep in _ort().get_all_providers():
        out[ep.lower()] = ep
        out[ep[: -len(_SUFFIX)].lower() if ep.endswith(_SUFFIX) else ep.lower()] = ep
    return out


def provider_name(name: str) -> str:
    """onnxruntime's name of a provider given by short or full name (``cuda`` -> ``CUDAExecutionProvider``)."""
    known = _known()
    ep = known.get(name.strip().lower())
    if ep is None:
        short = sorted({k for k, v in known.items() if not k.endswith(_SUFFIX.lower())})
        raise OnnxPruneError(f"unknown provider '{name}'; onnxruntime knows {', '.join(short)} "
                             f"(short names, or full names such as CUDAExecutionProvider)")
    return ep


def parse_providers(spec: str) -> list[str]:
    """``"cpu,cuda"`` -> the short names, checked against onnxruntime's list of providers."""
    names = [p.strip() for p in spec.split(",") if p.strip()]
    if not names:
        raise OnnxPruneError("unknown provider (none given); use a comma list such as cpu,cuda")
    out = []
    for n in names:
        ep = provider_name(n)
        short = ep[: -len(_SUFFIX)].lower() if ep.endswith(_SUFFIX) else ep.lower()
        if short not in out:
            out.append(short)
    return out


def thread_count(threads: int | None = None) -> int:
    """Intra-op threads a session made here uses: the shared pool's, else ``threads``, else one per CPU."""
    if _state["global_pool"]:
        return int(_state["threads"])
    return int(threads or os.cpu_count() or 1)


@contextlib.contextmanager
def _native_stderr(sink: list[str]):
    """Capture what onnxruntime's C++ code writes to file descriptor 2 (its log) into ``sink``."""
    try:
        fd = 2
        saved = os.dup(fd)
    except OSError:  # no usable stderr (a daemon): nothing to capture
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))


def _ort_messages(text: str) -> str:
    """onnxruntime's error/warning lines, without colours, timestamps and source locations."""
    msgs = []
    for line in _ANSI.sub("", text).splitlines():
        if not line.strip() or line.startswith(("*****", "Falling back", " when using")):
            continue
        m = re.search(r"\[([EWF]):onnxruntime:[^\]]*\]\s*(.*)", line)
        body = m.group(2) if m else line.strip()
        body = re.sub(r"^\S+\.cc:\d+ \S+\]?\s*", "", body).strip()
        body = re.sub(r"/\S*/onnxruntime_src/\S+:\d+ [^\[]*?(\[|Please|$)", r"\1", body).strip()
        if body and body not in msgs:
            msgs.append(body)
    return " | ".join(msgs)


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
        _state["global_pool"], _state["threads"] = True, n
    except RuntimeError as e:  # environment already created in this process
        log.info("sessions keep their own thread pools: onnxruntime's environment exists already (%s)", e)
    return bool(_state["global_pool"])


def make_session(model: str | bytes, provider: str, *, optimize: bool = True, quiet: bool = False,
                 threads: int | None = None, profile_dir: str | None = None):
    """An InferenceSession on exactly ``provider`` (short or full name, see :func:`provider_name`).

    Args:
        threads: intra-op threads (ignored when all sessions share one pool; see :func:`thread_count`).
        profile_dir: turn onnxruntime's profiler on, writing its JSON into this folder.

    TensorRT sessions fall back to CUDA then CPU for the nodes TensorRT does not take.

    Raises:
        ProviderUnavailable: the provider is not in this onnxruntime build or failed to load; the
            message is onnxruntime's own text.
        OnnxPruneError: onnxruntime rejected the model (message names the cause).
    """
    ort = _ort()
    ep = provider_name(provider)
    if ep not in ort.get_available_providers():
        raise ProviderUnavailable(f"{ep} is not in this onnxruntime build (onnxruntime {ort.__version__} has "
                                  f"{', '.join(ort.get_available_providers())}); install a build with it")
    so = ort.SessionOptions()
    so.log_severity_level = 4 if quiet else 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if _state["global_pool"]:
        so.use_per_session_threads = False
    elif threads:
        so.intra_op_num_threads = int(threads)
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "ort_profile")
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = {"CPUExecutionProvider": [ep], "CUDAExecutionProvider": [ep, "CPUExecutionProvider"]}.get(
        ep, [ep, "CUDAExecutionProvider", "CPUExecutionProvider"])
    captured: list[str] = []
    try:
        if ep == "CPUExecutionProvider":
            sess = ort.InferenceSession(model, so, providers=providers)
        else:  # a provider that fails to load only says why in onnxruntime's log: keep it
            so.log_severity_level = min(so.log_severity_level, 2)
            printed = io.StringIO()  # onnxruntime's Python layer prints "EP Error" blocks to stdout
            with _native_stderr(captured), contextlib.redirect_stdout(printed):
                sess = ort.InferenceSession(model, so, providers=providers)
            captured.append(printed.getvalue())
    except Exception as e:  # onnxruntime raises its own exception types for a model it rejects
        msg = " ".join(str(e).split())[:300]
        raise OnnxPruneError(f"onnxruntime cannot load the model on {ep}: {msg}") from None
    if sess.get_providers()[0] != ep:
        why = _ort_messages("".join(captured)) or "onnxruntime logged no reason"
        raise ProviderUnavailable(f"{ep} failed to initialise; onnxruntime said: {why[:1000]}")
    if captured and captured[0].strip():
        log.debug("onnxruntime on %s: %s", ep, _ort_messages(captured[0]))
    return sess
