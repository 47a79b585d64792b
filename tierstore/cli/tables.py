"""Tables for people that never cut a cell: a name or a number is printed whole, on
one line, whatever the console's width (rich narrows the columns of a table wider
than the console and cuts their cells to "…", names and numbers too). A table that
cannot fit whole is printed as plain aligned columns instead: a terminal wraps such
long lines, but every cell is whole, to copy or to grep."""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["plain_lines", "plain_widths", "print_whole"]


def print_whole(console: Console, renderable: RenderableType) -> None:
    """Print ``renderable`` on ``console``; each table in it (alone, or in a Group) so
    that no cell is cut: its columns as wide as their widest cells (headers wrap at
    spaces), or, where the console is too narrow for that, as plain columns under
    the table's title, and over its caption. Not thread-safe: a table is changed."""
    if isinstance(renderable, Group):
        for part in renderable.renderables:
            print_whole(console, part)
        return
    if not isinstance(renderable, Table):
        console.print(renderable)
        return
    widths = _whole_widths(renderable, console.width)
    if widths is None:
        _print_plain(console, renderable)
        return
    for column, width in zip(renderable.columns, widths, strict=True):
        column.width = width
    console.print(renderable)


def plain_lines(
    columns: tuple[str, ...],
    rows: list[tuple[str, ...]],
    widths: list[int] | None = None,
    *,
    header: bool = True,
) -> list[str]:
    """``rows`` under ``columns`` (unless not ``header``), each column as wide as its
    widest cell, or as ``widths`` (:func:`plain_widths` of earlier rows: a wider cell
    then pushes the rest of its line), as they are (no markup: names are anyone's)."""
    widths = widths or plain_widths(columns, rows)
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in ([columns] if header else []) + rows
    ]


def plain_widths(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[int]:
    """The width of each of ``columns``: its header's or its widest cell's in ``rows``."""
    return [max([len(column), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)]


def _text(cell: object) -> str:
    """A cell's characters: those of a Text without its styles; others as str."""
    return cell.plain if isinstance(cell, Text) else str(cell)


def _widest_line(text: str) -> int:
    return max((cell_len(line) for line in text.splitlines()), default=0)


def _whole_widths(table: Table, console_width: int) -> list[int] | None:
    """Widths of ``table``'s columns (without padding) at which no cell is cut and the
    table fits ``console_width``; None when there are none. Each column is at least
    as wide as its widest cell and its header's longest word (the header wraps at
    spaces), and as wide as the whole header where there is room."""
    left, right = table.padding[3], table.padding[1]
    borders = ((2 if table.show_edge else 0) + len(table.columns) - 1) if table.box else 0
    room = console_width - borders - (left + right) * len(table.columns)
    least, most = [], []
    for column in table.columns:
        widest = max((_widest_line(_text(cell)) for cell in column.cells), default=0)
        header = _text(column.header)
        least.append(max([widest, *(cell_len(word) for word in header.split())]))
        most.append(max(widest, _widest_line(header)))
    spare = room - sum(least)
    if spare < 0:
        return None
    widths = []
    for low, high in zip(least, most, strict=True):  # whole headers, the first ones first
        grown = min(spare, high - low)
        widths.append(low + grown)
        spare -= grown
    return widths


def _print_plain(console: Console, table: Table) -> None:
    """``table`` as plain aligned columns, its title above and caption below."""
    columns = tuple(_text(column.header) for column in table.columns)
    cells = [[_text(cell) for cell in column.cells] for column in table.columns]
    rows = list(zip(*cells, strict=True)) if cells else []
    lines = plain_lines(columns, rows)
    title = [_text(table.title)] if table.title else []
    caption = [_text(table.caption)] if table.caption else []
    console.file.write("".join(line + "\n" for line in [*title, *lines, *caption]))
