"""Train the shipped CNN on scikit-learn's digits and export it to models/.

Data: ``sklearn.datasets.load_digits`` (1,797 8×8 grey images, 10 classes; a copy of the UCI
"Optical Recognition of Handwritten Digits" test set, shipped inside scikit-learn, BSD-3).
Split: stratified 80/20 with ``random_state=0`` → 1,437 training / 360 held-out test images.
Pixels are scaled to [-1, 1] (x / 8 - 1).

Model: Conv(1→32)-BN-ReLU → Conv(32→64)-BN-ReLU → MaxPool 2 → Conv(64→64)-BN-ReLU →
Flatten (64·4·4) → Linear(1024→128)-BN-ReLU → Linear(128→10). Trained with Adam, random ±1 pixel
shifts, and an L1 penalty on BatchNorm γ (network slimming, Liu et al. 2017), then exported with torch's
TorchScript exporter keeping BatchNorm unfused (``TrainingMode.PRESERVE``, no constant folding),
opset 13, IR 8, dynamic batch.

Writes:
    models/digits_cnn.onnx     the model (input "input" [N,1,8,8], output "logits" [N,10])
    models/digits_test.npz     held-out test split: input [360,1,8,8] float32, labels [360] int64
    models/digits_calib.npz    256 training images (input) and their labels, for calibration

Usage: pip install torch==2.13.0 scikit-learn && python scripts/train_digits_cnn.py
"""
from __future__ import annotations

import argparse
import io
import os

import numpy as np


def load_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)


def build():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128), nn.BatchNorm1d(128), nn.ReLU(),
        nn.Linear(128, 10),
    )


def train(model, x, y, epochs: int, seed: int, slim: float):
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            xb = xt[idx]
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dx, dy), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), yt[idx])
            loss = loss + slim * sum(b.weight.abs().sum() for b in bns)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    return model


def load_from_onnx(module, path: str):
    """Load the shipped ONNX weights back into ``build()``'s module (names are torch's)."""
    import torch

    from onnxprune.graph import load_model

    m = load_model(path)
    state = {}
    for key, value in module.state_dict().items():
        arr = m.const(key)
        if arr is None:
            if key.endswith("num_batches_tracked"):
                state[key] = value
                continue
            raise KeyError(f"{key} not in {path}")
        state[key] = torch.from_numpy(arr.copy())
    module.load_state_dict(state)
    return module.eval()


def export(model, path: str) -> None:
    import onnx
    import torch

    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), buf, dynamo=False, opset_version=13,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = 8  # what onnxruntime 1.31 accepts
    proto.doc_string = "CNN trained on scikit-learn digits by scripts/train_digits_cnn.py"
    for k, v in (("source", "sklearn.datasets.load_digits"), ("license", "BSD-3-Clause (data: scikit-learn)")):
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)


def write_data(out: str, xtr, ytr, xte, yte, seed: int) -> None:
    np.savez_compressed(os.path.join(out, "digits_test.npz"), input=xte, labels=yte)
    idx = np.random.default_rng(seed).choice(len(xtr), 256, replace=False)
    np.savez_compressed(os.path.join(out, "digits_calib.npz"), input=xtr[idx], labels=ytr[idx])


def main() -> None:
    import onnxruntime as ort
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "models"))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slim", type=float, default=3e-3, help="L1 weight on BatchNorm γ (network slimming)")
    ap.add_argument("--data-only", action="store_true", help="write the .npz files, keep the model")
    a = ap.parse_args()
    torch.set_num_threads(2)
    xtr, xte, ytr, yte = load_split()
    if a.data_only:
        write_data(a.out, xtr, ytr, xte, yte, a.seed)
        return
    model = train(build(), xtr, ytr, a.epochs, a.seed, a.slim)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "digits_cnn.onnx")
    export(model, path)
    write_data(a.out, xtr, ytr, xte, yte, a.seed)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ort_acc = float((sess.run(None, {"input": xte})[0].argmax(1) == yte).mean())
    print(f"test accuracy: torch {acc:.4f}, onnxruntime {ort_acc:.4f}; wrote {path}")


if __name__ == "__main__":
    main()
