"""Evaluation shared by the benchmark scripts: a model's outputs on a dev-set split, per-sample
cosine of embeddings, and the worst output's quality of a pruned model against its original.

Used by bench_quality.py, bench_hidden.py and bench_transformers.py (MiniLM's sentence
embeddings are judged the same way everywhere: per-sample cosine of pruned vs original).
"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

__all__ = ["cosines", "embedding_cosines", "evaluate", "fmt_quality", "run_outputs", "split_outputs"]


def cosines(y0: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity (each sample flattened) of ``y`` against ``y0``."""
    a, b = y0.reshape(len(y0), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    return np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def run_outputs(path_or_session, feeds: dict) -> list[np.ndarray]:
    """Every output of a model (path or onnxruntime session) on one feed dict, on the CPU."""
    from onnxprune.validate.runtime import make_session

    sess = make_session(path_or_session, "cpu") if isinstance(path_or_session, str) else path_or_session
    return sess.run(None, feeds)


def embedding_cosines(original, pruned, feeds: dict, output: int = 0) -> np.ndarray:
    """Per-sample cosine of the pruned model's embeddings (output ``output``) against the original's."""
    return cosines(run_outputs(original, feeds)[output], run_outputs(pruned, feeds)[output])


def split_outputs(path: str, entry: dict, split: str, batch: int = 8) -> list[np.ndarray]:
    """A dev-set model's outputs on its ``calib``/``eval`` split (scripts/devset.py entry), batched."""
    from devset import feeds

    from onnxprune.validate.runtime import make_session

    sess = make_session(path, "cpu")
    data = np.load(entry[split])
    n = len(data[next(iter(entry["inputs"]))])
    first = entry["inputs"][next(iter(entry["inputs"]))]["shape"]
    fixed = first[0] if first and isinstance(first[0], int) and first[0] > 0 else None
    bs = fixed or batch
    parts = [sess.run(None, feeds(entry, data, s, min(n, s + bs))) for s in range(0, n - (n % bs if fixed else 0), bs)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def evaluate(original: str, pruned: str, entry: dict) -> dict:
    """The worst output's quality (cosine, decision agreement by kind; ``validate/quality.py``) on the
    evaluation split, plus top-1 accuracy of both models where the split has labels."""
    import onnx

    from onnxprune.graph import Model
    from onnxprune.search import producer_op
    from onnxprune.validate.quality import measure, output_kind

    a, b = split_outputs(original, entry, "eval"), split_outputs(pruned, entry, "eval")
    m = Model(onnx.load(original, load_external_data=False))
    names = [v.name for v in m.graph.outputs]
    qs = [measure(n, x, y, output_kind(x, producer_op(m, m.producer(n)))) for n, x, y in zip(names, a, b)]
    worst = min(qs, key=lambda q: min(q.cosine, q.decision if q.decision is not None else 1.0))
    res = {"cosine": worst.cosine, "decision": worst.decision, "kind": worst.kind, "output": worst.name}
    data = np.load(entry["eval"])
    if "labels" in data.files and a[0].ndim == 2:
        labels = data["labels"]
        res["accuracy"] = float(np.mean(b[0].argmax(1) == labels[:len(b[0])]))
        res["accuracy_original"] = float(np.mean(a[0].argmax(1) == labels[:len(a[0])]))
    return res


def fmt_quality(ev: dict) -> str:
    """``cos 0.9876 dec 0.950 acc 0.91/0.93`` (decision and accuracy where there are any)."""
    s = f"cos {ev['cosine']:.4f}"
    if ev.get("decision") is not None:
        s += f" dec {ev['decision']:.3f}"
    if "accuracy" in ev:
        s += f" acc {ev['accuracy']:.3f}/{ev['accuracy_original']:.3f}"
    return s
