"""A page rendered in headless Chromium: a PNG of it, its DOM after the script ran, and every error the browser saw.

    from vision_opd.report.browser import render
    shot = render(Path("runs/demo/report.html"), Path("/tmp/demo.png"), fragment="#show=wrong")
    shot.errors   # [] unless a script error, a failed resource or a console.error happened

    python -m vision_opd.report.browser runs/demo/report.html docs/report_demo.png --height 2000 --palette
    python -m vision_opd.report.browser runs/demo/report.html part.png --height 3000 --rows 1400:3000

(A fragment that scrolls, such as `#examples`, renders blank in headless screenshots: keep rows instead.)

Chromium is Debian's `chromium` package (or $VISION_OPD_CHROMIUM). The page is copied beside a small hook that
records `error` events (scripts and resources), unhandled rejections and `console.error` into an attribute of
the document; the console lines Chromium prints with --enable-logging are read too. Host names resolve to
nothing (--host-resolver-rules), so a page that tried the network would report a failed resource.
"""

from __future__ import annotations

import argparse
import html as html_lib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0")
ATTR = "data-browser-errors"
HOOK = """<script>(function () {
  function note(m) { var d = document.documentElement; d.setAttribute('%s', (d.getAttribute('%s') || '') + m + '\\n'); }
  window.addEventListener('error', function (e) {
    var t = e.target;
    note(t && t !== window && (t.src || t.href) ? 'resource failed: ' + (t.src || t.href) : 'script error: ' + e.message);
  }, true);
  window.addEventListener('unhandledrejection', function (e) { note('unhandled rejection: ' + e.reason); });
  var ce = console.error;
  console.error = function () { note('console.error: ' + Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments); };
})();</script>""" % (ATTR, ATTR)
_CONSOLE = re.compile(r":CONSOLE[^\]]*\]\s*(.*)")


class BrowserError(RuntimeError):
    """Chromium is missing or did not render the page."""


@dataclass
class Rendered:
    png: Path
    dom: str  # the document after its script ran (with the hook's attribute, if any error)
    errors: list[str]  # script errors, failed resources, console errors; empty for a clean page
    seconds: float


def find_chromium() -> str | None:
    """$VISION_OPD_CHROMIUM, else the first Chromium on PATH, else None."""
    env = os.environ.get("VISION_OPD_CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def render(page: Path, png: Path, *, width: int = 1366, height: int = 2000, fragment: str = "", script: str = "",
           chromium: str | None = None, timeout: float = 120.0) -> Rendered:
    """Render `page` (an HTML file) at width x height CSS pixels into `png`; the address ends with `fragment`;
    `script` (JavaScript) runs after the page's own, e.g. to dispatch an event."""
    exe = chromium or find_chromium()
    if exe is None:
        raise BrowserError("no Chromium found: apt-get install chromium (or set VISION_OPD_CHROMIUM)")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    text = Path(page).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="vision-opd-browser-") as tmp:
        copy = Path(tmp) / "page.html"
        text = text.replace("<head>", "<head>" + HOOK, 1)
        if script:
            head, sep, tail = text.rpartition("</body>")
            text = f"{head}<script>{script}</script>{sep}{tail}"
        copy.write_text(text, encoding="utf-8")
        profile = Path(tmp) / "profile"  # a new, empty profile every time
        profile.mkdir()
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", "--dump-dom",
               f"--window-size={width},{height}", copy.as_uri() + fragment]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"chromium did not finish rendering {page} within {timeout:.0f} s") from None
        seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not png.exists():
        raise BrowserError(f"chromium exited with {proc.returncode} and no screenshot: {proc.stderr[-2000:]}")
    dom = proc.stdout
    errors = []
    m = re.search(ATTR + r'="([^"]*)"', dom)
    if m:
        errors += [e for e in html_lib.unescape(m.group(1)).splitlines() if e.strip()]
    for line in proc.stderr.splitlines():
        c = _CONSOLE.search(line)
        if c and re.search(r"Uncaught|Error|Failed", c.group(1)) and not any(c.group(1)[:60] in e for e in errors):
            errors.append("console: " + c.group(1))
    return Rendered(png, dom, errors, seconds)


def shrink_png(path: Path, colours: int = 256) -> Path:
    """Rewrite a screenshot as a palette PNG (a fraction of the size; the page's flat colours survive)."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render an HTML page in headless Chromium to a PNG; print the errors.")
    p.add_argument("page", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--width", type=int, default=1366)
    p.add_argument("--height", type=int, default=2000)
    p.add_argument("--fragment", default="", help="appended to the address, e.g. '#examples' or '#show=wrong'")
    p.add_argument("--rows", default=None, help="keep only these pixel rows of the render, e.g. 1400:2600")
    p.add_argument("--palette", action="store_true", help="save as a palette PNG (for docs/)")
    a = p.parse_args(argv)
    shot = render(a.page, a.png, width=a.width, height=a.height, fragment=a.fragment)
    if a.rows:
        from PIL import Image

        top, bottom = (int(v) for v in a.rows.split(":"))
        Image.open(shot.png).crop((0, top, a.width, bottom)).save(shot.png)
    if a.palette:
        shrink_png(shot.png)
    print(f"{shot.png}: {shot.png.stat().st_size / 1e3:.0f} kB in {shot.seconds:.1f} s; errors: {shot.errors or 'none'}")
    return 1 if shot.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
