"""Fuzz the command line with mutated real models; print counts (cases, clean errors, valid
outputs, crashes) and every crash with its reproduction seed.

    python scripts/fuzz.py --cases 2000 [--seed 0] [--devcache /tmp/devcache] [--torch]

Sources: models/digits_cnn.onnx, generated models (onnxprune.testing.archs), small corpus models
from the dev cache (``scripts/devset.py --cache``), and with ``--torch`` a few torch exports.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import random
import sys
import tempfile
import time

import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from onnxprune.testing import archs  # noqa: E402
from onnxprune.testing.fuzz import Tally, fuzz_one  # noqa: E402


def sources(devcache: str | None, torch_models: bool) -> dict[str, onnx.ModelProto]:
    out = {"digits_cnn": onnx.load(os.path.join(HERE, "..", "models", "digits_cnn.onnx")),
           "resnet18": archs.resnet(18, image=16, width=8), "mobilenetv2": archs.mobilenetv2(image=16, width=8),
           "senet": archs.senet(), "densenet": archs.densenet(), "unet": archs.unet()}
    if devcache and os.path.isdir(devcache):
        for name in ("rapidocr_cls", "silero_vad", "magika"):
            p = os.path.join(devcache, name + ".onnx")
            if os.path.exists(p) and os.path.getsize(p) < 8 << 20:
                out[name] = onnx.load(p)
    if torch_models:
        import io

        import torch

        class Small(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.c1, self.b1 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
                self.c2, self.fc = torch.nn.Conv2d(16, 16, 3, padding=1, groups=4), torch.nn.Linear(16, 5)

            def forward(self, x):
                y = torch.relu(self.b1(self.c1(x)))
                y = torch.relu(self.c2(y)) + y
                return self.fc(y.mean((2, 3)))

        f = io.BytesIO()
        torch.onnx.export(Small().eval(), torch.randn(1, 3, 8, 8), f, dynamo=False, opset_version=17)
        out["torch_small"] = onnx.load_from_string(f.getvalue())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--devcache", default="/tmp/devcache")
    ap.add_argument("--torch", action="store_true", help="also fuzz a torch export")
    ap.add_argument("--only", type=int, nargs="+", help="run just these case numbers (to reproduce a crash)")
    a = ap.parse_args()
    logging.disable(logging.CRITICAL)
    models = sources(a.devcache, a.torch)
    names = sorted(models)
    tally, by_kind = Tally(), collections.Counter()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="onnxprune-fuzz-") as work:
        for k in (a.only or range(a.cases)):
            rng = random.Random(f"{a.seed}:{k}")
            src = names[k % len(names)]
            outcome, muts = fuzz_one(models[src], rng, os.path.join(work, "case"))
            tally.add(outcome)
            by_kind[outcome.kind] += 1
            if outcome.kind == "crash":
                print(f"CRASH case {k} (seed '{a.seed}:{k}', model {src}, mutations {muts}): "
                      f"{outcome.detail[:600]}", flush=True)
            if (k + 1) % 100 == 0:
                print(f"[{k + 1}/{a.cases}, {time.time() - t0:.0f} s] {tally.line()}", flush=True)
    print(tally.line())
    return 1 if tally.crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
