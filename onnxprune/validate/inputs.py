"""Inputs for validation: seeded random tensors, or samples from a user ``.npz``.

Random inputs respect each input's element type; dynamic dims take ``dims[name]`` when given,
else ``batch`` for the first axis and 1 elsewhere. The seed is reported with the results.

An ``.npz`` holds one array per graph input (first axis = samples) and optionally labels
(``labels`` key, integer class ids) for accuracy. A single-input model accepts a single array
under any name.
"""
from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import OnnxPruneError

__all__ = ["InputSpec", "Dataset", "random_dataset", "npz_dataset", "take_samples", "read_npz", "check_arrays",
           "check_labels"]

log = logging.getLogger("onnxprune.inputs")

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
                                     "give an .npz of validation data (data)")
            out.append(cls(i.name, tuple(i.shape), _TYPES[i.type]))
        return out

    @classmethod
    def from_model(cls, model) -> list[InputSpec]:
        """The graph inputs (not initializers) of a ``graph.Model``; an unknown type gets ``None``."""
        out = []
        for v in model.graph.inputs:
            if v.name not in model.graph_inputs:
                continue
            try:
                dtype = v.dtype.numpy().type if v.dtype is not None else None
            except Exception:  # a type NumPy has no equivalent for (bfloat16, float8...)
                dtype = None
            shape = () if v.shape is None else tuple(d if isinstance(d, int) else (d.value if hasattr(d, "value")
                                                                                    else None) for d in v.shape)
            out.append(cls(v.name, shape if v.shape is not None else None, dtype))
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


def read_npz(path: str, what: str = "data", hint: str = "numpy.savez(path, <input name>=array, ...)") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (read fully, pickles refused), or a one-line error naming the file/array."""
    if os.path.isdir(path):
        raise OnnxPruneError(f"{path}: a folder, expected an .npz file of {what}")
    if not os.path.isfile(path):
        raise OnnxPruneError(f"{path}: no such {what} file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            kind = "a .npy array" if f.read(6) == b"\x93NUMPY" else "not an .npz archive"
        raise OnnxPruneError(f"{path}: {kind}; save {what} with {hint}")
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {}
            for k in data.files:
                try:
                    out[k] = data[k]
                except ValueError as e:  # object arrays need pickle: refused
                    raise OnnxPruneError(f"{path}: array '{k}' cannot be read without pickle ({e}); "
                                         "store plain numeric arrays") from None
    except OnnxPruneError:
        raise
    except Exception as e:  # BadZipFile, OSError, ValueError, EOFError... of a damaged archive
        raise OnnxPruneError(f"{path}: cannot read as .npz ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return out


def _compatible(actual: np.dtype, expected) -> bool:
    if expected is None:
        return actual.kind in "biuf"
    expected = np.dtype(expected)
    if actual == expected:
        return True
    if expected.kind == "f":
        return actual.kind == "f"
    if expected.kind in "iu":
        return actual.kind in "iu" and np.can_cast(actual, expected, "same_kind")
    return False


def check_arrays(source: str, arrays: dict[str, np.ndarray], specs: list[InputSpec], *,
                 drop_nonfinite: bool = False, labels: np.ndarray | None = None,
                 labels_key: str = "labels") -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Check input arrays against the model's inputs before any work: one line naming the array,
    what was expected and what it is. Returns the arrays (cast to the input types) and labels,
    without the samples holding NaN/Inf when ``drop_nonfinite``.

    Checked: rank ≥ 1 (axis 0 = samples) and the input's rank, every static dim after the
    first, the element type, equal sample counts (labels too), at least one sample, finiteness.
    """
    out: dict[str, np.ndarray] = {}
    by_name = {s.name: s for s in specs}
    for name, a in arrays.items():
        s = by_name.get(name)
        a = np.asarray(a)
        if a.ndim == 0:
            raise OnnxPruneError(f"{source}: array '{name}' is a single value (0-d); expected samples along "
                                 "the first axis")
        want = None if s is None else s.dtype
        if not _compatible(a.dtype, want):
            raise OnnxPruneError(f"{source}: array '{name}' has dtype {a.dtype}, the model's input takes "
                                 f"{np.dtype(want) if want is not None else 'numbers'}")
        if s is not None and s.shape is not None:
            if a.ndim != len(s.shape) or any(isinstance(d, int) and d > 0 and d != n
                                             for d, n in zip(s.shape[1:], a.shape[1:])):
                shown = ["N" if k == 0 else (d if isinstance(d, int) and d > 0 else (d or "?"))
                         for k, d in enumerate(s.shape)]
                raise OnnxPruneError(f"{source}: array '{name}' has shape {list(a.shape)}, the model's input "
                                     f"expects {shown} (first axis = samples)")
        out[name] = a.astype(want, copy=False) if want is not None else a
    counts = {n: a.shape[0] for n, a in out.items()}
    if len(set(counts.values())) > 1:
        raise OnnxPruneError(f"{source}: arrays have different sample counts "
                             + ", ".join(f"{n}: {c}" for n, c in counts.items()))
    n = next(iter(counts.values()), 0)
    if labels is not None:
        labels = check_labels(source, labels, n, labels_key)
    if n == 0:
        raise OnnxPruneError(f"{source}: no samples (the arrays' first axis is 0)")
    bad = np.zeros(n, dtype=bool)
    for name, a in out.items():
        if a.dtype.kind == "f":
            b = ~np.isfinite(a.reshape(n, -1)).all(axis=1)
            if b.any() and not drop_nonfinite:
                raise OnnxPruneError(f"{source}: array '{name}' has NaN/Inf in {int(b.sum())} of {n} samples "
                                     f"(first: sample {int(np.flatnonzero(b)[0])}); clean the data or pass "
                                     "--drop-nonfinite to skip those samples")
            bad |= b
    if bad.any():
        if bad.all():
            raise OnnxPruneError(f"{source}: every sample has NaN/Inf; nothing left after dropping them")
        log.warning("%s: dropped %d of %d samples holding NaN/Inf", source, int(bad.sum()), n)
        out = {k: a[~bad] for k, a in out.items()}
        labels = labels[~bad] if labels is not None else None
    return out, labels


def check_labels(source: str, labels: np.ndarray, n: int, labels_key: str = "labels") -> np.ndarray:
    """Labels are integer class ids, one per sample: shape ``(n,)`` (``(n, 1)`` is flattened)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != n or labels.dtype.kind not in "iu":
        raise OnnxPruneError(f"{source}: '{labels_key}' has shape {list(labels.shape)} and dtype {labels.dtype}; "
                             f"expected {n} integer class ids, shape [{n}]")
    return labels


def npz_dataset(path: str, specs: list[InputSpec], *, batch_size: int = 64, labels_key: str = "labels") -> Dataset:
    data = read_npz(path, "validation data")
    keys = [k for k in data if k != labels_key]
    arrays: dict[str, np.ndarray] = {}
    if len(specs) == 1 and len(keys) == 1:
        arrays[specs[0].name] = data[keys[0]]
    else:
        for s in specs:
            if s.name not in data:
                raise OnnxPruneError(f"{path}: no array named '{s.name}' (the model's input); it has "
                                     f"{', '.join(data) or 'no arrays'}")
            arrays[s.name] = data[s.name]
    arrays, labels = check_arrays(path, arrays, specs, labels=data.get(labels_key), labels_key=labels_key)
    n_samples = next(iter(arrays.values())).shape[0]
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    fixed_batch = fixed.pop() if len(fixed) == 1 else None
    step = fixed_batch or batch_size
    n_use = (n_samples // step) * step if fixed_batch else n_samples
    if n_use == 0:
        raise OnnxPruneError(f"{path}: {n_samples} samples, fewer than the model's fixed batch of {step}")
    batches = []
    for start in range(0, n_use, step):
        feeds = {}
        for s in specs:
            feeds[s.name] = arrays[s.name][start:start + step]
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
