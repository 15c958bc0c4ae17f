"""Dynamic-shape models for the benchmarks: a U-Net/FPN-style conv net and MiniLM.

* ``UNet``: a torch encoder–decoder (random weights, ~2M parameters): four conv-BN-ReLU stages
  with 2×2 max pooling, a bottleneck, and four decoder stages that upsample by 2 (``Upsample``
  nearest and bilinear, alternating; exported as ``Resize``), concatenate the encoder's skip and
  run two conv-BN-ReLU; a 1×1 head. H and W must be multiples of 16.
* ``export_unet``: exports it with batch, height and width dynamic, with the TorchScript exporter
  (``dynamo=False``, ``dynamic_axes``) or the dynamo exporter (``dynamo=True``,
  ``dynamic_shapes``; H and W are declared as ``16·k`` so the skip Concats type-check).
* ``export_minilm``: sentence-transformers/all-MiniLM-L6-v2 from the offline package (the module
  and tokenizer of ``scripts/export_minilm.py``) with batch and sequence dynamic.

Every export keeps the IR version ≤ 10 (onnx 1.23 writes 14, which onnxruntime 1.31 refuses).
Nothing here imports onnxprune, so these exports do not depend on the library's internals.

Usage: python scripts/dyn_models.py --out /tmp/dyn   # writes unet_ts.onnx, unet_dynamo.onnx, minilm_*.onnx
"""
from __future__ import annotations

import argparse
import io
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _torch():
    import torch

    return torch


def build_unet(in_channels: int = 3, classes: int = 4, widths=(24, 48, 96, 192), bottleneck: int = 256,
               seed: int = 0):
    """The U-Net/FPN-style module in eval mode (random, seeded weights; BN statistics perturbed)."""
    torch = _torch()
    nn = torch.nn

    def cbr(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleList()
            cin = in_channels
            for w in widths:
                self.enc.append(nn.Sequential(*cbr(cin, w), *cbr(w, w)))
                cin = w
            self.pool = nn.MaxPool2d(2)
            self.mid = nn.Sequential(*cbr(cin, bottleneck), *cbr(bottleneck, bottleneck))
            self.up = nn.ModuleList()
            self.dec = nn.ModuleList()
            cin = bottleneck
            for i, w in enumerate(reversed(widths)):
                mode = "nearest" if i % 2 == 0 else "bilinear"
                self.up.append(nn.Upsample(scale_factor=2, mode=mode,
                                           **({} if mode == "nearest" else {"align_corners": False})))
                self.dec.append(nn.Sequential(*cbr(cin + w, w), *cbr(w, w)))
                cin = w
            self.head = nn.Conv2d(cin, classes, 1)

        def forward(self, x):
            skips = []
            for stage in self.enc:
                x = stage(x)
                skips.append(x)
                x = self.pool(x)
            x = self.mid(x)
            for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
                x = dec(torch.cat([up(x), skip], dim=1))
            return self.head(x)

    torch.manual_seed(seed)
    model = UNet()
    with torch.no_grad():  # non-trivial BN statistics, as in a trained model
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def _save(proto, path: str) -> None:
    import onnx

    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, path)


def export_unet(path: str, exporter: str = "torchscript", *, image: int = 64, batch: int = 2, **kw) -> str:
    """Export ``build_unet(**kw)`` with dynamic batch, height and width; returns ``path``."""
    torch = _torch()
    import onnx

    model = build_unet(**kw)
    x = torch.randn(batch, model.enc[0][0].in_channels, image, image)
    if exporter == "dynamo":
        d = torch.export.Dim
        hk, wk = d("hk", min=1, max=256), d("wk", min=1, max=256)
        dyn = {"x": {0: d("batch", min=1, max=1024), 2: 16 * hk, 3: 16 * wk}}
        prog = torch.onnx.export(model, (x,), dynamo=True, verbose=False, input_names=["image"],
                                 dynamic_shapes=dyn)
        proto = prog.model_proto
    elif exporter in ("torchscript", "ts"):
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["mask"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "mask": {0: "batch", 2: "height", 3: "width"}})
        proto = onnx.load_from_string(buf.getvalue())
    else:
        raise ValueError(f"unknown exporter {exporter!r}: torchscript or dynamo")
    _save(proto, path)
    return path


def export_minilm(path: str, exporter: str = "dynamo") -> str:
    """MiniLM (embedding graph of scripts/export_minilm.py), batch and sequence dynamic."""
    torch = _torch()
    import onnx

    # transformers imports torchvision when it is installed; the venv's torchvision 0.28.0 is a CUDA
    # build that fails against the CPU torch ("operator torchvision::nms does not exist"), and BERT
    # does not need it: hide it (find_spec then reports it absent)
    if "torchvision" not in sys.modules:
        sys.modules["torchvision"] = None
    sys.path.insert(0, HERE)
    import export_minilm as em  # the module and tokenizer (offline package, no hub)

    module = em.build()
    data = em.tokenize(em.SENTENCES[:4])
    args = tuple(torch.from_numpy(data[k][:2]) for k in ("input_ids", "attention_mask"))
    names = ["input_ids", "attention_mask"]
    if exporter == "dynamo":
        d = torch.export.Dim
        b, s = d("batch", min=1, max=1024), d("seq", min=1, max=512)
        prog = torch.onnx.export(module, args, dynamo=True, verbose=False, input_names=names,
                                 dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
        proto = prog.model_proto
    elif exporter in ("torchscript", "ts"):
        buf = io.BytesIO()
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=17, input_names=names,
                          output_names=["embedding"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in names} | {"embedding": {0: "batch"}})
        proto = onnx.load_from_string(buf.getvalue())
    else:
        raise ValueError(f"unknown exporter {exporter!r}: torchscript or dynamo")
    _save(proto, path)
    return path


def check_runs(path: str, sizes=((1, 64, 96), (3, 128, 80))) -> list[tuple]:
    """Run a U-Net export with onnxruntime (CPU) at other sizes; returns the output shapes."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: np.random.default_rng(0).standard_normal((n, 3, h, w), np.float32)})[0].shape
            for n, h, w in sizes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/onnxprune-dyn")
    ap.add_argument("--no-minilm", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    n = sum(p.numel() for p in build_unet().parameters())
    print(f"U-Net: {n / 1e6:.2f}M parameters")
    for exp in ("torchscript", "dynamo"):
        p = export_unet(os.path.join(a.out, f"unet_{exp}.onnx"), exp)
        print(f"{p}: runs at {check_runs(p)}")
    if not a.no_minilm:
        print(export_minilm(os.path.join(a.out, "minilm_dynamo.onnx"), "dynamo"))


if __name__ == "__main__":
    main()
