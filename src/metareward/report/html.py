"""HTML building blocks of the report pages: embedded PNG figures, tables, folded text, the page shell.

Every page is one self-contained file: figures are base64 PNGs (matplotlib, Agg backend), styles and
the small script (prompt-id search, expand/collapse all) are inline, and nothing refers to another
file or host. Each figure is an ``<img data-figure="NAME">`` and each table a ``<table data-table="NAME">``
so tests and scripts can find them.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FOLD_CHARS = 240
"""Texts longer than this are folded (a <details> element showing the first line)."""


def png(fig) -> str:
    """The figure as base64 PNG (and closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure(name: str, fig, caption: str) -> str:
    return (
        f'<figure><img data-figure="{name}" alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{png(fig)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def fmt(x: Any, kind: str = "num") -> str:
    """A table cell value: ``pct`` (0-1 as %), ``int``, or a number with 3 significant digits; – for none/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if kind == "pct":
        return f"{100 * x:.1f}%"
    if kind == "int":
        return f"{int(x)}"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return html.escape(str(x))


def table(name: str, header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape text with ``fmt`` or ``html.escape``)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    klass = f' class="{cls}"' if cls else ""
    return f'<table data-table="{name}"{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def folded(text: str, label: str = "") -> str:
    """``text`` in a <pre>; longer than ``FOLD_CHARS``: folded behind its first line (click to expand)."""
    body = f"<pre>{html.escape(text)}</pre>"
    if len(text) <= FOLD_CHARS:
        return (f"<div class=\"label\">{html.escape(label)}</div>" if label else "") + body
    first = text.strip().splitlines()[0] if text.strip() else ""
    preview = html.escape(first[:120] + ("…" if len(first) > 120 else ""))
    return (f'<details class="fold"><summary>{html.escape(label)} <span class="preview">{preview}</span> '
            f'<span class="note">({len(text)} chars)</span></summary>{body}</details>')


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1150px;
color:#222;background:#fff;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}h3{margin-top:1.2em}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .5em;
text-align:right;vertical-align:top}th{background:#f0f0f0}td:first-child{text-align:left}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}img{max-width:100%}
.note{font-size:.85em;color:#555}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.4em;margin:.2em 0;font-size:.85em}
details.fold>summary{cursor:pointer;font-size:.85em}.preview{color:#444;font-family:monospace}
.example{border:1px solid #ccc;border-radius:4px;padding:.3em .8em;margin:.6em 0}
.example>summary{cursor:pointer;font-weight:600}
.tag{display:inline-block;border-radius:3px;padding:0 .35em;font-size:.8em;margin-left:.3em;color:#fff}
.chosen{background:#2a7d2a}.rejected{background:#b03030}.meta{background:#5a4fcf}.tier{background:#888}
.alarm{background:#fff3cd;border-left:4px solid #d39e00;padding:.4em .8em;margin:.4em 0}
.ok{background:#e8f5e9;border-left:4px solid #2a7d2a;padding:.4em .8em}
.swatch{display:inline-block;width:1em;height:1em;vertical-align:middle;margin-right:.3em}
table.matrix td{text-align:center;min-width:2.5em}
#search{font-size:1em;padding:.2em .4em;width:16em}
"""

SCRIPT = """
function mrFilter(q){q=q.trim().toLowerCase();var n=0;
document.querySelectorAll('[data-example]').forEach(function(e){
var hit=!q||e.dataset.prompt.toLowerCase().indexOf(q)>=0;e.style.display=hit?'':'none';if(hit)n++;});
var c=document.getElementById('search-count');if(c)c.textContent=n+' shown';}
function mrExpand(open){document.querySelectorAll('#examples details').forEach(function(d){d.open=open;});}
"""


def page(title: str, body: str, script: bool = False) -> str:
    """The whole HTML document (inline CSS; the inline script only when the body uses it)."""
    js = f"<script>{SCRIPT}</script>" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style>{js}</head>"
        f"<body>\n{body}\n</body></html>\n"
    )
