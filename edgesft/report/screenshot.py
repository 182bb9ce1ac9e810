"""A PNG of ``report.html`` from a headless Chromium, for the README."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from edgesft.errors import EdgesftError
from edgesft.io import atomic_file

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class _PageSize(HTMLParser):
    """A generous estimate of a report page's height in CSS pixels at a given width (no layout engine)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.content = min(width, 1200) - 64
        self.height = 200.0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("width") and a.get("height"):
            w, h = int(a["width"] or 1), int(a["height"] or 0)
            self.height += h * min(1.0, self.content / w) + 30
        elif tag == "tr":
            self.height += 30
        elif tag in ("h1", "h2", "h3"):
            self.height += 45
        elif tag in ("p", "li", "figcaption"):
            self.height += 28


def screenshot(html: Path, png: Path, width: int = 1280) -> bool:
    """Render ``html`` in headless Chromium and write a full-page PNG to ``png``.

    The window is as tall as the page is estimated to be, then the blank bottom is trimmed. Returns False
    when no Chromium (``chromium``, ``chromium-browser`` or ``google-chrome``) is on PATH.

    Raises:
        EdgesftError: the browser ran but wrote no image.
    """
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        return False
    if not Path(html).is_file():
        raise EdgesftError(f"{html}: no such file")
    sizer = _PageSize(width)
    sizer.feed(Path(html).read_text(encoding="utf-8"))
    height = int(sizer.height * 1.3) + 200
    with tempfile.TemporaryDirectory(prefix="edgesft-shot-") as tmp:
        shot = Path(tmp) / "page.png"
        for _ in range(3):  # the estimate was short when the content reaches the window's bottom edge
            _chromium(browser, html, shot, width, height, Path(tmp) / "profile")
            if _trim_bottom(shot):
                break
            height *= 2
        png = Path(png)
        png.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(png) as dest:
            shutil.copyfile(shot, dest)
    return True


def _chromium(browser: str, html: Path, shot: Path, width: int, height: int, profile: Path) -> None:
    cmd = [
        browser,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        f"--screenshot={shot}",
        Path(html).resolve().as_uri(),
    ]
    shot.unlink(missing_ok=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise EdgesftError(f"{browser}: no screenshot of {html} within 120 s") from exc
    if not shot.is_file() or shot.stat().st_size == 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EdgesftError(f"{browser}: no screenshot of {html} (exit {proc.returncode}: {tail[0]})")


def _trim_bottom(png: Path, margin: int = 24) -> bool:
    """Cut the blank (white) rows below the page's content; False when there were none, i.e. the page
    may go on below the window."""
    import numpy as np
    from matplotlib import image

    pixels = image.imread(png)
    rows = np.nonzero((pixels[..., :3] < 0.999).any(axis=(1, 2)))[0]
    last = int(rows[-1]) + 1 + margin if rows.size else margin
    if last >= pixels.shape[0]:
        return False
    image.imsave(png, pixels[:last])
    return True
