"""Where results go: writability checked before work starts, text written atomically, signals
deferred while files are renamed into place, and never onto a file the input reads.

* :func:`check_output` — the folder exists and takes a new file, the target is not a folder; called
  by every writer (model, plan, sensitivity table, gradient record) *before* the long work.
* :func:`write_text` — a unique temporary file beside the target, then one rename.
* :func:`deferred_signals` — SIGINT/SIGTERM/SIGHUP that arrive while a result is renamed into
  place are held and re-delivered after it, so a signal leaves the old output or the new one.
* :func:`interrupt_on_signals` — SIGTERM and SIGHUP raise ``KeyboardInterrupt`` like Ctrl-C, so
  the ``finally`` blocks that remove temporary files run (the CLI installs it).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading

from .errors import OnnxPruneError

__all__ = ["check_output", "write_text", "deferred_signals", "interrupt_on_signals", "input_files",
           "refuse_input_files"]

log = logging.getLogger("onnxprune.outputs")

SIGNALS = tuple(getattr(signal, s) for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s))


def check_output(path: str | os.PathLike, what: str = "the output") -> str:
    """Refuse an output path that cannot be written, before any work: missing folder, a folder
    as the target, a folder that does not take new files. Returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise OnnxPruneError(f"{path}: is a folder; give a file name for {what}")
    if not os.path.isdir(folder):
        raise OnnxPruneError(f"{path}: folder {folder} does not exist; create it first")
    try:  # the only reliable test (ACLs, read-only mounts, root): create and remove a file
        with deferred_signals():  # a signal in between must not leave the probe behind
            fd, probe = tempfile.mkstemp(prefix=".onnxprune-probe-", dir=folder)
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        raise OnnxPruneError(f"{path}: cannot write into {folder} ({e.strerror}); choose a writable folder") from None
    return path


def write_text(path: str | os.PathLike, text: str | bytes, what: str = "the output") -> str:
    """Write ``text`` (or bytes) atomically: a unique temporary file in the same folder, then one rename."""
    path = check_output(path, what)
    tmp = None
    try:
        with deferred_signals():
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        with deferred_signals():
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT/SIGTERM/SIGHUP for the duration (main thread only) and re-deliver them after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {}
    for s in SIGNALS:
        try:
            old[s] = signal.signal(s, lambda signum, frame: pending.append(signum))
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupt_on_signals() -> None:
    """SIGTERM and SIGHUP raise ``KeyboardInterrupt`` (like SIGINT), so cleanup code runs; a signal
    the caller ignores (``nohup``) stays ignored."""
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) == signal.SIG_DFL:
            signal.signal(getattr(signal, name), _raise_interrupt)


def input_files(path: str, model=None) -> set[str]:
    """The real paths of every file an input model reads: the model and its external data."""
    files = {os.path.realpath(path)}
    if model is not None:
        import onnx_ir as ir

        ir_model = getattr(model, "ir", model)
        for t in _external_tensors(ir_model.graph):
            files.add(os.path.realpath(os.path.join(t.base_dir or os.path.dirname(path), t.location)))
    return files


def _external_tensors(graph):
    import onnx_ir as ir

    for v in graph.initializers.values():
        if isinstance(v.const_value, ir.ExternalTensor):
            yield v.const_value
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for a in node.attributes.values():
            if a.type == ir.AttributeType.TENSOR and isinstance(a.value, ir.ExternalTensor):
                yield a.value
            elif a.type == ir.AttributeType.TENSORS:
                yield from (t for t in a.value if isinstance(t, ir.ExternalTensor))
            elif a.type == ir.AttributeType.GRAPH:
                yield from (v.const_value for v in a.value.initializers.values()
                            if isinstance(v.const_value, ir.ExternalTensor))


def refuse_input_files(output: str, path: str, model=None) -> set[str]:
    """Refuse an output that is a file the input reads (the model or its external data, under any
    spelling or link). Returns those files, which the writer must also not name its data after."""
    files = input_files(path, model)
    if os.path.realpath(output) in files:
        raise OnnxPruneError(f"-o {output} is a file the input model reads; choose another output path "
                             "(the input is never modified)")
    return files
