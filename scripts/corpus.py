"""Corpus runner: export many architectures (random weights) with both torch exporters and check onnxprune on each.

For every model and exporter (TorchScript ``dynamo=False``, opset 17; ``dynamo=True``, opset 18; dynamic
batch axis; IR version capped at 10 so onnxruntime loads it), in its own subprocess with a timeout:

1. ``onnxprune inspect MODEL --json``: channel groups, prunable groups, barrier reasons;
2. ``onnxprune prune MODEL -o OUT --ratio 0.5 --round-to 8 --json``: exit code, MACs before/after;
3. ``onnx.checker.check_model(OUT, full_check=True)`` and an onnxruntime CPU run of OUT;
4. the oracle (``onnxprune.testing.check_oracle``: structural removal == consumer-side zeroing),
   valid when ``max_err <= 2e-4 * max(1, scale)``; integer inputs get token ids in [0, 100),
   attention masks of ones, token type ids of zeros.

Row statuses: ``ok`` (pruned, checker, ORT and oracle ok, MACs reduced), ``ok-nothing-prunable`` (valid,
no MACs removed), ``barrier`` (clean exit 1 with a one-line reason), ``export-failed``, ``invalid``
(checker/ORT/oracle failed), ``crash`` (a traceback from onnxprune: exit code not 0/1/2, or "Traceback"
on stderr, or an unexpected exception inside the oracle), ``timeout`` (the row's subprocess ran past
``--timeout``). "Valid" = ok, ok-nothing-prunable or barrier (the output, if any, is correct).

Models: a few torch-only ones defined here (``tiny_cnn``, and ``bert_tiny`` & co. from transformers
configs, never downloaded), torchvision classifiers and segmentation models, timm models
(``pretrained=False``), HF transformers from small configs (2 layers, hidden 64, 4 heads, FFN 128,
vocab 1000), and real trained models from ``scripts/devset.py`` (``gather(cache_dir)``) when it exists.
Detection models (Faster R-CNN, SSD, RetinaNet…) are left out: they call ``torchvision::nms``,
whose kernel is in torchvision's CUDA-linked ``_C`` extension.

Install the extras WITHOUT dependencies (their dependencies would replace torch 2.13.0+cpu), and into a
folder of their own rather than site-packages: with torchvision importable, ``transformers`` imports it
while loading any model (``from transformers import BertModel`` then fails on the missing
``torchvision::nms`` of the CUDA-linked ``_C``), which would break the rest of the test suite. This
script puts ``--extras`` (default ``.venv/corpus-extras``) on ``sys.path`` only in its own workers, after
declaring the ``torchvision::nms``/``qnms`` schemas so the pure-Python models load::

    .venv/bin/pip install --no-deps --target .venv/corpus-extras "torchvision==0.28.*" timm
    .venv/bin/pip list | grep -E "^torch |onnxruntime"   # torch must still be 2.13.0+cpu
    # timm also needs huggingface_hub, safetensors, pyyaml (present with transformers)

Usage::

    .venv/bin/python scripts/corpus.py                       # everything available (~30-40 min on 2 cores)
    .venv/bin/python scripts/corpus.py --subset ci           # bounded subset (< 4 min on 2 cores)
    .venv/bin/python scripts/corpus.py --only 'resnet|bert' --exporters dynamo --json out.json --md out.md

Nothing is written into the repository: models and results go to ``--out-dir`` (default: a temp dir).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import importlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXPORTERS = ("torchscript", "dynamo")
OPSET = {"torchscript": 17, "dynamo": 18}
TOL = 2e-4  # oracle: max_err <= TOL * max(1, scale)
RATIO, ROUND_TO = 0.5, 8
VALID = ("ok", "ok-nothing-prunable", "barrier")
STATUSES = ("ok", "ok-nothing-prunable", "barrier", "export-failed", "invalid", "crash", "timeout")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# --------------------------------------------------------------------------------------------- imports

def import_torchvision():
    """Import torchvision without its CUDA-linked ``_C``: declare the ops its meta registrations need."""
    import torch

    for name in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except Exception as e:  # noqa: BLE001 - already defined (the real extension loaded, or a second call)
            print(f"corpus: torchvision::{name} not defined here ({type(e).__name__}: {e})", file=sys.stderr)
    import torchvision

    return torchvision


DEFAULT_EXTRAS = os.environ.get("ONNXPRUNE_CORPUS_EXTRAS") or os.path.join(sys.prefix, "corpus-extras")


def use_extras(path: str | None) -> bool:
    """Put the extras folder (torchvision, timm) first on ``sys.path``; True if it exists."""
    if not path or not os.path.isdir(path):
        return False
    path = os.path.abspath(path)
    if path not in sys.path:
        sys.path.insert(0, path)
        importlib.invalidate_caches()
    return True


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------------------------- models

class Spec:
    """One model: ``build()`` returns (module, example args, input names); ``requires`` are import names."""

    def __init__(self, name, family, build, requires=(), ci=False, big=False):
        self.name, self.family, self.build, self.requires, self.ci, self.big = name, family, build, requires, ci, big


def _perturb(module, seed: int = 0):
    """Non-trivial norm statistics and 1-D parameters, so pruning changes outputs (the oracle is not vacuous)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            rm, rv = getattr(mod, "running_mean", None), getattr(mod, "running_var", None)
            if isinstance(rm, torch.Tensor) and isinstance(rv, torch.Tensor) and rm.is_floating_point():
                rm.copy_(torch.randn(rm.shape, generator=g) * 0.1)
                rv.copy_(torch.rand(rv.shape, generator=g) + 0.5)
        for p in module.parameters():
            if p.ndim == 1 and p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return module.eval()


def _image(size, ch=3, batch=2):
    import torch

    return (torch.randn(batch, ch, size, size, generator=torch.Generator().manual_seed(0)),), ["input"]


def _tokens(seq=16, batch=2, names=("input_ids", "attention_mask")):
    import torch

    ids = torch.randint(0, 100, (batch, seq), generator=torch.Generator().manual_seed(0))
    args = {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    return tuple(args[n] for n in names), list(names)


def tiny_cnn():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                   nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                   nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(x + self.f(x))

    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
            self.b1 = Block(32)
            self.a = nn.Sequential(nn.Conv2d(32, 24, 1), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(32, 40, 3, padding=1), nn.ReLU())
            self.down = nn.Sequential(nn.Conv2d(64, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
            self.b2 = Block(64)
            self.head = nn.Sequential(nn.Linear(64 * 8 * 8, 48), nn.ReLU(), nn.Linear(48, 10))

        def forward(self, x):
            x = self.b1(self.stem(x))
            x = torch.cat([self.a(x), self.b(x)], 1)
            x = self.b2(self.down(x))
            return self.head(torch.flatten(x, 1))

    torch.manual_seed(0)
    return (_perturb(TinyCNN()), *_image(32))


def tv(name, size=64, seg=False, **kw):
    def build():
        import torch

        tvm = import_torchvision()
        torch.manual_seed(0)
        if seg:
            m = getattr(tvm.models.segmentation, name)(weights=None, weights_backbone=None, aux_loss=False, **kw)

            class Seg(torch.nn.Module):
                def __init__(self, m):
                    super().__init__()
                    self.m = m

                def forward(self, x):
                    return self.m(x)["out"]

            m = Seg(m)
        else:
            m = tvm.models.get_model(name, weights=None, **kw)
        return (_perturb(m), *_image(size))

    return build


def tm(name, size=64, **kw):
    def build():
        import timm
        import torch

        torch.manual_seed(0)
        return (_perturb(timm.create_model(name, pretrained=False, **kw)), *_image(size))

    return build


def hf(kind, attn="sdpa"):
    """A HF model from a small config; ``attn``: the attention implementation (``sdpa`` is transformers' default)."""

    def build():
        import torch
        import transformers as T

        small = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "intermediate_size": 128, "max_position_embeddings": 64}
        names = ("input_ids", "attention_mask")
        if kind == "bert":
            cfg = T.BertConfig(**small)
        elif kind == "distilbert":
            cfg = T.DistilBertConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                     max_position_embeddings=64)
        elif kind == "gpt2":
            cfg = T.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=64,
                               use_cache=False)
        elif kind == "llama":
            cfg = T.LlamaConfig(**small, num_key_value_heads=2, use_cache=False)
        elif kind == "t5":
            cfg = T.T5Config(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                             use_cache=False)
        elif kind in ("vit", "vit_p4"):  # vit_p4: 64 patches, the patch embedding a few % of MACs as in real ViTs
            cfg = T.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                              image_size=32, patch_size=8 if kind == "vit" else 4)
        elif kind == "vit_b_prop":
            # ViT-B/16's proportions at 224: the patch embedding (the hidden stream's only producer, kept
            # unless --hidden-ratio) is 0.66% of the MACs; here 0.65% (8 layers, MLP ratio 4, 64 patches).
            # The "vit" row (2 layers, 16 patches) has it at 14%: its 0.571 MACs kept is that share kept whole.
            cfg = T.ViTConfig(hidden_size=64, num_hidden_layers=8, num_attention_heads=4, intermediate_size=256,
                              image_size=32, patch_size=4)
        elif kind == "whisper":
            cfg = T.WhisperConfig(vocab_size=1000, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                                  encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
                                  num_mel_bins=16, max_source_positions=32, max_target_positions=32,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
        else:
            raise ValueError(kind)
        torch.manual_seed(0)
        if kind == "t5":
            model = T.T5EncoderModel._from_config(cfg, attn_implementation=attn)
        elif kind == "whisper":
            model = T.WhisperModel._from_config(cfg, attn_implementation=attn).get_encoder()
        else:
            model = T.AutoModel.from_config(cfg, attn_implementation=attn)
        model = _perturb(model)

        if kind == "whisper":
            class Audio(torch.nn.Module):
                def __init__(self, m):
                    super().__init__()
                    self.m = m

                def forward(self, input_features):
                    return self.m(input_features=input_features).last_hidden_state

            feats = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
            return Audio(model), (feats,), ["input_features"]

        if kind in ("vit", "vit_p4", "vit_b_prop"):
            class Vision(torch.nn.Module):
                def __init__(self, m):
                    super().__init__()
                    self.m = m

                def forward(self, pixel_values):
                    return self.m(pixel_values=pixel_values).last_hidden_state

            args, _ = _image(32)
            return Vision(model), args, ["pixel_values"]

        class Text(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return (Text(model), *_tokens(names=names))

    return build


def specs() -> list[Spec]:
    # vit_b_16 (torchvision): nn.MultiheadAttention; TorchScript merges the batch into the heads
    # (view(S, B·H, D)), which the Reshape rule follows at the analysed batch 1 (rules/reshape.py).
    # swin_t: both exporters give 30 groups, 24 prunable (17802 of 20338 channels). TorchScript keeps 3
    # Pad barriers (PatchMerging's F.pad, pads computed Concat → Reshape(-1, 2) → Slice → Transpose →
    # Reshape, and the graph layer's static evaluator has no Transpose): they pin only the hidden
    # stream, which LayerNorm pins anyway unless --hidden-ratio is given. With --hidden, TorchScript's
    # hidden groups of stages 1-3 stay pinned (dynamo: prunable): besides those Pads, the attention
    # scale (C // heads) ** -0.5 is computed from the hidden size read at run time (Shape → Div → Pow).
    TV, TIMM, HF = ("torchvision",), ("timm",), ("transformers",)
    out = [Spec("tiny_cnn", "torch", tiny_cnn, ci=True),
           Spec("bert_tiny", "hf", hf("bert"), HF, ci=True)]
    for name, size, kw, ci in [
            ("resnet18", 64, {}, True), ("resnext50_32x4d", 64, {}, False), ("wide_resnet50_2", 64, {}, False),
            ("vgg11", 224, {}, False), ("densenet121", 64, {}, False),
            ("googlenet", 64, {"aux_logits": False, "init_weights": True}, False),
            ("inception_v3", 96, {"aux_logits": False, "init_weights": True}, False),
            ("mobilenet_v2", 64, {}, True), ("mobilenet_v3_small", 64, {}, False), ("efficientnet_b0", 64, {}, False),
            ("efficientnet_v2_s", 64, {}, False), ("mnasnet0_5", 64, {}, False),
            ("shufflenet_v2_x0_5", 64, {}, True), ("squeezenet1_0", 64, {}, False), ("regnet_y_400mf", 64, {}, False),
            ("convnext_tiny", 64, {}, False), ("vit_b_16", 64, {"image_size": 64}, False), ("swin_t", 64, {}, False)]:
        out.append(Spec(name, "torchvision", tv(name, size, **kw), TV, ci=ci, big=name in ("vit_b_16", "vgg11")))
    for name in ("deeplabv3_mobilenet_v3_large", "fcn_resnet50", "lraspp_mobilenet_v3_large"):
        out.append(Spec(name, "torchvision-seg", tv(name, 64, seg=True), TV))
    for name, size, kw in [("resnet18d", 64, {}), ("efficientnet_lite0", 64, {}), ("mobilevitv2_050", 64, {}),
                           ("convnext_atto", 64, {}), ("regnetx_002", 64, {}), ("ghostnet_100", 64, {}),
                           ("deit_tiny_patch16_224", 64, {"img_size": 64}), ("pvt_v2_b0", 64, {})]:
        out.append(Spec("timm/" + name, "timm", tm(name, size, **kw), TIMM))
    for kind in ("distilbert", "gpt2", "llama", "t5", "vit", "vit_p4", "vit_b_prop", "whisper"):
        out.append(Spec(f"hf/{kind}", "hf", hf(kind), HF))
    return out


CI_MODELS = ("tiny_cnn", "bert_tiny", "resnet18", "mobilenet_v2", "shufflenet_v2_x0_5")


def _load_devset():
    spec = importlib.util.spec_from_file_location("onnxprune_devset", os.path.join(HERE, "devset.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (dataclasses & co. look their module up)
    spec.loader.exec_module(mod)
    return mod


def real_models(cache_dir: str) -> list[dict]:
    """Rows from ``scripts/devset.py``'s ``gather(cache_dir)`` when it exists; [] (with a note) otherwise."""
    path = os.path.join(HERE, "devset.py")
    if not os.path.exists(path):
        print("note: scripts/devset.py not found: no real trained models", file=sys.stderr)
        return []
    try:
        mod = _load_devset()
        items = list(mod.gather(cache_dir))
    except BaseException as e:  # noqa: BLE001 - a broken helper never stops the corpus
        print(f"note: scripts/devset.py failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
              "no real trained models", file=sys.stderr)
        return []
    good = []
    for it in items:
        if isinstance(it, dict) and it.get("name") and it.get("path") and os.path.exists(it["path"]):
            good.append(it)
        else:
            print(f"note: devset entry skipped (needs name and an existing path): {it!r:.200}", file=sys.stderr)
    return good


# --------------------------------------------------------------------------------------------- worker

def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[:limit]


def _first_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return (lines[0] if lines else "")[:limit]


def _tail(text: str, n: int = 6) -> str:
    return "\n".join((text or "").rstrip().splitlines()[-n:])


def export(spec: Spec, exporter: str, path: str) -> None:
    import onnx
    import torch

    module, args, names = spec.build()
    module.eval()
    # (not under no_grad: eval + no_grad sends nn.MultiheadAttention down its fused fast path,
    # aten::_native_multi_head_attention, which the TorchScript exporter cannot export)
    if True:
        if exporter == "dynamo":
            batch = torch.export.Dim("batch")
            # (no output_names: with dynamo they break SSA in torch 2.13)
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET[exporter], input_names=names,
                                     dynamic_shapes=tuple({0: batch} for _ in args), verbose=False)
            proto = prog.model_proto
        else:
            import io

            buf = io.BytesIO()
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=OPSET[exporter], input_names=names,
                              dynamic_axes={n: {0: "batch"} for n in names})
            proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = min(proto.ir_version, 10)  # onnx 1.23 writes IR 14, onnxruntime 1.31 reads up to 10
    onnx.save(proto, path)


def make_feeds(proto, batch: int = 2, seed: int = 0, other_dim: int = 16) -> dict:
    """Random inputs by declared type (``onnxprune.testing.random_feeds``); other dynamic dims 16."""
    from onnxprune.testing import random_feeds

    return random_feeds(proto, batch=batch, seed=seed, other_dim=other_dim)


def real_feeds(job: dict):
    """Two samples of a dev-set model's eval split (devset.feeds follows its layout); None if not available."""
    entry = job.get("entry") or {}
    if not entry.get("eval") or not os.path.exists(entry["eval"]) or not entry.get("inputs"):
        return None
    try:
        import numpy as np

        mod = _load_devset()
        data = np.load(entry["eval"])
        if mod is not None and hasattr(mod, "feeds"):
            n = len(data[next(iter(entry["inputs"]))])
            first = entry["inputs"][next(iter(entry["inputs"]))].get("shape") or []
            fixed = first[0] if first and isinstance(first[0], int) and first[0] > 0 else None
            bs = fixed or (1 if entry.get("layout") else min(2, n))
            return mod.feeds(entry, data, 0, bs)
        return {k: data[k][:2] for k in entry["inputs"]}
    except Exception as e:  # noqa: BLE001
        print(f"note: eval data of {job['name']} not usable ({type(e).__name__}: {e}); random inputs",
              file=sys.stderr)
        return None


def _cli(args: list[str], timeout: float) -> dict:
    t = time.time()
    try:
        p = subprocess.run([sys.executable, "-m", "onnxprune", *args], check=False, capture_output=True,
                           text=True, timeout=max(5.0, timeout), cwd=REPO)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (
            e.stdout or ""), f"timed out after {timeout:.0f}s"
    return {"rc": rc, "stdout": out, "stderr": err, "s": round(time.time() - t, 2)}


_NAME_RE = [
    (re.compile(r"'[^']*'"), "'…'"),
    (re.compile(r'"[^"]*"'), '"…"'),
    (re.compile(r"(?<![\w])/[\w./:\-\[\]]*"), "<node>"),   # /layer1/0/Add, /model/Conv_3 ...
    (re.compile(r"\b(?:node|onnx|val|_?v)_[\w.]+"), "<name>"),
    (re.compile(r"\b[\w.]*(?:Conv|Add|Mul|MatMul|Gemm|Concat|Reshape|Transpose|Slice|Split|Gather|Softmax|Sub|Div|"
                r"Expand|Where|Flatten|Pad|Resize|ReduceMean|LayerNorm\w*|Sigmoid|Relu|Erf|Pow)_\d+[\w.]*"), "<name>"),
    (re.compile(r"\d+"), "N"),
]


def normalize_reason(reason: str) -> str:
    r = reason or ""
    for pat, rep in _NAME_RE:
        r = pat.sub(rep, r)
    return re.sub(r"\s+", " ", r).strip()[:160]


def _is_crash(rc, stderr: str) -> bool:
    return rc not in (0, 1, 2) or "Traceback" in (stderr or "")


def worker(job: dict) -> None:
    """Run one row; write the result JSON after every step (a timeout still leaves what was done)."""
    res = dict(job.get("row", {}))
    res.update(model=job["name"], exporter=job["exporter"], kind=job["kind"], status=None, steps={})
    result_path = job["result"]
    t_row = time.time()
    deadline = t_row + job["timeout"] - 5

    def save(**kw):
        res.update(kw)
        res["time_s"] = round(time.time() - t_row, 2)
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, result_path)

    def left():
        return deadline - time.time()

    model = job.get("path")
    # -- export
    if job["kind"] != "real":
        use_extras(job.get("extras"))
        if available("torchvision"):  # before transformers, which imports torchvision when it can
            try:
                import_torchvision()
            except Exception as e:  # noqa: BLE001 - the row runs without torchvision; say why
                print(f"corpus: torchvision not imported ({type(e).__name__}: {e})", file=sys.stderr)
        try:
            import torch

            torch.set_num_threads(max(1, job.get("threads", 1)))
        except Exception as e:  # noqa: BLE001 - torch is optional for a row
            print(f"corpus: torch threads not set ({type(e).__name__}: {e})", file=sys.stderr)
        model = os.path.join(job["out_dir"], "models", f"{job['slug']}.onnx")
        t = time.time()
        save(step="export")
        try:
            spec = {s.name: s for s in specs()}[job["name"]]
            export(spec, job["exporter"], model)
        except BaseException as e:  # noqa: BLE001
            res["steps"]["export"] = {"s": round(time.time() - t, 2)}
            msg = _first_line(f"{type(e).__name__}: {e}") or type(e).__name__
            save(status="export-failed", error=msg, traceback=_tail(traceback.format_exc(), 8))
            return
        res["steps"]["export"] = {"s": round(time.time() - t, 2)}
    res["path"] = model
    try:
        res["size_mb"] = round(os.path.getsize(model) / 2**20, 2)
    except OSError:
        pass
    save(step="inspect")

    def cli_step(step: str, argv: list[str]):
        """Run one CLI step; None (after saving a crash or barrier row) unless it exited 0."""
        r = _cli(argv, left())
        res["steps"][step] = {"rc": r["rc"], "s": r["s"], "stderr": _one_line(r["stderr"])}
        if _is_crash(r["rc"], r["stderr"]):
            save(status="crash", error=f"{step}: {_one_line(r['stderr'])}", traceback=_tail(r["stderr"], 8))
            return None
        if r["rc"] != 0:
            save(status="barrier", error=f"{step}: {_one_line(r['stderr'])}")
            return None
        return r

    # -- 1. inspect
    r = cli_step("inspect", ["inspect", model, "--json"])
    if r is None:
        return
    try:
        ins = json.loads(r["stdout"])
    except ValueError:
        save(status="crash", error="inspect --json printed no JSON", traceback=_tail(r["stdout"] + r["stderr"]))
        return
    groups = ins.get("groups", [])
    res["groups_total"] = len(groups)
    res["groups_prunable"] = sum(1 for g in groups if g.get("prunable", 0) > 0)
    res["channels"], res["prunable_channels"] = ins.get("channels"), ins.get("prunable_channels")
    res["macs_before"] = ins.get("cost", {}).get("macs")
    tally = collections.Counter()
    for b in ins.get("barriers", []):
        tally[f"{b.get('op', '?')}: {normalize_reason(b.get('reason', ''))}"] += 1
    gtally = collections.Counter()
    for g in groups:
        if g.get("prunable", 0) < g.get("channels", 0):
            for why in g.get("reasons", [])[:1]:
                gtally[normalize_reason(why)] += 1
    res["barriers"] = dict(tally.most_common())
    res["group_reasons"] = dict(gtally.most_common())
    res["top_barrier"] = (tally.most_common(1) or gtally.most_common(1) or [("", 0)])[0][0]
    save(step="prune")

    # -- 2. prune
    out = os.path.join(job["out_dir"], "pruned", f"{job['slug']}.onnx")
    r = cli_step("prune", ["prune", model, "-o", out, "--ratio", str(RATIO), "--round-to", str(ROUND_TO), "--json"])
    if r is None:
        return
    try:
        summ = json.loads(r["stdout"])
        res["macs_before"] = summ["before"]["macs"]
        res["macs_after"] = summ["after"]["macs"]
        res["params_before"], res["params_after"] = summ["before"]["params"], summ["after"]["params"]
        res["removed_channels"] = summ.get("removed_channels")
    except (ValueError, KeyError, TypeError):
        save(status="crash", error="prune --json printed no summary", traceback=_tail(r["stdout"] + r["stderr"]))
        return
    if res["macs_before"]:
        res["macs_kept"] = round(res["macs_after"] / res["macs_before"], 4)
    save(step="check")

    # -- 3. checker + ORT
    import numpy as np
    import onnx

    problems = []
    t = time.time()
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception as e:  # noqa: BLE001
        problems.append(f"checker: {_first_line(f'{type(e).__name__}: {e}')}")
    res["steps"]["checker"] = {"s": round(time.time() - t, 2), "ok": not problems}
    original = onnx.load(model)
    feeds = real_feeds(job) if job["kind"] == "real" else None
    if feeds is None:
        feeds = make_feeds(original)
    t = time.time()
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, job.get("threads", 1))
        sess = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
        outs = sess.run(None, feeds)
        if not all(np.all(np.isfinite(o)) for o in outs if np.issubdtype(np.asarray(o).dtype, np.floating)):
            problems.append("ort: non-finite outputs")
        res["steps"]["ort"] = {"s": round(time.time() - t, 2), "ok": True}
    except Exception as e:  # noqa: BLE001
        res["steps"]["ort"] = {"s": round(time.time() - t, 2), "ok": False}
        problems.append(f"ort: {_first_line(f'{type(e).__name__}: {e}')}")
    save(step="oracle")

    # -- 4. oracle
    t = time.time()
    crash = None
    try:
        from onnxprune.errors import OnnxPruneError
    except Exception:  # noqa: BLE001 - the library is being rewritten: never let this stop the row
        OnnxPruneError = ()
    try:
        from onnxprune.testing import check_oracle

        o = check_oracle(original, ratio=RATIO, round_to=ROUND_TO, feeds=feeds)
        res["oracle"] = {"max_err": o.max_err, "scale": o.scale, "removed": o.removed,
                         "ok": bool(o.max_err <= TOL * max(1.0, o.scale))}
        if not res["oracle"]["ok"]:
            problems.append(f"oracle: max_err {o.max_err:.3g} > {TOL:g} * max(1, scale {o.scale:.3g})")
    except Exception as e:  # noqa: BLE001
        msg = _first_line(f"{type(e).__name__}: {e}")
        res["oracle"] = {"ok": False, "error": msg}
        if OnnxPruneError and isinstance(e, OnnxPruneError):
            problems.append(f"oracle refused: {msg}")
        elif isinstance(e, (AssertionError, onnx.checker.ValidationError)) or "onnxruntime" in type(e).__module__:
            problems.append(f"oracle: {msg}")
        else:
            crash = (f"oracle: {msg}", _tail(traceback.format_exc(), 8))
    res["steps"]["oracle"] = {"s": round(time.time() - t, 2)}
    if crash:
        save(status="crash", error=crash[0], traceback=crash[1], problems=problems)
        return
    if problems:
        save(status="invalid", error="; ".join(problems), problems=problems)
        return
    if res.get("macs_after") is not None and res["macs_after"] < res["macs_before"]:
        save(status="ok")
        if job.get("clean"):
            try:
                os.remove(out)
            except OSError:
                pass
    else:
        save(status="ok-nothing-prunable")


# --------------------------------------------------------------------------------------------- driver

def _jsonable(obj):
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError):
        return {}


def _slug(name: str, exporter: str) -> str:
    return re.sub(r"[^\w.-]+", "_", f"{name}.{exporter}")


def run_job(job: dict, python: str) -> dict:
    t = time.time()
    jpath = job["result"] + ".job.json"
    with open(jpath, "w") as f:
        json.dump(job, f)
    try:
        os.remove(job["result"])
    except OSError:
        pass
    p = subprocess.Popen([python, os.path.abspath(__file__), "--worker", jpath], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=REPO)
    timed_out = False
    try:
        _, err = p.communicate(timeout=job["timeout"])
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the worker and its onnxprune subprocesses (own session)
        except ProcessLookupError:
            pass
        _, err = p.communicate()
    try:
        with open(job["result"]) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = {"model": job["name"], "exporter": job["exporter"], "kind": job["kind"], "steps": {}}
    res["time_s"] = round(time.time() - t, 2)
    if timed_out:
        res["status"] = "timeout"
        res["error"] = f"timed out after {job['timeout']}s during {res.get('step', 'startup')}"
    elif not res.get("status"):
        res["status"] = "crash"
        res["error"] = f"worker died (rc {p.returncode}) during {res.get('step', 'startup')}: {_one_line(err)}"
        res["traceback"] = _tail(err, 8)
    res.pop("step", None)
    return res


def _fmt_macs(r):
    return f"{r['macs_kept']:.3f}" if r.get("macs_kept") is not None else ""


def table(rows: list[dict]) -> str:
    lines = ["| model | exporter | status | groups prunable/total | MACs kept | time s | top barrier reason / error |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        groups = f"{r['groups_prunable']}/{r['groups_total']}" if "groups_total" in r else ""
        note = r.get("error") if r["status"] not in VALID or r["status"] == "barrier" else r.get("top_barrier", "")
        note = (note or "").replace("|", "\\|")[:200]
        lines.append(f"| {r['model']} | {r['exporter']} | {r['status']} | {groups} | {_fmt_macs(r)} | "
                     f"{r.get('time_s', 0):.0f} | {note} |")
    return "\n".join(lines)


def pivot(rows: list[dict]) -> str:
    """MACs kept and prunable/total groups per model, one column pair per exporter (``--pivot``)."""
    exporters = [e for e in (*EXPORTERS, "real") if any(r["exporter"] == e for r in rows)]
    by = {(r["model"], r["exporter"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    head = "| model | " + " | ".join(f"{e} MACs kept | {e} groups" for e in exporters) + " |"
    lines = [head, "|---|" + "---|---|" * len(exporters)]
    for m in models:
        cells = []
        for e in exporters:
            r = by.get((m, e))
            if r is None:
                cells += ["", ""]
            elif r["status"] in ("ok", "ok-nothing-prunable"):
                oracle = "" if (r.get("oracle") or {}).get("ok") else " (oracle!)"
                cells += [f"{_fmt_macs(r) or '1.000'}{oracle}", f"{r.get('groups_prunable')}/{r.get('groups_total')}"]
            else:
                cells += [r["status"], ""]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(rows: list[dict]) -> dict:
    counts = collections.Counter(r["status"] for r in rows)
    exported = [r for r in rows if r["status"] != "export-failed"]
    valid = [r for r in exported if r["status"] in VALID]
    tally = collections.Counter()
    for r in rows:
        for k, v in (r.get("barriers") or {}).items():
            tally[k] += v
    refusals = collections.Counter(normalize_reason(r.get("error", "")) for r in rows if r["status"] == "barrier")
    return {
        "rows": len(rows), "statuses": {s: counts.get(s, 0) for s in STATUSES},
        "exported": len(exported),
        "valid": len(valid), "valid_pct": round(100.0 * len(valid) / len(exported), 1) if exported else None,
        "pruned_pct": round(100.0 * counts.get("ok", 0) / len(exported), 1) if exported else None,
        "crashes": counts.get("crash", 0),
        "top_barrier_reasons": tally.most_common(15),
        "prune_refusals": refusals.most_common(10),
        "crash_tracebacks": [{"model": r["model"], "exporter": r["exporter"], "error": r.get("error"),
                              "traceback": r.get("traceback", "")} for r in rows if r["status"] == "crash"],
    }


def format_summary(s: dict) -> str:
    out = [f"\n{s['rows']} rows: " + ", ".join(f"{k} {v}" for k, v in s["statuses"].items() if v),
           (f"exported: {s['exported']}; valid (ok, ok-nothing-prunable, barrier): {s['valid']} "
            f"({s['valid_pct']}%); pruned ok: {s['pruned_pct']}%; crashes: {s['crashes']}")]
    if s["top_barrier_reasons"]:
        out.append("\ntop barrier reasons (op: reason, count over all rows):")
        out += [f"  {n:5d}  {k}" for k, n in s["top_barrier_reasons"]]
    if s["prune_refusals"]:
        out.append("\nprune refusals (exit 1):")
        out += [f"  {n:5d}  {k}" for k, n in s["prune_refusals"]]
    if s["crash_tracebacks"]:
        out.append("\ncrashes:")
        for c in s["crash_tracebacks"]:
            out.append(f"  {c['model']} [{c['exporter']}]: {c['error']}")
            out += ["      " + ln for ln in (c["traceback"] or "").splitlines()[-4:]]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="regex on model names")
    ap.add_argument("--subset", choices=("all", "ci"), default="all")
    ap.add_argument("--exporters", default=",".join(EXPORTERS), help="comma-separated: torchscript,dynamo")
    ap.add_argument("--out-dir", help="models and results (default: a new temp dir)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per row (model x exporter)")
    ap.add_argument("--jobs", type=int, default=2, help="rows run in parallel")
    ap.add_argument("--json", help="write rows and summary here")
    ap.add_argument("--md", help="also write the table and summary (markdown) here")
    ap.add_argument("--no-real", action="store_true", help="skip scripts/devset.py")
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "onnxprune-devset"),
                    help="passed to devset.gather")
    ap.add_argument("--keep", action="store_true", help="keep pruned models of ok rows too")
    ap.add_argument("--extras", default=DEFAULT_EXTRAS,
                    help="folder with torchvision/timm installed by pip --target (default %(default)s)")
    ap.add_argument("--from-json", metavar="FILE", help="print the table and summary of a saved --json report")
    ap.add_argument("--pivot", action="store_true", help="also print MACs kept per model x exporter")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        with open(a.worker) as f:
            worker(json.load(f))
        return 0
    if a.from_json:
        with open(a.from_json) as f:
            saved = json.load(f)
        rows = saved["rows"]
        for r in rows:  # (reports written before real rows were labelled "real")
            if r.get("kind") == "real":
                r["exporter"] = "real"
        summary = {**saved.get("summary", {}), **summarize(rows)}
        report(rows, summary, saved.get("out_dir", ""), a, saved.get("settings"))
        return 0

    out_dir = os.path.abspath(a.out_dir or tempfile.mkdtemp(prefix="onnxprune-corpus-"))
    if os.path.commonpath([out_dir, REPO]) == REPO:
        ap.error(f"--out-dir {out_dir} is inside the repository; pick a directory outside it")
    for sub in ("models", "pruned", "results"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    exporters = [e.strip() for e in a.exporters.split(",") if e.strip()]
    bad = [e for e in exporters if e not in EXPORTERS]
    if bad:
        ap.error(f"unknown exporter(s) {bad}; use {','.join(EXPORTERS)}")
    only = re.compile(a.only) if a.only else None
    threads = 1 if a.jobs > 1 else 2

    use_extras(a.extras)
    jobs, skipped = [], collections.defaultdict(list)
    for s in specs():
        if a.subset == "ci" and s.name not in CI_MODELS:
            continue
        if only and not only.search(s.name):
            continue
        missing = [m for m in s.requires if not available(m)]
        if missing:
            skipped[", ".join(missing)].append(s.name)
            continue
        for e in exporters:
            slug = _slug(s.name, e)
            jobs.append({"name": s.name, "exporter": e, "kind": s.family, "slug": slug, "out_dir": out_dir,
                         "result": os.path.join(out_dir, "results", slug + ".json"), "timeout": a.timeout,
                         "threads": threads, "clean": not a.keep, "big": s.big, "extras": a.extras})
    if a.subset != "ci" and not a.no_real:
        for it in real_models(a.cache_dir):
            if only and not only.search(it["name"]):
                continue
            slug = _slug(it["name"], "real")
            row = {k: v for k, v in it.items() if isinstance(v, (str, int, float, bool)) and k not in ("name",)}
            jobs.append({"name": it["name"], "exporter": "real", "kind": "real", "slug": slug,
                         "path": os.path.abspath(it["path"]), "out_dir": out_dir, "row": row,
                         "entry": _jsonable(it), "result": os.path.join(out_dir, "results", slug + ".json"),
                         "timeout": a.timeout, "threads": threads, "clean": not a.keep})
    for mods, names in skipped.items():
        print(f"note: {mods} not installed: skipped {', '.join(names)}", file=sys.stderr)
    print(f"corpus: {len(jobs)} rows, {a.jobs} at a time, timeout {a.timeout}s, out-dir {out_dir}", file=sys.stderr)

    order = sorted(range(len(jobs)), key=lambda i: not jobs[i].get("big"))  # long rows first
    rows: list = [None] * len(jobs)
    t0 = time.time()
    with cf.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futs = {pool.submit(run_job, jobs[i], sys.executable): i for i in order}
        for fut in cf.as_completed(futs):
            i = futs[fut]
            try:
                rows[i] = fut.result()
            except Exception as e:  # noqa: BLE001 - the driver itself failed for this row
                rows[i] = {"model": jobs[i]["name"], "exporter": jobs[i]["exporter"], "kind": jobs[i]["kind"],
                           "status": "crash", "error": f"driver: {type(e).__name__}: {e}", "steps": {}}
            r = rows[i]
            print(f"[{time.time() - t0:6.0f}s] {r['model']:<32} {r['exporter']:<11} {r['status']:<20} "
                  f"{r.get('time_s', 0):6.1f}s  {(r.get('error') or '')[:120]}", file=sys.stderr, flush=True)
    summary = summarize(rows)
    summary["wall_s"] = round(time.time() - t0, 1)
    summary["skipped"] = {k: v for k, v in skipped.items()}
    report(rows, summary, out_dir, a, {"ratio": RATIO, "round_to": ROUND_TO, "tol": TOL, "opset": OPSET,
                                       "timeout": a.timeout})
    return 0


def report(rows, summary, out_dir, a, settings) -> None:
    text = (table(rows) + "\n" + format_summary(summary)
            + f"\n\nwall time {summary.get('wall_s')}s; out-dir {out_dir}\n")
    if getattr(a, "pivot", False):
        text += "\nMACs kept (--ratio %g --round-to %d) per model and exporter:\n\n%s\n" % (RATIO, ROUND_TO, pivot(rows))
    print(text)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "summary": summary, "out_dir": out_dir, "settings": settings}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
