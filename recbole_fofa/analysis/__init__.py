"""The paper's analyses (sparsity sweep, block selection, gradient conflict) and the
cloud-device protocol simulation; each writes a table (markdown and CSV) and a PNG.

Every analysis returns an :class:`AnalysisResult`; :meth:`AnalysisResult.save` writes
``<output_dir>/<name>.md`` (the table and the findings), ``<output_dir>/<name>.csv`` and keeps the
PNG the analysis drew at ``<output_dir>/<name>.png``; a further table (``AnalysisResult.tables``)
is written below the first one in the markdown and to ``<output_dir>/<name>_<key>.csv``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from recbole_fofa.table import format_table

__all__ = ["AnalysisResult"]


@dataclass
class AnalysisResult:
    """What one analysis measured: rows of a table, plain-language findings and its files."""

    name: str
    rows: List[Dict[str, Any]]
    columns: List[str]
    #: one sentence per finding, with the numbers (e.g. "905 of 943 users share 110011")
    findings: List[str] = field(default_factory=list)
    #: what was run (dataset, seeds, settings), written above the table
    settings: Dict[str, Any] = field(default_factory=dict)
    #: {"png": path, "md": path, "csv": path} once written (and "<key>_csv" per further table)
    files: Dict[str, str] = field(default_factory=dict)
    #: further tables, ``{key: (title, rows, columns)}``, in the order they are shown
    tables: Dict[str, Tuple[str, List[Dict[str, Any]], List[str]]] = field(default_factory=dict)

    def table(self, style: str = "text") -> str:
        return format_table(self.rows, self.columns, style=style)

    def _further_tables(self, style: str) -> List[str]:
        lines = []
        for title, rows, columns in self.tables.values():
            heading = f"## {title}" if style == "markdown" else f"{title}:"
            lines += ["", heading, "", format_table(rows, columns, style=style)]
        return lines

    def save(self, output_dir, png=None) -> AnalysisResult:
        """Write the markdown table(s) with settings and findings, and the CSVs, beside ``png``."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        md = output_dir / f"{self.name}.md"
        lines = [f"# {self.name}", ""]
        lines += [f"- {key}: {value}" for key, value in self.settings.items()]
        lines += ["", self.table("markdown"), *self._further_tables("markdown"), ""]
        lines += [f"- {finding}" for finding in self.findings]
        if png is not None:
            lines += ["", f"![{self.name}]({Path(png).name})"]
        md.write_text("\n".join(lines) + "\n")
        path = output_dir / f"{self.name}.csv"
        _write_csv(path, self.rows, self.columns)
        self.files.update(md=str(md), csv=str(path))
        for key, (_, rows, columns) in self.tables.items():
            path = output_dir / f"{self.name}_{key}.csv"
            _write_csv(path, rows, columns)
            self.files[f"{key}_csv"] = str(path)
        if png is not None:
            self.files["png"] = str(png)
        return self

    def report(self) -> str:
        """The console report: the text table(s), then the findings."""
        further = self._further_tables("text") + ([""] if self.tables else [])
        return "\n".join([self.table("text"), *further, *[f"- {f}" for f in self.findings]])


def _write_csv(path, rows, columns):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
