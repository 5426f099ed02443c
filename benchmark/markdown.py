"""Markdown output shared by the report and the comparison."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A GitHub-flavoured markdown table, columns padded; ``align`` holds ``l`` or ``r`` per column (default l)."""
    align = align.ljust(len(header), "l")

    def escape(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    cells = [[escape(text) for text in row] for row in [header, *rows]]
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        padded = (text.rjust(w) if a == "r" else text.ljust(w) for text, w, a in zip(row, widths, align, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if a == "r" else "-" * w for w, a in zip(widths, align, strict=True))
    return "\n".join([line(cells[0]), rule + " |", *(line(row) for row in cells[1:])])
