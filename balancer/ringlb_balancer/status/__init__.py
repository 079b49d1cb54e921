"""The live status page (``GET /status``) and the documents behind it.

``page()`` is the whole page as one self-contained HTML document (its stylesheet and script are
inlined from the package files next to this module, so ``/status`` is the only asset URL and the
page works through any port-forward or path prefix). The JSON it polls comes from ``model``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from ringlb_balancer.status.model import (
    change,
    data,
    keep_samples,
    lookup,
    moved_fraction,
    moved_is_exact,
    series,
)

__all__ = [
    "change",
    "data",
    "keep_samples",
    "lookup",
    "moved_fraction",
    "moved_is_exact",
    "page",
    "series",
]

_CSS_LINK = '<link rel="stylesheet" href="status.css">'
_JS_TAG = '<script src="status.js"></script>'


@lru_cache(maxsize=1)
def page() -> bytes:
    """``page.html`` with ``status.css`` and ``status.js`` inlined (content type text/html)."""
    files = resources.files(__name__)
    html = (files / "page.html").read_text(encoding="utf-8")
    css = (files / "status.css").read_text(encoding="utf-8")
    js = (files / "status.js").read_text(encoding="utf-8")
    if _CSS_LINK not in html or _JS_TAG not in html:
        raise RuntimeError("status/page.html must reference status.css and status.js exactly once")
    html = html.replace(_CSS_LINK, f"<style>\n{css}</style>").replace(_JS_TAG, f"<script>\n{js}</script>")
    return html.encode("utf-8")
