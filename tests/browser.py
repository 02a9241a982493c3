"""Load an HTML page in headless Chromium: which images failed to load, which script errors were raised,
and optionally a screenshot. Used by tests/test_html_browser.py and docs/example-report/make_example.sh:

    python tests/browser.py docs/example-report/index.html --screenshot docs/example-report/screenshot.png
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional

# Runs before anything else on the page: records script errors, and after `load` writes a marker element
# with the number of images, those that did not decode (naturalWidth 0) and the errors.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  if (e.target && e.target.tagName === 'IMG') return;
  window.__errors.push(String(e.message || e));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                   .map(function (i) { return i.alt || i.src.slice(0, 60); });
  var pre = document.createElement('pre');
  pre.id = '__mmbench_probe';
  pre.textContent = JSON.stringify({images: imgs.length, broken: broken, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args, timeout: int = 120) -> str:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout


def check_page(page: Path, screenshot: Optional[Path] = None, size: str = "1400,2600") -> Dict:
    """{'images': n, 'broken': [alt of each image that did not load], 'errors': [script error messages]}."""
    page = Path(page).resolve()
    text = page.read_text()
    head = re.search(r"<head[^>]*>", text)
    if head is None:
        raise ValueError(f"{page}: no <head>")
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / page.name  # same name, page's folder for relative links: <base>
        probed.write_text(text[:head.end()] + f"<base href='{page.parent.as_uri()}/'>" + PROBE + text[head.end():])
        dom = _run(["--dump-dom", "--virtual-time-budget=3000", probed.as_uri()])
    found = re.search(r"<pre id=\"__mmbench_probe\">(.*?)</pre>", dom, re.S)
    if found is None:
        raise RuntimeError(f"{page}: the page never finished loading (no probe marker in the DOM)")
    result = json.loads(html.unescape(found.group(1)))
    if screenshot is not None:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        _run([f"--screenshot={Path(screenshot).resolve()}", f"--window-size={size}", "--hide-scrollbars",
              page.as_uri()])
    return result


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("--screenshot", type=Path)
    a = ap.parse_args()
    if chromium() is None:
        sys.exit("chromium is not installed (Debian: apt-get install chromium)")
    res = check_page(a.page, a.screenshot)
    print(json.dumps(res))
    sys.exit(1 if res["broken"] or res["errors"] else 0)
