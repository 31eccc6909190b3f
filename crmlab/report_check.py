"""Check rendered reports as a reviewer's browser shows them (headless Chromium).

Each page is opened at a 1280 px wide window; a script run after the page has loaded reports what a reviewer
would trip over: horizontal scrolling, text cut off by its box (``scrollWidth > clientWidth``), raw values
(``nan``, ``NaT``, ``None``, raw JSON) in the visible text, images without a description. A screenshot of the
first screen of each page is saved beside the findings.

``check_run(run_dir)`` checks a run's ``index.html`` and every ``reports/*.reviewer.html``;
``crmlab check-reports RUN_DIR`` does the same from the command line.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

WIDTH, HEIGHT = 1280, 900
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "headless_shell")
DEFAULT_ALT = "No description has been provided for this image"

# Run in the page once it has loaded; writes its findings as JSON into <pre id="crmlab-check">.
_SCRIPT = r"""
<script>
window.addEventListener("load", function () {
  var out = {scroll_width: document.documentElement.scrollWidth, window_width: window.innerWidth,
             clipped: [], raw: [], images: [], no_alt: []};
  var all = document.body.getElementsByTagName("*");
  for (var i = 0; i < all.length; i++) {
    var el = all[i];
    if (el.id === "crmlab-check" || el.tagName === "SCRIPT" || el.tagName === "STYLE") continue;
    if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1 && (el.innerText || "").trim()) {
      out.clipped.push({tag: el.tagName.toLowerCase(), cls: String(el.className || ""),
                        text: el.innerText.trim().slice(0, 80), scroll: el.scrollWidth, client: el.clientWidth});
    }
  }
  var imgs = document.images;
  for (var j = 0; j < imgs.length; j++) {
    var alt = (imgs[j].getAttribute("alt") || "").trim();
    out.images.push({alt: alt, width: imgs[j].getBoundingClientRect().width});
    if (!alt || alt === "__DEFAULT_ALT__") out.no_alt.push(j);
  }
  var text = document.body.innerText;
  var pats = [/(^|[^\w.-])(nan|NaN|NaT|None|null|undefined)(?![\w.-])/g, /[{\[]\s*"[^"\n]{1,40}"\s*:/g,
              /\b\d{4}-\d{2}-\d{2} 00:00:00\b/g, /\b\d+\.\d{6}\b/g];
  for (var p = 0; p < pats.length; p++) {
    var m; while ((m = pats[p].exec(text)) !== null && out.raw.length < 50) {
      out.raw.push(text.slice(Math.max(0, m.index - 40), m.index + m[0].length + 40).replace(/\s+/g, " "));
    }
  }
  var pre = document.createElement("pre"); pre.id = "crmlab-check"; pre.style.display = "none";
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>
""".replace("__DEFAULT_ALT__", DEFAULT_ALT)


@dataclass
class PageCheck:
    """What the browser found on one page; ``problems`` is empty when the page passes."""
    page: str
    screenshot: str | None = None
    problems: list[str] = field(default_factory=list)
    images: int = 0
    scroll_width: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def find_browser() -> str | None:
    """Path of a headless Chromium on this machine (env CRMLAB_BROWSER first), or None."""
    env = os.environ.get("CRMLAB_BROWSER")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser_cmd(browser: str, *args: str) -> list[str]:
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage",
            "--force-device-scale-factor=1", f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=10000",
            *args]


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def check_page(page: Path, browser: str, screenshot: Path | None = None, timeout: float = 120) -> PageCheck:
    """Open ``page`` in headless Chromium at 1280 px and report its problems (and save a screenshot)."""
    page = Path(page).resolve()
    res = PageCheck(page=str(page))
    html = page.read_text(encoding="utf-8")
    probe = html.replace("</body>", _SCRIPT + "</body>") if "</body>" in html else html + _SCRIPT
    with tempfile.TemporaryDirectory(prefix="crmlab-check-") as tmp:
        copy = page.parent / f".{page.stem}.check.html"        # beside the page, so relative links resolve
        copy.write_text(probe, encoding="utf-8")
        try:
            run = _run(_browser_cmd(browser, f"--user-data-dir={tmp}/dom", "--dump-dom", copy.as_uri()), timeout)
        finally:
            copy.unlink(missing_ok=True)
        found = re.search(r'<pre id="crmlab-check"[^>]*>(.*?)</pre>', run.stdout, re.S)
        if not found:
            res.problems.append(f"the browser did not finish the page (exit {run.returncode}): {run.stderr[-300:]}")
            return res
        data = json.loads(_unescape(found.group(1)))
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            shot = _run(_browser_cmd(browser, f"--user-data-dir={tmp}/shot", f"--screenshot={screenshot}",
                                     page.as_uri()), timeout)
            if shot.returncode == 0 and screenshot.exists():
                res.screenshot = str(screenshot)
            else:
                res.problems.append(f"no screenshot (exit {shot.returncode})")
    res.images, res.scroll_width = len(data["images"]), data["scroll_width"]
    if data["scroll_width"] > data["window_width"]:
        res.problems.append(f"scrolls horizontally: page is {data['scroll_width']} px wide at a "
                            f"{data['window_width']} px window")
    for c in data["clipped"][:10]:
        res.problems.append(f"text cut off in <{c['tag']} class='{c['cls']}'> ({c['scroll']} px of content in "
                            f"{c['client']} px): {c['text']!r}")
    if data["no_alt"]:
        res.problems.append(f"{len(data['no_alt'])} of {len(data['images'])} images have no description (alt text)")
    for snippet in data["raw"][:10]:
        res.problems.append(f"raw value in visible text: ...{snippet}...")
    return res


def _unescape(s: str) -> str:
    return s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&#39;", "'").replace("&amp;", "&")


def check_run(run_dir: Path, browser: str | None = None) -> list[PageCheck]:
    """Check ``index.html`` and every reviewer report of a run; screenshots go to ``run_dir/screenshots``."""
    run_dir = Path(run_dir)
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no headless Chromium found: install Debian's chromium-headless-shell "
                                "(apt-get install chromium-headless-shell) or set CRMLAB_BROWSER")
    pages = [run_dir / "index.html", *sorted((run_dir / "reports").glob("*.reviewer.html"))]
    out = []
    for page in pages:
        if page.exists():
            name = page.name.replace(".reviewer.html", "").replace(".html", "")
            out.append(check_page(page, browser, run_dir / "screenshots" / f"{name}.png"))
    return out
