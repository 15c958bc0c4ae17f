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
