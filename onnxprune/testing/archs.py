"""Generated architectures (random weights) covering the channel rules end to end.

``ARCHS`` maps a name to a builder ``(image, width, seed, **kw) -> ModelProto``:

* ``resnet18`` / ``resnet50``: basic / bottleneck residual stages, 1×1 downsample shortcuts,
  GAP → Flatten → Gemm (torchvision layout; ``width=64, image=224`` is the real size);
* ``mobilenetv2``: inverted residuals (1×1 expand, 3×3 depthwise, 1×1 project, ReLU6 Clip),
  residual only when shapes allow;
* ``senet``: conv blocks with squeeze-and-excitation (GAP → 1×1 → ReLU → 1×1 → HardSigmoid → Mul),
  SiLU (x·sigmoid(x)), PRelu, and a Flatten of C·H·W into a Gemm head;
* ``densenet``: dense blocks (Concat of every previous feature map), transitions with AvgPool;
* ``unet``: encoder/decoder with skip Concats, ConvTranspose and Resize upsampling, a 1×1 head.
"""
from __future__ import annotations

import numpy as np
import onnx

from .builder import Net

__all__ = ["ARCHS", "resnet", "mobilenetv2", "senet", "densenet", "unet"]


def _basic(n: Net, x: str, cin: int, cout: int, stride: int) -> str:
    y = n.cbr(x, cin, cout, 3, stride)
    y = n.bn(n.conv(y, cout, cout, 3, 1, bias=False), cout)
    sc = x if stride == 1 and cin == cout else n.bn(n.conv(x, cin, cout, 1, stride, bias=False), cout)
    return n.relu(n.add(y, sc))


def _bottleneck(n: Net, x: str, cin: int, mid: int, stride: int) -> str:
    cout = mid * 4
    y = n.cbr(x, cin, mid, 1)
    y = n.cbr(y, mid, mid, 3, stride)
    y = n.bn(n.conv(y, mid, cout, 1, bias=False), cout)
    sc = x if stride == 1 and cin == cout else n.bn(n.conv(x, cin, cout, 1, stride, bias=False), cout)
    return n.relu(n.add(y, sc))


def resnet(depth: int = 18, image: int = 32, width: int = 16, classes: int = 10, seed: int = 0,
           batch: int | str = "N", **kw) -> onnx.ModelProto:
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    n = Net(f"resnet{depth}", seed=seed, **kw)
    x = n.input("input", [batch, 3, image, image])
    x = n.maxpool(n.cbr(x, 3, width, 7, 2), 3, 2, 1)
    cin = width
    for stage, count in enumerate(blocks):
        w = width * 2**stage
        for b in range(count):
            stride = 2 if stage > 0 and b == 0 else 1
            if depth >= 50:
                x = _bottleneck(n, x, cin, w, stride)
                cin = w * 4
            else:
                x = _basic(n, x, cin, w, stride)
                cin = w
    x = n.flatten(n.gap(x))
    n.output(n.gemm(x, cin, classes))
    return n.build()


def mobilenetv2(image: int = 32, width: int = 16, classes: int = 10, seed: int = 0, **kw) -> onnx.ModelProto:
    n = Net("mobilenetv2", seed=seed, **kw)
    x = n.input("input", ["N", 3, image, image])
    x = n.cbr(x, 3, width, 3, 2, act="relu6")
    # (expansion, out channels multiplier, repeats, stride)
    cfg = [(1, 1, 1, 1), (6, 1.5, 2, 2), (6, 2, 2, 2), (6, 4, 2, 1)]
    cin = width
    for t, mult, reps, s in cfg:
        cout = int(width * mult)
        for r in range(reps):
            stride = s if r == 0 else 1
            hid = cin * t
            y = n.cbr(x, cin, hid, 1, act="relu6") if t != 1 else x
            y = n.cbr(y, hid, hid, 3, stride, group=hid, act="relu6")
            y = n.bn(n.conv(y, hid, cout, 1, bias=False), cout)
            x = n.add(x, y) if stride == 1 and cin == cout else y
            cin = cout
    x = n.cbr(x, cin, cin * 4, 1, act="relu6")
    x = n.flatten(n.gap(x))
    n.output(n.gemm(x, cin * 4, classes))
    return n.build()


def _se(n: Net, x: str, c: int, r: int = 4) -> str:
    s = n.gap(x)
    s = n.relu(n.conv(s, c, max(c // r, 2), 1))
    s = n.op("HardSigmoid", [n.conv(s, max(c // r, 2), c, 1)], alpha=1 / 6, beta=0.5)
    return n.op("Mul", [x, s])


def senet(image: int = 16, width: int = 16, classes: int = 10, seed: int = 0, **kw) -> onnx.ModelProto:
    n = Net("senet", seed=seed, **kw)
    x = n.input("input", ["N", 3, image, image])
    x = n.cbr(x, 3, width, 3, act="silu")
    c = width
    for stage in range(3):
        cout = width * 2**stage
        y = n.cbr(x, c, cout, 3, 2 if stage else 1, act="silu")
        y = n.bn(n.conv(y, cout, cout, 3, bias=False), cout)
        y = _se(n, y, cout)
        sc = x if c == cout else n.bn(n.conv(x, c, cout, 1, 2 if stage else 1, bias=False), cout)
        slope = n.const(n.rng.uniform(0.05, 0.3, (cout, 1, 1)).astype(np.float32), "prelu.slope")
        x = n.op("PRelu", [n.add(y, sc), slope])
        c = cout
    side = image // 4
    x = n.flatten(x)  # C·H·W into the head
    x = n.relu(n.gemm(x, c * side * side, 32))
    n.output(n.gemm(x, 32, classes))
    return n.build()


def densenet(image: int = 16, growth: int = 8, width: int = 16, classes: int = 10, seed: int = 0,
             blocks=(3, 3), **kw) -> onnx.ModelProto:
    n = Net("densenet", seed=seed, **kw)
    x = n.input("input", ["N", 3, image, image])
    x = n.conv(x, 3, width, 3, bias=False)
    c = width
    for bi, layers in enumerate(blocks):
        feats = [x]
        for _ in range(layers):
            inp = feats[0] if len(feats) == 1 else n.op("Concat", feats, axis=1)
            y = n.cbr(n.relu(n.bn(inp, c)), c, 4 * growth, 1)
            y = n.conv(y, 4 * growth, growth, 3, bias=False)
            feats.append(y)
            c += growth
        x = n.op("Concat", feats, axis=1)
        if bi != len(blocks) - 1:
            x = n.conv(n.relu(n.bn(x, c)), c, c // 2, 1, bias=False)
            x = n.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
            c //= 2
    x = n.flatten(n.gap(n.relu(n.bn(x, c))))
    n.output(n.gemm(x, c, classes))
    return n.build()


def unet(image: int = 16, width: int = 8, out_channels: int = 2, seed: int = 0, **kw) -> onnx.ModelProto:
    n = Net("unet", seed=seed, **kw)
    x = n.input("input", ["N", 3, image, image])
    e1 = n.cbr(n.cbr(x, 3, width), width, width)
    e2 = n.cbr(n.cbr(n.maxpool(e1), width, 2 * width), 2 * width, 2 * width)
    b = n.cbr(n.cbr(n.maxpool(e2), 2 * width, 4 * width), 4 * width, 4 * width)
    # decoder 1: transposed conv up, skip concat
    u2 = n.conv_transpose(b, 4 * width, 2 * width)
    d2 = n.cbr(n.op("Concat", [u2, e2], axis=1), 4 * width, 2 * width)
    # decoder 2: Resize up (scales 1 on N and C), skip concat
    scales = n.const(np.array([1, 1, 2, 2], np.float32), "scales")
    u1 = n.op("Resize", [d2, "", scales], mode="nearest")
    d1 = n.cbr(n.op("Concat", [u1, e1], axis=1), 3 * width, width)
    n.output(n.conv(d1, width, out_channels, 1))
    return n.build()


ARCHS = {
    "resnet18": lambda **kw: resnet(18, **kw),
    "resnet50": lambda **kw: resnet(50, **kw),
    "mobilenetv2": mobilenetv2,
    "senet": senet,
    "densenet": densenet,
    "unet": unet,
}
