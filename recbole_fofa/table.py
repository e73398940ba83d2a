"""The one table formatter: the CLI, the benchmarks, the analyses, the search and the cost report
print through :func:`format_table`.

Rows are dicts (or sequences aligned with ``columns``); cells are formatted by type: floats with
``digits`` decimals below 10,000 and with thousands separators above, ints with separators, None
as ``-``, anything else with ``str``. ``style='text'`` right-aligns columns for a console,
``style='markdown'`` writes a GitHub table (same cells, same alignment).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["format_cell", "format_table", "STYLES"]

STYLES = ("text", "markdown")


def format_cell(value: Any, digits: int = 4) -> str:
    """One cell: ``0.0512``, ``378,880``, ``-`` for None or NaN, ``True``, text as it is."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return f"{int(value):,}"
    if isinstance(value, Real):
        value = float(value)
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def format_table(
    rows: Iterable[Any],
    columns: Sequence[str] | None = None,
    style: str = "text",
    digits: int = 4,
    headers: Mapping[str, str] | None = None,
) -> str:
    """``rows`` as an aligned table.

    ``rows``: dicts (``columns`` defaults to their keys, in first-seen order; a missing key is
    ``-``) or sequences (then ``columns`` names them, one per position). ``headers`` renames
    columns for display. The first column is left-aligned, the others right-aligned.
    """
    if style not in STYLES:
        raise ValueError(f"table style {style!r}: use one of {STYLES}")
    rows = list(rows)
    if columns is None:
        if any(not isinstance(row, Mapping) for row in rows):
            raise ValueError("format_table(): rows that are not dicts need `columns`")
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = list(columns)
    grid = []
    for row in rows:
        if isinstance(row, Mapping):
            values = [row.get(column) for column in columns]
        else:
            values = list(row)
            if len(values) != len(columns):
                raise ValueError(f"format_table(): a row has {len(values)} cells for "
                                 f"{len(columns)} columns {columns}")
        grid.append([format_cell(value, digits) for value in values])
    names = [str((headers or {}).get(column, column)) for column in columns]
    if style == "markdown":
        names = [name.replace("|", "\\|") for name in names]
        grid = [[cell.replace("|", "\\|") for cell in cells] for cells in grid]
    floor = 3 if style == "markdown" else 1  # a markdown rule cell needs a few dashes
    widths = [max(floor, *(len(cells[i]) for cells in [names, *grid]))
              for i in range(len(columns))]

    def line(cells):
        aligned = [cell.ljust(width) if i == 0 else cell.rjust(width)
                   for i, (cell, width) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(aligned) + " |" if style == "markdown" else "  ".join(aligned)

    lines = [line(names)]
    if style == "markdown":
        rule = [("-" * width if i == 0 else "-" * (width - 1) + ":")
                for i, width in enumerate(widths)]
        lines.append("| " + " | ".join(rule) + " |")
    lines.extend(line(cells) for cells in grid)
    return "\n".join(lines)
