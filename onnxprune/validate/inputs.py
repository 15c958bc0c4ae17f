"""Inputs for validation: seeded random tensors, or samples from a user ``.npz``.

Random inputs respect each input's element type; dynamic dims take ``dims[name]`` when given,
else ``batch`` for the first axis and 1 elsewhere. The seed is reported with the results.

An ``.npz`` holds one array per graph input (first axis = samples) and optionally labels
(``labels`` key, integer class ids) for accuracy. A single-input model accepts a single array
under any name.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import OnnxPruneError

__all__ = ["InputSpec", "Dataset", "random_dataset", "npz_dataset", "take_samples"]

_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple
    dtype: type

    @classmethod
    def from_session(cls, sess) -> list[InputSpec]:
        out = []
        for i in sess.get_inputs():
            if i.type not in _TYPES:
                raise OnnxPruneError(f"input '{i.name}' has type {i.type}, which onnxprune cannot generate; "
                                     "give an .npz with --data")
            out.append(cls(i.name, tuple(i.shape), _TYPES[i.type]))
        return out


@dataclass
class Dataset:
    """Batches of feeds, plus labels when known."""

    batches: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    source: str
    kind: str = "random"  # or "file"
    path: str | None = None
    seed: int | None = None

    def describe(self) -> dict:
        """Data fields: kind, path, seed, samples, and the shape of each input's first batch."""
        first = self.batches[0] if self.batches else {}
        return {"kind": self.kind, "path": self.path, "seed": self.seed, "samples": self.n_samples,
                "batches": len(self.batches), "labels": self.labels is not None,
                "shapes": {k: list(np.shape(v)) for k, v in first.items()}}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.batches)

    @property
    def n_samples(self) -> int:
        return sum(next(iter(b.values())).shape[0] for b in self.batches if b)


def _concrete(spec: InputSpec, batch: int, dims: dict[str, int]) -> list[int]:
    out = []
    for k, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif isinstance(d, str) and d in dims:
            out.append(dims[d])
        else:
            out.append(batch if k == 0 else 1)
    return out


def random_dataset(specs: list[InputSpec], *, seed: int = 0, batch: int = 1, dims: dict[str, int] | None = None,
                   n_batches: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n_batches):
        feeds = {}
        for s in specs:
            shape = _concrete(s, batch, dims or {})
            if np.issubdtype(s.dtype, np.floating):
                feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
            elif s.dtype == np.bool_:
                feeds[s.name] = rng.random(shape) < 0.5
            else:
                feeds[s.name] = rng.integers(0, 10, size=shape).astype(s.dtype)
        batches.append(feeds)
    shapes = ", ".join(f"{k}={'x'.join(map(str, np.shape(v)))}" for k, v in batches[0].items()) if batches else ""
    return Dataset(batches, None, f"random (seed {seed}): {shapes}", "random", None, seed)


def npz_dataset(path: str, specs: list[InputSpec], *, batch_size: int = 64, labels_key: str = "labels") -> Dataset:
    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise OnnxPruneError(f"{path}: cannot read as .npz ({e})") from None
    keys = [k for k in data.files if k != labels_key]
    arrays: dict[str, np.ndarray] = {}
    if len(specs) == 1 and len(keys) == 1:
        arrays[specs[0].name] = data[keys[0]]
    else:
        for s in specs:
            if s.name not in data.files:
                raise OnnxPruneError(f"{path}: no array named '{s.name}' (the model's input); it has "
                                     f"{', '.join(data.files)}")
            arrays[s.name] = data[s.name]
    n = {a.shape[0] for a in arrays.values()}
    if len(n) != 1:
        raise OnnxPruneError(f"{path}: arrays have different sample counts {sorted(n)}")
    n_samples = n.pop()
    labels = data[labels_key] if labels_key in data.files else None
    if labels is not None and labels.shape[0] != n_samples:
        raise OnnxPruneError(f"{path}: '{labels_key}' has {labels.shape[0]} entries for {n_samples} samples")
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    step = fixed.pop() if len(fixed) == 1 else batch_size
    n_use = (n_samples // step) * step if fixed else n_samples
    if n_use == 0:
        raise OnnxPruneError(f"{path}: {n_samples} samples, fewer than the model's fixed batch of {step}")
    batches = []
    for start in range(0, n_use, step):
        feeds = {}
        for s in specs:
            a = arrays[s.name][start:start + step]
            feeds[s.name] = a.astype(s.dtype, copy=False)
        batches.append(feeds)
    if labels is not None:
        labels = labels[:n_use]
    return Dataset(batches, labels, f"{path} ({n_use} samples)", "file", path)


def take_samples(data: Dataset, specs: list[InputSpec], n: int, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """The first ``n`` samples of ``data`` as one feed (the model's fixed batch, if it has one).

    Random and file inputs are timed alike: ``n`` samples, where a named batch dim in ``dims``
    (``--dim N=4``) counts as the batch.
    """
    sizes = {_concrete(s, n, dims)[0] for s in specs if s.shape}
    want = max(sizes) if sizes else n
    out = {}
    for s in specs:
        parts, have = [], 0
        for b in data.batches:
            if have >= want:
                break
            a = b[s.name]
            if a.ndim == 0:
                parts = [a]
                break
            parts.append(a[: want - have])
            have += parts[-1].shape[0]
        out[s.name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return out
