"""Compare an original and a pruned model with onnxruntime: outputs, accuracy, cost, latency.

Shaped like Polygraphy's comparator: *running* (sessions per provider over one dataset) is
separate from *comparing* (per-output results that are truthy when they pass and say how far
off they were). Checks that always apply: the pruned model runs, its outputs have the
original's shapes and its declared shapes, and they are finite where the original's are.

Validation **fails by default** when the outputs stop meaning the same (:data:`DEFAULTS`):

1. every floating output's cosine similarity to the original's is at least 0.99;
2. the top-1 decision agrees on at least 99% of the samples — argmax over the last axis of a
   2-D output with more than one column (not of a normalised embedding: rows of unit L2 norm),
   equality of an integer or boolean output;
3. with labels, the top-1 accuracy drops by at most 0.01 (one point).

Each limit can be changed or switched off (``None``); ``atol``/``rtol`` per output
(``{"": default, "logits": 1e-3}``) are opt-in. A tolerance naming no output, or a dynamic dim
naming no input dim, is an error. Every report says which limits it applied and the tightest
limits that would still have passed (:meth:`Report.tightest`).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..graph import load_model
from ..cost import count
from ..errors import OnnxPruneError
from ..provenance import SCHEMA_VERSION
from .inputs import Dataset, InputSpec, npz_dataset, random_dataset, take_samples
from .runtime import DEVICE_PROVIDERS, ProviderUnavailable, make_session, thread_count

__all__ = ["run_timed", "measure_latency", "Tolerances", "DEFAULTS", "Failure", "OutputComparison", "ProviderResult", "ModelStats", "Report",
           "Latency", "compare_models", "parse_tolerances", "SCHEMA_VERSION"]

log = logging.getLogger("onnxprune.validate")


@dataclass(frozen=True)
class Tolerances:
    """Pass/fail limits. ``None`` switches a limit off; see the module docstring for the defaults."""

    atol: dict[str, float] = field(default_factory=dict)
    rtol: dict[str, float] = field(default_factory=dict)
    min_cosine: float | None = 0.99
    min_agreement: float | None = 0.99
    max_accuracy_drop: float | None = 0.01

    def get(self, table: dict[str, float], name: str) -> float | None:
        return table.get(name, table.get(""))

    def check_names(self, outputs: list[str]) -> None:
        """Refuse a per-output tolerance naming no output (a typo would otherwise check nothing)."""
        for what, table in (("atol", self.atol), ("rtol", self.rtol)):
            bad = [k for k in table if k and k not in outputs]
            if bad:
                raise OnnxPruneError(f"{what} names output(s) {', '.join(repr(b) for b in bad)}, which the model "
                                     f"does not have; its outputs are {', '.join(outputs)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The limits in force, in one line (printed with every report)."""
        parts = []
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g} per output")
        if self.min_agreement is not None:
            parts.append(f"top-1/decision agreement >= {self.min_agreement:g}")
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop:g} (with labels)")
        for what, table in (("atol", self.atol), ("rtol", self.rtol)):
            for k, v in table.items():
                parts.append(f"{what} {k + ':' if k else ''}{v:g}")
        return "; ".join(parts) or "none (only shapes, finiteness and that the pruned model runs)"


DEFAULTS = Tolerances()


def parse_tolerances(specs: list[str] | None, flag: str) -> dict[str, float]:
    """``["1e-5", "logits:1e-3"]`` -> ``{"": 1e-5, "logits": 1e-3}``."""
    out: dict[str, float] = {}
    for spec in specs or []:
        name, _, value = spec.rpartition(":")
        try:
            out[name] = float(value)
        except ValueError:
            raise OnnxPruneError(f"{flag} '{spec}': expected VALUE or OUTPUT:VALUE, e.g. 1e-4 or logits:1e-3") from None
        if not out[name] >= 0:
            raise OnnxPruneError(f"{flag} {spec}: a tolerance must be a number ≥ 0")
    return out


@dataclass(frozen=True)
class Failure:
    """One failed check: which, on what, the measured value and the limit it broke."""

    check: str  # shape, declared_shape, finite, atol, min_cosine, min_agreement, max_accuracy_drop, run, provider...
    message: str
    output: str | None = None
    value: float | None = None
    limit: float | None = None

    def __str__(self) -> str:
        return self.message


@dataclass
class OutputComparison:
    name: str
    shape_original: list
    shape_pruned: list
    declared_pruned: list
    max_abs: float
    mean_abs: float
    cosine: float | None
    top1_agreement: float | None
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        cos = "n/a" if self.cosine is None else f"{self.cosine:.6f}"
        return f"(max_abs={self.max_abs:.3g}, cosine={cos})"


@dataclass
class Latency:
    """Interleaved timings (ms) of both models on the same feeds, at a stated batch and thread count."""

    original_ms: dict
    pruned_ms: dict
    ratio: float
    repeats: int
    warmup: int
    batch: int | None = None
    threads: int | None = None
    input_shapes: dict = field(default_factory=dict)


@dataclass
class ProviderResult:
    provider: str
    available: bool
    reason: str = ""
    outputs: list[OutputComparison] = field(default_factory=list)
    accuracy_original: float | None = None
    accuracy_pruned: float | None = None
    latency: Latency | None = None
    failures: list[Failure] = field(default_factory=list)
    errors: dict = field(default_factory=dict, repr=False)  # output -> |a-b| sample (for plots; not in to_dict)

    @property
    def passed(self) -> bool:
        return not self.failures and all(self.outputs)

    @property
    def tested(self) -> bool:
        return self.available


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
    inputs: dict
    providers: list[ProviderResult]
    failures: list[Failure] = field(default_factory=list)
    tolerances: Tolerances = DEFAULTS
    feeds: dict = field(default_factory=dict, repr=False)  # the timing feeds (profiled by the report; not in to_dict)

    @property
    def passed(self) -> bool:
        return not self.failures and all(p.passed for p in self.providers)

    def tightest(self) -> dict:
        """The tightest limits under which the tested providers' results would still have passed.

        ``atol`` per output (the largest absolute error seen, rounded up), ``min_cosine`` and
        ``min_agreement`` (the lowest seen, rounded down), ``max_accuracy_drop`` (the largest).
        A limit no result informs is absent.
        """
        atol: dict[str, float] = {}
        cos, agree, drop = [], [], []
        for p in self.providers:
            for c in p.outputs:
                if math.isfinite(c.max_abs):
                    atol[c.name] = max(atol.get(c.name, 0.0), _round(c.max_abs, up=True))
                if c.cosine is not None and math.isfinite(c.cosine):
                    cos.append(c.cosine)
                if c.top1_agreement is not None:
                    agree.append(c.top1_agreement)
            if p.accuracy_original is not None:
                drop.append(p.accuracy_original - p.accuracy_pruned)
        out: dict = {}
        if atol:
            out["atol"] = atol
        if cos:
            out["min_cosine"] = _round(min(cos), up=False)
        if agree:
            out["min_agreement"] = _round(min(agree), up=False)
        if drop:
            out["max_accuracy_drop"] = _round(max(max(drop), 0.0), up=True)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("feeds", None)
        for p in d["providers"]:
            p.pop("errors", None)
        d = {"schema_version": SCHEMA_VERSION, **d}
        d["passed"] = self.passed
        d["ratios"] = {k: _ratio(getattr(self.pruned, k), getattr(self.original, k))
                       for k in ("params", "macs", "flops", "file_bytes")}
        d["tightest_passing"] = self.tightest()
        return d


def _round(x: float, *, up: bool, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits, rounded up or down (a limit that ``x`` still meets)."""
    if x == 0 or not math.isfinite(x):
        return x
    step = 10.0 ** (math.floor(math.log10(abs(x))) - digits + 1)
    v = (math.ceil if up else math.floor)(x / step) * step
    return float(f"{v:.{digits + 2}g}")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def file_bytes(path: str, model=None) -> int:
    """Bytes on disk of a model and the data files it references."""
    from ..outputs import input_files

    m = model if model is not None else load_model(path)
    return sum(os.path.getsize(f) for f in input_files(path, m) if os.path.isfile(f))


def model_stats(path: str) -> ModelStats:
    m = load_model(path)
    c = count(m)
    return ModelStats(path, c.params, c.macs, c.flops, file_bytes(path, m))


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


def _unit_rows(a: np.ndarray) -> bool:
    """Every row has unit L2 norm: a normalised embedding, whose argmax decides nothing."""
    n = np.linalg.norm(a.astype(np.float64), axis=1)
    return bool(n.size) and bool(np.all(np.abs(n - 1.0) < 1e-3))


def _compare_output(name: str, a: np.ndarray, b: np.ndarray, declared: list, tol: Tolerances) -> OutputComparison:
    fails = []
    if a.shape != b.shape:
        fails.append(Failure("shape", f"shape {list(b.shape)} differs from the original's {list(a.shape)}", name))
    if declared and (len(declared) != b.ndim or any(isinstance(d, int) and d > 0 and d != s
                                                    for d, s in zip(declared, b.shape))):
        fails.append(Failure("declared_shape", f"declared shape {declared} but produced {list(b.shape)}", name))
    if a.shape != b.shape:
        return OutputComparison(name, list(a.shape), list(b.shape), declared, float("nan"), float("nan"),
                                None, None, fails)
    floating = np.issubdtype(a.dtype, np.floating)
    af, bf = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if (~np.isfinite(bf) & np.isfinite(af)).any():
        fails.append(Failure("finite", "non-finite values where the original is finite", name))
    diff = np.abs(af - bf)
    cosine = top1 = None
    if floating:
        denom = np.linalg.norm(af) * np.linalg.norm(bf)
        cosine = float(af @ bf / denom) if denom > 0 else float(np.array_equal(af, bf))
        if a.ndim == 2 and a.shape[1] > 1 and not _unit_rows(a):
            top1 = float(np.mean(a.argmax(1) == b.argmax(1)))
    elif a.size:  # labels, token ids, masks: the decision is the value itself
        top1 = float(np.mean(a.reshape(a.shape[0], -1) == b.reshape(b.shape[0], -1))) if a.ndim else float(a == b)
    atol, rtol = tol.get(tol.atol, name), tol.get(tol.rtol, name)
    if atol is not None or rtol is not None:
        bound = (atol or 0.0) + (rtol or 0.0) * np.abs(af)
        if (diff > bound).any():
            fails.append(Failure("atol", f"max abs error {diff.max():.3g} exceeds atol={atol or 0} rtol={rtol or 0}",
                                 name, float(diff.max()), atol))
    if tol.min_cosine is not None and cosine is not None and not cosine >= tol.min_cosine:
        fails.append(Failure("min_cosine", f"cosine {cosine:.6f} below {tol.min_cosine:g}", name, cosine,
                             tol.min_cosine))
    if tol.min_agreement is not None and top1 is not None and top1 < tol.min_agreement:
        fails.append(Failure("min_agreement", f"top-1 agreement {top1:.4f} below {tol.min_agreement:g}", name, top1,
                             tol.min_agreement))
    return OutputComparison(name, list(a.shape), list(b.shape), declared, float(diff.max(initial=0.0)),
                            float(diff.mean()) if diff.size else 0.0, cosine, top1, fails)


def _stats(ms: list[float]) -> dict:
    a = np.array(ms)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "min": float(a.min()),
            "mean": float(a.mean())}


def run_timed(sess, feeds: dict):
    """A callable running ``sess`` once on ``feeds`` and returning the ms it took.

    On a GPU provider (CUDA, TensorRT) inputs are copied to the device once and outputs stay
    there (IO binding), so the time is the model's, not the host transfers'; the run is
    synchronised before the clock stops.
    """
    names = [o.name for o in sess.get_outputs()]
    if sess.get_providers()[0] not in DEVICE_PROVIDERS:
        def run() -> float:
            t0 = time.perf_counter()
            sess.run(names, feeds)
            return (time.perf_counter() - t0) * 1e3
        return run
    import onnxruntime as ort

    binding = sess.io_binding()
    kept = []  # the device copies must outlive the binding
    for k, v in feeds.items():
        dev = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), "cuda", 0)
        kept.append(dev)
        binding.bind_ortvalue_input(k, dev)
    for n in names:
        binding.bind_output(n, "cuda", 0)

    def run_bound() -> float:
        binding.synchronize_inputs()
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return (time.perf_counter() - t0) * 1e3 + 0 * len(kept)
    return run_bound


def measure_latency(sess_a, sess_b, feeds: dict, *, warmup: int = 5, repeats: int = 30,
                    threads: int | None = None) -> Latency:
    """Interleaved timing: each repeat times both sessions, alternating which goes first.

    GPU sessions are timed with IO binding (:func:`run_timed`) after the warm-ups.
    """
    from ..progress import progress

    run_a, run_b = run_timed(sess_a, feeds), run_timed(sess_b, feeds)
    for _ in range(warmup):
        run_a()
        run_b()
    ta, tb = [], []
    for r in progress(range(repeats), "latency", unit="runs"):
        order = ((run_a, ta), (run_b, tb))
        for run, acc in (order if r % 2 == 0 else order[::-1]):
            acc.append(run())
    sa, sb = _stats(ta), _stats(tb)
    shapes = {k: list(np.shape(v)) for k, v in feeds.items()}
    first = [s[0] for s in shapes.values() if s]
    return Latency(sa, sb, sb["median"] / sa["median"] if sa["median"] else float("nan"), repeats, warmup,
                   batch=first[0] if first else None, threads=thread_count(threads), input_shapes=shapes)


def _check_dims(dims: dict[str, int] | None, specs: list[InputSpec]) -> None:
    names = {d for s in specs for d in s.shape if isinstance(d, str)}
    bad = [k for k in (dims or {}) if k not in names]
    if bad:
        raise OnnxPruneError(f"dim(s) {', '.join(repr(b) for b in bad)} name no dynamic dim of the model's inputs; "
                             f"its dynamic dims are {', '.join(sorted(names)) or 'none'}")


def _error_sample(a: np.ndarray, b: np.ndarray, n: int = 20000) -> np.ndarray:
    if a.shape != b.shape:
        return np.zeros(0)
    d = np.abs(a.astype(np.float64) - b.astype(np.float64)).ravel()
    if d.size > n:
        d = d[np.random.default_rng(0).choice(d.size, n, replace=False)]
    return d


def check_validation_options(*, batch=1, warmup=0, repeats=1, seed=0, dims=None, tol=None) -> None:
    """Range checks of validation options: the option table's (``options.check``), for the API as the CLI."""
    from ..options import check

    check("batch", batch)
    check("warmup", warmup)
    check("repeats", repeats)
    check("validate_seed", seed)  # the CLI's --seed of validation
    check("dims", dims or None)
    if tol is not None:
        for name, table in (("atol", tol.atol), ("rtol", tol.rtol)):
            for k, v in (table.items() if isinstance(table, dict) else [("", table)]):
                if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
                    raise OnnxPruneError(f"{name} {k + ':' if k else ''}{v!r}: a tolerance must be a number ≥ 0")
        for name in ("min_cosine", "min_agreement", "max_accuracy_drop"):
            check(name, getattr(tol, name))


def compare_models(original: str, pruned: str, *, providers: list[str] = ("cpu",), data: str | None = None,
                   seed: int = 0, batch: int = 1, dims: dict[str, int] | None = None, tol: Tolerances = DEFAULTS,
                   latency: bool = True, warmup: int = 5, repeats: int = 30, strict_providers: bool = False,
                   labels_key: str = "labels", latency_batch: int | None = None, threads: int | None = None,
                   keep_errors: bool = False) -> Report:
    """Run both models on each provider and compare them.

    Args:
        original: path of the reference model.
        pruned: path of the model under test.
        providers: onnxruntime execution providers, short (``cpu``, ``cuda``, ``tensorrt``) or full names.
        data: an ``.npz`` of inputs (and labels), else seeded random inputs.
        seed, batch, dims: random inputs' seed, batch size and named dynamic dims.
        tol: pass/fail limits (:data:`DEFAULTS` unless given).
        latency: time both models (interleaved) on ``latency_batch`` samples (default: ``batch``,
            or the model's fixed batch), random or from ``data`` alike, with ``threads`` intra-op
            threads (default: one per CPU, or the shared pool's).
        strict_providers: an unavailable provider fails the report instead of being "not tested".
        keep_errors: keep a sample of each output's absolute errors (``ProviderResult.errors``).

    Raises:
        OnnxPruneError: a tolerance names no output, a dim names no dynamic dim, unreadable data.
    """
    check_validation_options(batch=batch, warmup=warmup, repeats=repeats, seed=seed, dims=dims, tol=tol)
    declared_orig = _declared_outputs(original)
    tol.check_names(list(declared_orig))
    orig_stats, pruned_stats = model_stats(original), model_stats(pruned)
    declared = _declared_outputs(pruned)
    report = Report(orig_stats, pruned_stats, {}, [], tolerances=tol)
    dataset = lat_feeds = None
    for prov in providers:
        res = ProviderResult(prov, True)
        report.providers.append(res)
        try:
            sa = make_session(original, prov, threads=threads)
            sb = make_session(pruned, prov, threads=threads)
        except ProviderUnavailable as e:
            res.available, res.reason = False, str(e)
            log.warning("provider %s not tested: %s", prov, e)
            if strict_providers:
                res.failures.append(Failure("provider", f"provider {prov} unavailable: {e}"))
            continue
        if dataset is None:
            specs = InputSpec.from_session(sa)
            _check_dims(dims, specs)
            dataset = (npz_dataset(data, specs, labels_key=labels_key) if data
                       else random_dataset(specs, seed=seed, batch=batch, dims=dims))
            if dataset.n_samples == 0:
                raise OnnxPruneError(f"validation inputs {dataset.source} hold no samples; nothing to compare")
            report.inputs = dataset.describe()
            lat_feeds = (take_samples(dataset, specs, latency_batch or batch, dims or {}) if data else
                         random_dataset(specs, seed=seed, batch=latency_batch or batch, dims=dims).batches[0])
            report.feeds = lat_feeds
        outs_a = _run_all(sa, dataset)
        try:
            outs_b = _run_all(sb, dataset)
        except Exception as e:  # onnxruntime's own error types: the pruned model failing to run fails validation
            res.failures.append(Failure("run", f"pruned model failed to run: {' '.join(str(e).split())[:300]}"))
            continue
        names = [o.name for o in sa.get_outputs()]
        names_b = [o.name for o in sb.get_outputs()]
        if names != names_b:
            res.failures.append(Failure("outputs", f"outputs differ: {names} vs {names_b}"))
            continue
        for name, a, b in zip(names, outs_a, outs_b):
            res.outputs.append(_compare_output(name, a, b, declared.get(name, []), tol))
            if keep_errors:
                res.errors[name] = _error_sample(a, b)
        if dataset.labels is not None and outs_a and outs_a[0].ndim == 2:
            y = dataset.labels.reshape(-1)
            res.accuracy_original = float(np.mean(outs_a[0].argmax(1) == y))
            res.accuracy_pruned = float(np.mean(outs_b[0].argmax(1) == y))
            drop = res.accuracy_original - res.accuracy_pruned
            if tol.max_accuracy_drop is not None and drop > tol.max_accuracy_drop:
                res.failures.append(Failure("max_accuracy_drop", f"accuracy drop {drop:.4f} exceeds "
                                            f"{tol.max_accuracy_drop:g}", names[0], drop, tol.max_accuracy_drop))
        if latency:
            res.latency = measure_latency(sa, sb, lat_feeds, warmup=warmup, repeats=repeats, threads=threads)
    if all(not p.available for p in report.providers):
        report.failures.append(Failure("provider", "no requested provider is available: "
                                       + "; ".join(p.reason for p in report.providers)))
    return report
