"""Generate the test/benchmark architectures and check each against the oracle.

Writes ``<out>/<arch>.onnx`` for every entry of ``onnxprune.testing.ARCHS`` (random weights,
seeded), then prunes each at ``--ratio`` and prints the oracle error: structural removal vs the
original with the removed channels' consumer-side weights zeroed.

Usage: python scripts/make_models.py [--out /tmp/onnxprune-models] [--full] [--ratio 0.5]
"""
from __future__ import annotations

import argparse
import os

import onnx

from onnxprune.testing import ARCHS, check_oracle

SIZES = {  # small: seconds in tests; full: torchvision-like widths
    "small": {"resnet18": dict(image=32, width=8), "resnet50": dict(image=32, width=8),
              "mobilenetv2": dict(image=32, width=8), "senet": dict(image=16, width=8),
              "densenet": dict(image=16, growth=4, width=8), "unet": dict(image=16, width=8)},
    "full": {"resnet18": dict(image=224, width=64, classes=1000), "resnet50": dict(image=224, width=64, classes=1000),
             "mobilenetv2": dict(image=224, width=32, classes=1000), "senet": dict(image=64, width=32),
             "densenet": dict(image=64, growth=32, width=64, blocks=(6, 12)), "unet": dict(image=128, width=32)},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/onnxprune-models")
    ap.add_argument("--full", action="store_true", help="real widths and image sizes")
    ap.add_argument("--ratio", type=float, default=0.5)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    worst = 0.0
    for name, build in ARCHS.items():
        proto = build(**SIZES["full" if a.full else "small"][name])
        path = os.path.join(a.out, f"{name}.onnx")
        onnx.save(proto, path)
        res = check_oracle(proto, ratio=a.ratio, batch=1)
        rel = res.max_err / max(1.0, res.scale)
        worst = max(worst, rel)
        print(f"{name:<12} {os.path.getsize(path) / 2**20:7.2f} MB  removed {res.removed:5d} channels  "
              f"oracle max error {res.max_err:.2e} (relative {rel:.1e})  -> {path}")
    return 0 if worst < 2e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
