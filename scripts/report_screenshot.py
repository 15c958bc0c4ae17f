"""Render an onnxprune HTML report in headless chromium: a screenshot, and the DOM's sections.

    python scripts/report_screenshot.py report.html shot.png [--chromium /usr/bin/chromium]

Checks that the page rendered: the PNG is not blank (several distinct colours over a large
area), and the DOM chromium built (``--dump-dom``) has every report section and an embedded
figure. Exits 1 (with the reason) when a check fails. No network, a throw-away profile folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECTIONS = ("summary", "groups", "layers", "ops", "outputs", "accuracy")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(chromium: str, args: list[str], profile: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=timeout)


def render(html_path: str, png: str, *, chromium: str | None = None, size: str = "1200,3000",
           timeout: int = 120) -> tuple[str, dict]:
    """Screenshot ``html_path`` into ``png``; returns (the DOM text, image statistics)."""
    import numpy as np
    from PIL import Image

    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium found (apt-get install chromium)")
    url = "file://" + os.path.abspath(html_path)
    with tempfile.TemporaryDirectory(prefix="onnxprune-chromium-") as profile:
        shot = _run(chromium, [f"--screenshot={os.path.abspath(png)}", f"--window-size={size}", url], profile, timeout)
        if not os.path.exists(png):
            raise RuntimeError(f"chromium wrote no screenshot (exit {shot.returncode}): {shot.stderr[-500:]}")
        dom = _run(chromium, ["--dump-dom", url], profile, timeout).stdout
    img = np.asarray(Image.open(png).convert("RGB"))
    flat = img.reshape(-1, 3)
    white = float(np.mean(flat.min(axis=1) >= 250))
    colours = len(np.unique(flat[:: max(1, flat.shape[0] // 200000)], axis=0))
    return dom, {"width": img.shape[1], "height": img.shape[0], "non_white": 1 - white, "colours": colours}


def check(dom: str, stats: dict) -> list[str]:
    """Reasons the page did not render as expected (empty when it did)."""
    bad = []
    if stats["non_white"] < 0.02 or stats["colours"] < 20:
        bad.append(f"the screenshot looks blank ({stats['non_white']:.1%} non-white, {stats['colours']} colours)")
    for s in SECTIONS:
        if f'id="{s}"' not in dom:
            bad.append(f"section '{s}' missing from the rendered DOM")
    if "data:image/png;base64," not in dom:
        bad.append("no embedded figure in the rendered DOM")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html")
    ap.add_argument("png")
    ap.add_argument("--chromium")
    ap.add_argument("--window-size", default="1200,3000")
    a = ap.parse_args()
    dom, stats = render(a.html, a.png, chromium=a.chromium, size=a.window_size)
    bad = check(dom, stats)
    print(f"{a.png}: {stats['width']}x{stats['height']}, {stats['non_white']:.1%} non-white, "
          f"{stats['colours']} colours; sections found: "
          + ", ".join(s for s in SECTIONS if f'id="{s}"' in dom))
    for b in bad:
        print("FAIL:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
