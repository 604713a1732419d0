"""Read-only result tables (magicgui ``Table``) without row numbers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from magicgui.widgets import Table

__all__ = ["make_table", "fill_table"]


def make_table(headers: Sequence[str], *, min_height: int = 100, max_height: int | None = None,
               label: str = "") -> Table:
    """An empty read-only table with column ``headers``."""
    table = Table(label=label)
    table.read_only = True
    table.native.verticalHeader().setVisible(False)
    table.native.horizontalHeader().setStretchLastSection(True)
    table.min_height = min_height
    if max_height is not None:
        table.max_height = max_height
    fill_table(table, headers, [])
    return table


def fill_table(table: Table, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Replace the table's contents (``rows`` of values under ``headers``)."""
    table.value = {"data": [list(row) for row in rows], "index": list(range(len(rows))), "columns": list(headers)}
    table.native.resizeColumnsToContents()
