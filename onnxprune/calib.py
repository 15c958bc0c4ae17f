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

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import OnnxPruneError
from .validate.inputs import InputSpec, check_arrays, read_npz

log = logging.getLogger(__name__)

__all__ = ["ImageSpec", "Calibration", "load_calibration", "set_row_mask"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
MAX_IMAGE_PIXELS = 64_000_000  # refuse larger images (decompression bombs) before decoding them
MAX_IMAGE_SIDE = 16384  # largest resize target


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
        spec = cls(**kw)
        spec.check()
        return spec

    def check(self) -> None:
        """Refuse sizes < 1, a zero/non-finite std or scale, and per-channel lists of the wrong length."""
        if not all(0 < int(s) <= MAX_IMAGE_SIDE for s in self.size):
            raise OnnxPruneError(f"image spec size={'x'.join(map(str, self.size))}: each side must be in "
                                 f"1..{MAX_IMAGE_SIDE}")
        channels = 3 if self.mode == "RGB" else 1
        for key in ("mean", "std"):
            v = np.asarray(getattr(self, key), dtype=np.float64)
            if v.size not in (1, channels) or not np.isfinite(v).all():
                raise OnnxPruneError(f"image spec {key}={'/'.join(map(str, getattr(self, key)))}: expected 1 or "
                                     f"{channels} finite values for mode={self.mode}")
        if not all(float(v) != 0 for v in self.std):
            raise OnnxPruneError(f"image spec std={'/'.join(map(str, self.std))}: a zero std divides by zero")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise OnnxPruneError(f"image spec scale={self.scale}: expected a positive number")

    def sample_shape(self) -> tuple[int, int, int]:
        c = 3 if self.mode == "RGB" else 1
        h, w = self.size
        return (c, h, w) if self.layout == "NCHW" else (h, w, c)

    @staticmethod
    def probe(path: str) -> None:
        """Open an image's header: a one-line error naming the file when it is not a readable image
        or is larger than ``MAX_IMAGE_PIXELS``."""
        Image = _pil()
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception as e:  # UnidentifiedImageError, DecompressionBombError, OSError...
            raise OnnxPruneError(f"{path}: cannot read as an image ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:200]})") from None
        if w * h > MAX_IMAGE_PIXELS:
            raise OnnxPruneError(f"{path}: {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed "
                                 "(a decompression bomb?); resize it first")

    def load(self, path: str) -> np.ndarray:
        self.probe(path)
        try:
            with _pil().open(path) as im:
                im = im.convert(self.mode).resize((self.size[1], self.size[0]))
                a = np.asarray(im, dtype=np.float32) / self.scale
        except Exception as e:  # truncated or corrupt pixel data
            raise OnnxPruneError(f"{path}: cannot decode the image ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:200]})") from None
        if a.ndim == 2:
            a = a[:, :, None]
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return a.transpose(2, 0, 1) if self.layout == "NCHW" else a


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise OnnxPruneError("reading calibration images needs Pillow: pip install pillow") from None
    return Image


class Calibration:
    """Batches of feeds for a model's inputs, read lazily.

    Args:
        source: ``.npz`` path or image folder.
        input_names: the model's (non-initializer) input names.
        batch_size: samples per batch.
        image_spec: preprocessing for an image folder.
        limit: use at most this many samples.
        specs: the model's inputs (name, shape, dtype): the data is checked against them.
        drop_nonfinite: skip samples holding NaN/Inf instead of refusing the data.
    """

    def __init__(self, source: str, input_names: list[str], *, batch_size: int = 32,
                 image_spec: ImageSpec | None = None, limit: int | None = None, fixed_batch: bool = False,
                 specs: list[InputSpec] | None = None, drop_nonfinite: bool = False) -> None:
        from .options import check

        check("calib_batch", batch_size)
        check("calib_limit", limit)
        specs = specs if specs is not None else [InputSpec(n, None, None) for n in input_names]
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
            self.spec.check()
            for f in self.files:  # headers only: a bad file is named before any work starts
                ImageSpec.probe(f)
            s = specs[0]
            shape = self.spec.sample_shape()
            if s.shape is not None and (len(s.shape) != 4 or any(isinstance(d, int) and d > 0 and d != n for d, n
                                                                 in zip(s.shape[1:], shape))):
                raise OnnxPruneError(f"{source}: images become samples of shape {list(shape)} with image spec "
                                     f"{self.spec}; the model's input '{s.name}' has shape {list(s.shape)}")
            if s.dtype is not None and np.dtype(s.dtype).kind != "f":
                raise OnnxPruneError(f"{source}: the model's input '{s.name}' takes {np.dtype(s.dtype)}, "
                                     "images give float32; give an .npz")
            self.arrays = None
            n = len(self.files)
        elif os.path.isfile(source):
            data = read_npz(source, "calibration data")
            keys = [k for k in data if k != "labels"]
            if len(input_names) == 1 and len(keys) == 1:
                arrays = {input_names[0]: data[keys[0]]}
            else:
                missing = [n for n in input_names if n not in data]
                if missing:
                    raise OnnxPruneError(f"{source}: no array for input(s) {', '.join(missing)}; "
                                         f"it has {', '.join(data) or 'no arrays'}")
                arrays = {n: data[n] for n in input_names}
            self.arrays, self.labels = check_arrays(source, arrays, specs, drop_nonfinite=drop_nonfinite,
                                                    labels=data.get("labels"))
            n = next(iter(self.arrays.values())).shape[0]
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
        self.mask_input: str | None = None  # see set_row_mask

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

    def row_mask(self, feeds: dict[str, np.ndarray]) -> np.ndarray | None:
        """The batch's token mask ([N, S] bool; False: padding, left out of statistics), or None."""
        if self.mask_input is None or self.mask_input not in feeds:
            return None
        return np.asarray(feeds[self.mask_input]) != 0

    def batches(self, progress: str | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches of feeds; ``progress`` names the phase for :func:`onnxprune.progress.progress`."""
        starts = range(0, self.n_samples, self.batch_size)
        if progress is not None:
            from .progress import progress as bar

            starts = bar(starts, progress, total=len(starts), unit="batches")
        for start in starts:
            stop = min(start + self.batch_size, self.n_samples)
            if self.arrays is not None:
                yield {n: np.ascontiguousarray(a[start:stop]) for n, a in self.arrays.items()}
            else:
                yield {self.input_names[0]: np.stack([self.spec.load(f) for f in self.files[start:stop]])}


MASK_NAMES = ("attention_mask", "input_mask")  # padding masks as Hugging Face / BERT exports name them


def set_row_mask(cal: Calibration, how: str | None) -> str | None:
    """Choose the input whose zeros mark padded positions, left out of every statistic.

    ``how``: ``auto`` (an input named like ``attention_mask``/``input_mask``, rank 2, integer or
    bool, values 0/1 only), ``none``, or an input's name. Padded positions of a batch padded to one
    length are computed by the model but read by nothing that matters (attention and pooling mask
    them): MiniLM's 32 calibration sentences are 26% padding, and statistics taken over it rank
    and refit towards values the outputs never see.

    Raises:
        OnnxPruneError: a named input that is not a 0/1 array of rank 2 in the calibration data.
    """
    cal.mask_input = None
    if how in (None, "none") or cal.arrays is None:
        if how not in (None, "none", "auto"):
            raise OnnxPruneError(f"--calib-mask {how}: image-folder calibration data has no mask input; "
                                 "give an .npz or --calib-mask none")
        return None
    if how == "auto":
        names = [n for n in cal.arrays if n.lower().split("/")[-1].split(":")[0] in MASK_NAMES]
        if len(names) != 1:
            return None
    else:
        if how not in cal.arrays:
            raise OnnxPruneError(f"--calib-mask {how}: no such model input in the calibration data "
                                 f"(inputs: {', '.join(cal.arrays)}); name the padding-mask input or give none")
        names = [how]
    a = cal.arrays[names[0]]
    ok = a.ndim == 2 and a.dtype.kind in "biu" and bool(np.isin(a, (0, 1)).all()) and bool((a != 0).any(axis=1).all())
    if not ok:
        if how == "auto":
            return None
        raise OnnxPruneError(f"--calib-mask {how}: the input '{how}' is not a [samples, positions] array of 0/1 "
                             "with a 1 in every sample; name the padding-mask input or give none")
    cal.mask_input = names[0]
    pad = 1.0 - float(np.mean(a[:cal.n_samples] != 0))
    log.info("calibration statistics leave out padded positions (%s == 0: %.0f%% of positions); --calib-mask none "
             "keeps them", names[0], 100 * pad)
    return names[0]


def load_calibration(source: str, model, *, batch_size: int = 32, image_spec: str | ImageSpec | None = None,
                     limit: int | None = None, drop_nonfinite: bool = False, mask: str | None = "auto") -> Calibration:
    """Calibration batches for ``model`` (a ``graph.Model``); ``mask``: see :func:`set_row_mask`."""
    spec = ImageSpec.parse(image_spec) if isinstance(image_spec, str) else image_spec
    fixed = set()
    for v in model.graph.inputs:
        if v.name in model.graph_inputs:
            dims = list(v.shape) if v.shape is not None else []
            fixed.add(int(dims[0]) if len(dims) and isinstance(dims[0], int) and dims[0] > 0 else None)
    static = fixed.pop() if len(fixed) == 1 and None not in fixed else None
    from .options import check

    check("calib_batch", batch_size)
    cal = Calibration(source, list(model.graph_inputs), batch_size=static or batch_size, image_spec=spec,
                      limit=limit, fixed_batch=static is not None, specs=InputSpec.from_model(model),
                      drop_nonfinite=drop_nonfinite)
    set_row_mask(cal, mask)
    return cal
