"""A page as data: blocks rendered to Markdown and to one self-contained HTML file.

A block is a tuple: ``("h1" | "h2", text)``, ``("p", text, css class or "")``,
``("img", alt text, source)`` (a file name, or a ``data:`` URI from :func:`png_data_uri`),
``("ul", items)``, ``("table", header, rows)``. The per-sample reports and evaluate.py's
``report.html`` are written with it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence


def png_data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI, so that an HTML page carries its figures."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def markdown_text(value: object) -> str:
    """Text for any Markdown file spermfuse writes: ``&``, ``<`` and ``>`` as entities, so that a
    class, folder or file name holding a tag is shown, never run, by a viewer that renders inline
    HTML (most IDE previews and static-site generators do)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_cell(value: object) -> str:
    """A value as one table cell: escaped as :func:`markdown_text`, and a ``|`` or a line break in a
    class name must not split the row."""
    text = markdown_text(value).replace("|", "\\|")
    return text.replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, every cell escaped (:func:`markdown_cell`)."""
    lines = ["| " + " | ".join(map(markdown_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(blocks: Sequence[tuple]) -> str:
    """The blocks as Markdown (every text escaped: :func:`markdown_text`)."""
    lines = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            lines += ["#" * int(kind[1]) + " " + markdown_text(block[1]), ""]
        elif kind == "p":
            lines += [f"**{markdown_text(block[1])}**" if block[2] else markdown_text(block[1]), ""]
        elif kind == "img":
            lines += [f"![{markdown_text(block[1])}]({block[2]})", ""]
        elif kind == "ul":
            lines += [f"- {markdown_text(item)}" for item in block[1]] + [""]
        else:
            lines.append(markdown_table(block[1], block[2]))
    return "\n".join(lines)


def html_page(blocks: Sequence[tuple], title: str) -> str:
    """The blocks as one self-contained HTML page (no script, no network)."""
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f'<p class="{block[2]}">{html.escape(block[1])}</p>')
        elif kind == "img":
            body.append(f'<img alt="{html.escape(block[1])}" src="{html.escape(block[2])}">')
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block[1]) + "</ul>")
        else:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block[2]
            )
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
    style = (
        "body{font-family:sans-serif;max-width:52em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}.strong{font-weight:bold;font-size:1.1em}"
        ".warning{color:#a00}img{max-width:100%}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
