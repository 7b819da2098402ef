"""The report as a list of blocks (headings, paragraphs, tables, images), written as REPORT.md and as
one self-contained report.html (images inlined)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from lambexp.base.statuses import MIXED, NOT_REPRODUCED, REPRODUCED


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path  # relative to the report's folder
    alt: str


Block = Heading | Para | Table | Image


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Table):
            out.append("| " + " | ".join(map(_md_cell, b.header)) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows]
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.path.as_posix()})")
        out.append("")
    return "\n".join(out)


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
         "text-align:left;vertical-align:top}th{background:#f4f4f4}img{max-width:100%}"
         "td.yes{color:#1a7f37;font-weight:bold}td.no{color:#c62828;font-weight:bold}"
         "td.mixed{color:#b35900;font-weight:bold}")


def _verdict_class(text: str) -> str:
    """A verdict cell gets its colour: REPRODUCED green, NOT REPRODUCED red, MIXED orange."""
    for prefix, name in ((NOT_REPRODUCED, "no"), (REPRODUCED, "yes"), (MIXED, "mixed")):
        if text.startswith(prefix):
            return f" class='{name}'"
    return ""


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    """One file: images are embedded as base64 data, so the page can be mailed or archived."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{STYLE}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{html.escape(b.text).replace('`', '')}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td{_verdict_class(str(c))}>{html.escape(str(c))}</td>"
                                            for c in row) + "</tr>" for row in b.rows)
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif isinstance(b, Image):
            data = base64.b64encode((folder / b.path).read_bytes()).decode("ascii")
            out.append(f"<p><img alt='{html.escape(b.alt)}' src='data:image/png;base64,{data}'></p>")
    out.append("</body></html>")
    return "\n".join(out)
