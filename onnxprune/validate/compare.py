"""Compare an original and a pruned model with onnxruntime: outputs, accuracy, cost, latency.

Shaped like Polygraphy's comparator: *running* (sessions per provider over one dataset) is
separate from *comparing* (per-output results that are truthy when they pass and say how far
off they were). Checks that always apply: the pruned model runs, its outputs have the
original's shapes and its declared shapes, and they are finite where the original's are.
Tolerances are opt-in (a pruned model is expected to differ): ``atol``/``rtol`` per output
(``{"": default, "logits": 1e-3}``), ``min_cosine``, ``max_accuracy_drop``.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..graph import load_model
from ..cost import count
from ..errors import OnnxPruneError
from .inputs import Dataset, InputSpec, npz_dataset, random_dataset
from .runtime import ProviderUnavailable, make_session

__all__ = ["Tolerances", "OutputComparison", "ProviderResult", "ModelStats", "Report", "compare_models",
           "parse_tolerances"]


@dataclass(frozen=True)
class Tolerances:
    atol: dict[str, float] = field(default_factory=dict)
    rtol: dict[str, float] = field(default_factory=dict)
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None

    def get(self, table: dict[str, float], name: str) -> float | None:
        return table.get(name, table.get(""))


def parse_tolerances(specs: list[str] | None, flag: str) -> dict[str, float]:
    """``["1e-5", "logits:1e-3"]`` -> ``{"": 1e-5, "logits": 1e-3}``."""
    out: dict[str, float] = {}
    for spec in specs or []:
        name, _, value = spec.rpartition(":")
        try:
            out[name] = float(value)
        except ValueError:
            raise OnnxPruneError(f"{flag} '{spec}': expected VALUE or OUTPUT:VALUE, e.g. 1e-4 or logits:1e-3") from None
    return out


@dataclass
class OutputComparison:
    name: str
    shape_original: list
    shape_pruned: list
    declared_pruned: list
    max_abs: float
    mean_abs: float
    cosine: float
    top1_agreement: float | None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"(max_abs={self.max_abs:.3g}, cosine={self.cosine:.6f})"


@dataclass
class Latency:
    original_ms: dict
    pruned_ms: dict
    ratio: float
    repeats: int
    warmup: int


@dataclass
class ProviderResult:
    provider: str
    available: bool
    reason: str = ""
    outputs: list[OutputComparison] = field(default_factory=list)
    accuracy_original: float | None = None
    accuracy_pruned: float | None = None
    latency: Latency | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures and all(self.outputs)


@dataclass
class ModelStats:
    path: str
    params: int
    macs: int
    flops: int
    file_bytes: int


@dataclass
class Report:
    original: ModelStats
    pruned: ModelStats
    inputs: str
    providers: list[ProviderResult]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures and all(p.passed for p in self.providers)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        d["ratios"] = {k: _ratio(getattr(self.pruned, k), getattr(self.original, k))
                       for k in ("params", "macs", "flops", "file_bytes")}
        return d


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def model_stats(path: str) -> ModelStats:
    from ..outputs import input_files

    m = load_model(path)
    c = count(m)
    size = sum(os.path.getsize(f) for f in input_files(path, m) if os.path.isfile(f))  # the model + its data files
    return ModelStats(path, c.params, c.macs, c.flops, size)


def _declared_outputs(path: str) -> dict[str, list]:
    import onnx

    proto = onnx.load(path, load_external_data=False)
    out = {}
    for v in proto.graph.output:
        dims = v.type.tensor_type.shape.dim
        out[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return out


def _run_all(sess, data: Dataset) -> list[np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    chunks: list[list[np.ndarray]] = [[] for _ in names]
    for feeds in data:
        for k, v in enumerate(sess.run(names, feeds)):
            chunks[k].append(np.asarray(v))
    return [np.concatenate(c, axis=0) if c[0].ndim else c[0] for c in chunks]


def _compare_output(name: str, a: np.ndarray, b: np.ndarray, declared: list, tol: Tolerances) -> OutputComparison:
    fails = []
    if a.shape != b.shape:
        fails.append(f"shape {list(b.shape)} differs from the original's {list(a.shape)}")
    if declared and (len(declared) != b.ndim or any(isinstance(d, int) and d > 0 and d != s
                                                    for d, s in zip(declared, b.shape))):
        fails.append(f"declared shape {declared} but produced {list(b.shape)}")
    if a.shape != b.shape:
        return OutputComparison(name, list(a.shape), list(b.shape), declared, float("nan"), float("nan"),
                                float("nan"), None, fails)
    af, bf = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if (~np.isfinite(bf) & np.isfinite(af)).any():
        fails.append("non-finite values where the original is finite")
    diff = np.abs(af - bf)
    denom = np.linalg.norm(af) * np.linalg.norm(bf)
    cosine = float(af @ bf / denom) if denom > 0 else float(np.array_equal(af, bf))
    top1 = None
    if a.ndim == 2 and a.shape[1] > 1:
        top1 = float(np.mean(a.argmax(1) == b.argmax(1)))
    atol, rtol = tol.get(tol.atol, name), tol.get(tol.rtol, name)
    if atol is not None or rtol is not None:
        bound = (atol or 0.0) + (rtol or 0.0) * np.abs(af)
        if (diff > bound).any():
            fails.append(f"max abs error {diff.max():.3g} exceeds atol={atol or 0} rtol={rtol or 0}")
    if tol.min_cosine is not None and cosine < tol.min_cosine:
        fails.append(f"cosine {cosine:.6f} below {tol.min_cosine}")
    return OutputComparison(name, list(a.shape), list(b.shape), declared, float(diff.max(initial=0.0)),
                            float(diff.mean()) if diff.size else 0.0, cosine, top1, fails)


def _stats(ms: list[float]) -> dict:
    a = np.array(ms)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "min": float(a.min()),
            "mean": float(a.mean())}


def measure_latency(sess_a, sess_b, feeds: dict, *, warmup: int = 5, repeats: int = 30) -> Latency:
    """Interleaved timing: each repeat times both sessions, alternating which goes first."""
    names_a = [o.name for o in sess_a.get_outputs()]
    names_b = [o.name for o in sess_b.get_outputs()]
    for _ in range(warmup):
        sess_a.run(names_a, feeds)
        sess_b.run(names_b, feeds)
    ta, tb = [], []
    for r in range(repeats):
        order = ((sess_a, names_a, ta), (sess_b, names_b, tb))
        for sess, names, acc in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            sess.run(names, feeds)
            acc.append((time.perf_counter() - t0) * 1e3)
    sa, sb = _stats(ta), _stats(tb)
    return Latency(sa, sb, sb["median"] / sa["median"] if sa["median"] else float("nan"), repeats, warmup)


def check_validation_options(*, batch=1, warmup=0, repeats=1, seed=0, dims=None, tol=None) -> None:
    """Range checks of validation options (the CLI's and the API's)."""
    from ..checks import integer, number

    integer("--batch", batch, low=1)
    integer("--warmup", warmup, low=0)
    integer("--repeats", repeats, low=1)
    integer("--validate-seed", seed, low=0)
    for name, v in (dims or {}).items():
        integer(f"--dim {name}", v, low=1)
    if tol is not None:
        for flag, table in (("--atol", tol.atol), ("--rtol", tol.rtol)):
            for v in (table.values() if isinstance(table, dict) else [table]):
                number(flag, v, low=0, optional=True)
        number("--min-cosine", tol.min_cosine, low=-1, high=1, optional=True)
        number("--max-accuracy-drop", tol.max_accuracy_drop, low=0, high=1, optional=True)


def compare_models(original: str, pruned: str, *, providers: list[str] = ("cpu",), data: str | None = None,
                   seed: int = 0, batch: int = 1, dims: dict[str, int] | None = None, tol: Tolerances = Tolerances(),
                   latency: bool = True, warmup: int = 5, repeats: int = 30, strict_providers: bool = False,
                   labels_key: str = "labels") -> Report:
    """Run both models on each provider and compare them.

    Args:
        original: path of the reference model.
        pruned: path of the model under test.
        providers: keys of ``runtime.PROVIDERS``.
        data: an ``.npz`` of inputs (and labels), else seeded random inputs.
        seed, batch, dims: random inputs' seed, batch size and named dynamic dims.
        tol: opt-in tolerances.
        latency: time both models (interleaved).
        strict_providers: an unavailable provider fails the report instead of being noted.
    """
    check_validation_options(batch=batch, warmup=warmup, repeats=repeats, seed=seed, dims=dims, tol=tol)
    orig_stats, pruned_stats = model_stats(original), model_stats(pruned)
    declared = _declared_outputs(pruned)
    report = Report(orig_stats, pruned_stats, "", [])
    dataset = None
    for prov in providers:
        res = ProviderResult(prov, True)
        report.providers.append(res)
        try:
            sa = make_session(original, prov)
            sb = make_session(pruned, prov)
        except ProviderUnavailable as e:
            res.available, res.reason = False, str(e)
            if strict_providers:
                res.failures.append(f"provider {prov} unavailable: {e}")
            continue
        if dataset is None:
            specs = InputSpec.from_session(sa)
            dataset = (npz_dataset(data, specs, labels_key=labels_key) if data
                       else random_dataset(specs, seed=seed, batch=batch, dims=dims))
            if dataset.n_samples == 0:
                raise OnnxPruneError(f"validation inputs {dataset.source} hold no samples; nothing to compare")
            report.inputs = dataset.source
        outs_a = _run_all(sa, dataset)
        try:
            outs_b = _run_all(sb, dataset)
        except Exception as e:  # the pruned model failing at run time is a validation failure
            res.failures.append(f"pruned model failed to run: {' '.join(str(e).split())[:300]}")
            continue
        names = [o.name for o in sa.get_outputs()]
        names_b = [o.name for o in sb.get_outputs()]
        if names != names_b:
            res.failures.append(f"outputs differ: {names} vs {names_b}")
            continue
        for name, a, b in zip(names, outs_a, outs_b):
            res.outputs.append(_compare_output(name, a, b, declared.get(name, []), tol))
        if dataset.labels is not None and outs_a and outs_a[0].ndim == 2:
            y = dataset.labels.reshape(-1)
            res.accuracy_original = float(np.mean(outs_a[0].argmax(1) == y))
            res.accuracy_pruned = float(np.mean(outs_b[0].argmax(1) == y))
            drop = res.accuracy_original - res.accuracy_pruned
            if tol.max_accuracy_drop is not None and drop > tol.max_accuracy_drop:
                res.failures.append(f"accuracy drop {drop:.4f} exceeds {tol.max_accuracy_drop}")
        if latency:
            res.latency = measure_latency(sa, sb, dataset.batches[0], warmup=warmup, repeats=repeats)
    if all(not p.available for p in report.providers):
        report.failures.append("no requested provider is available: " + "; ".join(p.reason for p in report.providers))
    return report
