"""Calibration data: an ``.npz`` of input samples, or a folder of images, streamed in batches.

* ``.npz``: one array per graph input, first axis = samples (a single-input model accepts one
  array under any name). Arrays are sliced batch by batch.
* a folder of images (``.png .jpg .jpeg .bmp``, sorted by name), decoded with Pillow
  (``pip install pillow``) and preprocessed by an :class:`ImageSpec`, written on the command line
  as ``size=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW,mode=RGB,scale=255``:
  resize to ``size`` (H or HxW), divide by ``scale``, subtract ``mean``, divide by ``std``
  (per channel), lay out as NCHW or NHWC.

Calibration data is for scoring and recovery only; judge the result on a separate split.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import OnnxPruneError

__all__ = ["ImageSpec", "Calibration", "load_calibration"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class ImageSpec:
    """Preprocessing of calibration images."""

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    mode: str = "RGB"
    scale: float = 255.0

    @classmethod
    def parse(cls, text: str) -> ImageSpec:
        """``size=224,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,layout=NCHW,mode=RGB,scale=255``."""
        kw: dict = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, eq, value = part.partition("=")
            try:
                if key == "size":
                    dims = [int(v) for v in value.lower().split("x")]
                    kw["size"] = (dims[0], dims[-1])
                elif key in ("mean", "std"):
                    kw[key] = tuple(float(v) for v in value.split("/"))
                elif key == "layout" and value.upper() in ("NCHW", "NHWC"):
                    kw["layout"] = value.upper()
                elif key == "mode" and value.upper() in ("RGB", "L"):
                    kw["mode"] = value.upper()
                elif key == "scale":
                    kw["scale"] = float(value)
                else:
                    raise ValueError
            except (ValueError, IndexError):
                raise OnnxPruneError(f"image spec '{part}': expected size=H[xW], mean=a/b/c, std=a/b/c, "
                                     "layout=NCHW|NHWC, mode=RGB|L or scale=X") from None
        return cls(**kw)

    def load(self, path: str) -> np.ndarray:
        try:
            from PIL import Image
        except ImportError:
            raise OnnxPruneError("reading calibration images needs Pillow: pip install pillow") from None
        with Image.open(path) as im:
            im = im.convert(self.mode).resize((self.size[1], self.size[0]))
            a = np.asarray(im, dtype=np.float32) / self.scale
        if a.ndim == 2:
            a = a[:, :, None]
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return a.transpose(2, 0, 1) if self.layout == "NCHW" else a


class Calibration:
    """Batches of feeds for a model's inputs, read lazily.

    Args:
        source: ``.npz`` path or image folder.
        input_names: the model's (non-initializer) input names.
        batch_size: samples per batch.
        image_spec: preprocessing for an image folder.
        limit: use at most this many samples.
    """

    def __init__(self, source: str, input_names: list[str], *, batch_size: int = 32,
                 image_spec: ImageSpec | None = None, limit: int | None = None, fixed_batch: bool = False) -> None:
        self.source = source
        self.batch_size = batch_size
        self.input_names = input_names
        if os.path.isdir(source):
            if len(input_names) != 1:
                raise OnnxPruneError(f"{source}: an image folder feeds single-input models; this one has "
                                     f"{len(input_names)} inputs, give an .npz")
            self.files = sorted(os.path.join(source, f) for f in os.listdir(source)
                                if f.lower().endswith(IMAGE_EXTS))
            if not self.files:
                raise OnnxPruneError(f"{source}: no {'/'.join(IMAGE_EXTS)} images in this folder")
            self.spec = image_spec or ImageSpec()
            self.arrays = None
            n = len(self.files)
        elif os.path.isfile(source):
            try:
                data = np.load(source)
            except (OSError, ValueError) as e:
                raise OnnxPruneError(f"{source}: cannot read as .npz ({e})") from None
            keys = [k for k in data.files if k != "labels"]
            if len(input_names) == 1 and len(keys) == 1:
                self.arrays = {input_names[0]: data[keys[0]]}
            else:
                missing = [n for n in input_names if n not in data.files]
                if missing:
                    raise OnnxPruneError(f"{source}: no array for input(s) {', '.join(missing)}; "
                                         f"it has {', '.join(data.files)}")
                self.arrays = {n: data[n] for n in input_names}
            sizes = {a.shape[0] for a in self.arrays.values()}
            if len(sizes) != 1:
                raise OnnxPruneError(f"{source}: arrays have different sample counts {sorted(sizes)}")
            n = sizes.pop()
            self.labels = data["labels"] if "labels" in data.files else None
        else:
            raise OnnxPruneError(f"{source}: no such calibration file or folder")
        if n == 0:
            raise OnnxPruneError(f"{source}: no calibration samples")
        self.n_samples = min(n, limit) if limit else n
        self.fixed_batch = fixed_batch
        if fixed_batch:  # the model takes exactly batch_size samples: drop the last partial batch
            self.n_samples -= self.n_samples % batch_size
            if self.n_samples == 0:
                raise OnnxPruneError(f"{source}: fewer samples than the model's fixed batch of {batch_size}")
        if not hasattr(self, "labels"):
            self.labels = None

    def subset(self, indices) -> Calibration:
        """The same source restricted to these sample indices (a fixed-batch model: whole batches)."""
        import copy

        idx = np.asarray(indices, dtype=np.int64)
        if self.fixed_batch:
            idx = idx[:len(idx) - len(idx) % self.batch_size]
        if idx.size == 0:
            raise OnnxPruneError(f"{self.source}: too few calibration samples to split "
                                 f"({self.n_samples}{', batch ' + str(self.batch_size) if self.fixed_batch else ''})")
        c = copy.copy(self)
        if self.arrays is not None:
            c.arrays = {k: v[idx] for k, v in self.arrays.items()}
        else:
            c.files = [self.files[i] for i in idx]
        c.labels = None if self.labels is None else self.labels[idx]
        c.n_samples = int(idx.size)
        return c

    def split(self, every: int = 4) -> tuple[Calibration, Calibration]:
        """(fit, check): every ``every``-th sample is held back for checking, the rest fits."""
        idx = np.arange(self.n_samples)
        if self.n_samples < 2:
            raise OnnxPruneError(f"{self.source}: a quality target needs at least 2 calibration samples "
                                 "(some fit, some check)")
        check = idx % every == every - 1
        if not check.any():
            check[-1] = True
        return self.subset(idx[~check]), self.subset(idx[check])

    def __len__(self) -> int:
        return (self.n_samples + self.batch_size - 1) // self.batch_size

    def batches(self, progress: str | None = None) -> Iterator[dict[str, np.ndarray]]:
        show = progress is not None and sys.stderr.isatty()
        for k, start in enumerate(range(0, self.n_samples, self.batch_size)):
            stop = min(start + self.batch_size, self.n_samples)
            if show:
                done = int(30 * stop / self.n_samples)
                print(f"\r{progress} [{'#' * done}{'.' * (30 - done)}] {stop}/{self.n_samples}", end="",
                      file=sys.stderr, flush=True)
            if self.arrays is not None:
                yield {n: np.ascontiguousarray(a[start:stop]) for n, a in self.arrays.items()}
            else:
                yield {self.input_names[0]: np.stack([self.spec.load(f) for f in self.files[start:stop]])}
        if show:
            print(file=sys.stderr)


def load_calibration(source: str, model, *, batch_size: int = 32, image_spec: str | ImageSpec | None = None,
                     limit: int | None = None) -> Calibration:
    """Calibration batches for ``model`` (a ``graph.Model``)."""
    spec = ImageSpec.parse(image_spec) if isinstance(image_spec, str) else image_spec
    fixed = set()
    for v in model.graph.inputs:
        if v.name in model.graph_inputs:
            dims = list(v.shape) if v.shape is not None else []
            fixed.add(int(dims[0]) if len(dims) and isinstance(dims[0], int) and dims[0] > 0 else None)
    static = fixed.pop() if len(fixed) == 1 and None not in fixed else None
    return Calibration(source, list(model.graph_inputs), batch_size=static or batch_size, image_spec=spec,
                       limit=limit, fixed_batch=static is not None)
