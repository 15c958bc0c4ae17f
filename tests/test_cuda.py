"""The CUDA execution provider, for real (skipped where onnxruntime cannot run CUDA)."""
import numpy as np
import onnx
import pytest

from onnxprune.testing.archs import resnet
from onnxprune.validate import compare_models
from onnxprune.validate.runtime import ProviderUnavailable, make_session

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import onnxprune

    d = tmp_path_factory.mktemp("cuda")
    src = str(d / "r18.onnx")
    onnx.save(resnet(18, image=64, width=16), src)
    try:
        make_session(src, "cuda")
    except ProviderUnavailable as e:
        pytest.skip(f"CUDA provider unavailable: {e}")
    out = str(d / "r18.pruned.onnx")
    onnxprune.prune(src, out, ratio=0.5, round_to=8)
    return src, out


def test_cuda_matches_cpu_and_times(models):
    src, out = models
    report = compare_models(src, out, providers=["cpu", "cuda"], repeats=10, warmup=3)
    cpu, cuda = report.providers
    assert cuda.available and cuda.passed and cuda.latency.ratio > 0
    assert np.isclose(cpu.outputs[0].cosine, cuda.outputs[0].cosine, atol=1e-4)


def test_latency_table_and_target_on_cuda(models, tmp_path):
    """The latency model measured on the CUDA EP (IO-bound timing), planned against and verified."""
    import onnxprune
    from onnxprune import latency

    src, _ = models
    assert latency.alignment("cuda") in (8, 16)
    res = onnxprune.prune(src, str(tmp_path / "fast.onnx"), target_speedup=1.3, latency_provider="cuda")
    d = res.latency
    assert d["provider"] == "cuda" and d["pruned_ms"] > 0 and d["predicted_ms"] > 0
    assert res.plan.n_removed > 0


def test_io_binding_timing_on_cuda(models):
    from onnxprune.validate.compare import run_timed

    src, _ = models
    sess = make_session(src, "cuda")
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    run = run_timed(sess, feeds)
    times = [run() for _ in range(5)]
    assert all(t > 0 for t in times)


def test_tensorrt_by_name(models):
    src, out = models
    try:
        make_session(src, "tensorrt")
    except ProviderUnavailable as e:
        pytest.skip(f"TensorRT provider unavailable: {e}")
    report = compare_models(src, out, providers=["tensorrt"], repeats=5, warmup=3)
    assert report.providers[0].available and report.providers[0].passed
