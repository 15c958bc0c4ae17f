"""Quantize a (pruned) model with onnxruntime's own tools: int8 (static QDQ or dynamic) or fp16.

* ``int8`` static (default with calibration data): ``onnxruntime.quantization.quantize_static``
  in QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops, int8 weights per output
  channel, int8 activations, MinMax calibration) on the same calibration data pruning used, fed
  through a ``CalibrationDataReader``. A QDQ model can be pruned again (``rules/quant.py``).
* ``int8`` dynamic (MatMul-heavy models, i.e. more MACs in MatMul/Gemm than in convolutions, or
  no calibration data): ``quantize_dynamic``: int8 weights, activations quantized at run time.
* ``fp16``: ``onnxruntime.transformers.float16.convert_float_to_float16`` (ships with
  onnxruntime) with float32 inputs and outputs kept.

The model is first pre-processed (``quant_pre_process``: shape inference and onnxruntime's basic
graph optimisations, which fold BatchNorm into the convolutions) where that succeeds.
onnxruntime's quantizer writes augmented and temporary models; here they all go to a private
temporary folder inside the output's folder, removed afterwards, so nothing is written elsewhere.
The result is saved with the checked, atomic ``graph.save_model`` (IR ≤ 10).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass

from .errors import OnnxPruneError

__all__ = ["MODES", "QuantResult", "fp32_path", "quantize"]

log = logging.getLogger(__name__)

MODES = ("int8", "fp16")
METHODS = ("auto", "static", "dynamic")


@dataclass(frozen=True)
class QuantResult:
    output: str
    mode: str
    method: str  # static-qdq, dynamic or fp16
    bytes_before: int
    bytes_after: int
    preprocessed: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.mode} ({self.method}), file {self.bytes_before:,} -> {self.bytes_after:,} bytes "
                f"({self.bytes_after / max(self.bytes_before, 1):.3f})")


def fp32_path(output: str) -> str:
    """Where ``prune --quantize`` keeps the float pruned model: ``x.onnx`` -> ``x.fp32.onnx``."""
    root, ext = os.path.splitext(output)
    return f"{root}.fp32{ext or '.onnx'}"


@contextlib.contextmanager
def _private_tmp(folder: str):
    """A temporary folder inside ``folder``; ``tempfile`` uses it while the block runs."""
    d = tempfile.mkdtemp(prefix=".onnxprune-quant-", dir=folder)
    saved = tempfile.tempdir
    tempfile.tempdir = d
    try:
        yield d
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(d, ignore_errors=True)


class _Reader:
    """``CalibrationDataReader`` over onnxprune's calibration batches."""

    def __init__(self, calibration) -> None:
        self._calib = calibration
        self._it = iter(calibration.batches())

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._calib.batches())


def _matmul_heavy(model) -> bool:
    from .cost import node_cost

    shape_of = {k: tuple(d if isinstance(d, int) else 1 for d in v) for k, v in model.shapes.items()}.get
    mm = conv = 0
    for n in model.graph:
        c = node_cost(model, n, shape_of)
        if c is None:
            continue
        if n.op_type in ("MatMul", "Gemm"):
            mm += c[0]
        elif n.op_type in ("Conv", "ConvTranspose"):
            conv += c[0]
    return mm > conv


def quantize(src: str, output: str, mode: str = "int8", *, method: str = "auto", calib: str | None = None,
             calib_batch: int = 32, image_spec: str | None = None, calib_limit: int | None = None,
             per_channel: bool = True) -> QuantResult:
    """Quantize ``src`` into ``output``.

    Args:
        src: a float model (typically the pruned one).
        output: where to write the quantized model (not ``src``).
        mode: ``int8`` or ``fp16``.
        method: int8 only: ``static`` (QDQ, needs ``calib``), ``dynamic``, or ``auto`` (static with
            ``calib`` unless the model is MatMul-heavy).
        calib, calib_batch, image_spec, calib_limit: calibration data, as for ``prune``.
        per_channel: int8 weights with one scale per output channel.

    Raises:
        OnnxPruneError: bad options, or onnxruntime's quantizer failing (its message, one line).
    """
    from .graph import load_model, save_model

    if mode not in MODES:
        raise OnnxPruneError(f"unknown quantization '{mode}'; use one of {', '.join(MODES)}")
    if method not in METHODS:
        raise OnnxPruneError(f"unknown int8 method '{method}'; use one of {', '.join(METHODS)}")
    if os.path.exists(output) and os.path.samefile(src, output):
        raise OnnxPruneError(f"-o {output} is the input model; choose another output path")
    folder = os.path.dirname(os.path.abspath(output))
    model = load_model(src)
    if mode == "int8" and method == "auto":
        method = "dynamic" if calib is None or (_matmul_heavy(_shaped(model))) else "static"
    if mode == "int8" and method == "static" and calib is None:
        raise OnnxPruneError("static int8 quantization needs calibration data: give calib (or quant_method dynamic)")
    with _private_tmp(folder) as tmp:
        out = os.path.join(tmp, "q.onnx")
        args = (src, out, tmp, mode, method, calib, calib_batch, image_spec, calib_limit, per_channel)
        from .validate.runtime import _state

        if _state["global_pool"]:  # onnxruntime's tools make their own sessions: run them in a fresh process
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(1) as pool:
                label, preprocessed = pool.apply(_run, args)
        else:
            label, preprocessed = _run(*args)
        save_model(load_model(out), output)
    return QuantResult(output, mode, label, _size(src), _size(output), preprocessed)


def _run(src: str, out: str, tmp: str, mode: str, method: str, calib, calib_batch, image_spec, calib_limit,
         per_channel: bool) -> tuple[str, bool]:
    """The onnxruntime steps (every file they write is under ``tmp``); returns (method label, preprocessed)."""
    import onnx

    from .graph import load_model

    tempfile.tempdir = tmp
    plain = os.path.join(tmp, "in.onnx")
    proto = onnx.load(src)
    del proto.graph.value_info[:]  # onnxruntime's quantizer re-infers; stale entries clash with its rewrites
    onnx.save(proto, plain)
    pre = os.path.join(tmp, "pre.onnx")
    preprocessed = _preprocess(plain, pre)
    inp = pre if preprocessed else plain
    try:
        if mode == "fp16":
            import onnx
            import onnx_ir as ir
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = ir.serde.deserialize_model(convert_float_to_float16(onnx.load(inp), keep_io_types=True))
            model.graph.sort()  # the converter appends its input Casts after their consumers
            onnx.save(ir.serde.serialize_model(model), out)
            label = "fp16"
        elif method == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(inp, out, weight_type=QuantType.QInt8, per_channel=per_channel)
            label = "dynamic"
        else:
            from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

            from .calib import load_calibration

            cal = load_calibration(calib, load_model(src), batch_size=calib_batch, image_spec=image_spec, limit=calib_limit)
            reader = type("Reader", (_Reader, CalibrationDataReader), {})(cal)
            quantize_static(inp, out, reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
            label = "static-qdq"
    except OnnxPruneError:
        raise
    except Exception as e:  # onnxruntime's tools raise anything; the model or data is the cause
        raise OnnxPruneError(f"onnxruntime could not quantize {src} to {mode} ({method}): "
                             f"{' '.join(str(e).split())[:300]}") from None
    return label, preprocessed


def _shaped(model):
    if not model.shapes:
        model.infer()
    return model


def _size(path: str) -> int:
    from .validate.compare import file_bytes

    return file_bytes(path)


def _preprocess(src: str, dst: str) -> bool:
    """``quant_pre_process`` (shape inference + basic optimisations); False (logged) when it fails."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(src, dst, skip_symbolic_shape=True)
        return os.path.exists(dst)
    except Exception as e:  # the quantizer still works on the unprocessed model
        log.warning("quantization pre-processing skipped (%s)", " ".join(str(e).split())[:200])
        return False
