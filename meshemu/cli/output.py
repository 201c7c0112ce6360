"""Rows out: a table on the terminal, or CSV / JSON to stdout or a file."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from meshemu.errors import InputError

FORMATS = ("table", "csv", "json")


def add_output_args(parser) -> None:
    parser.add_argument("--format", "-f", choices=FORMATS, help="output format (default: table, or from --out's suffix)")
    parser.add_argument("--out", "-o", metavar="FILE", help="write to FILE (.csv or .json) instead of the terminal")


def write_rows(args, columns, rows, *, title: str = "") -> None:
    """Write ``rows`` (sequences matching ``columns``) as the arguments ask."""
    fmt = args.format or (Path(args.out).suffix.lstrip(".") if args.out else "table")
    if fmt not in FORMATS:
        raise InputError(f"cannot tell the format from {args.out!r}: use --format csv or json")
    if fmt == "table" and not args.out:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title or None)
        for c in columns:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*("" if v is None else str(v) for v in r))
        Console().print(table)
        return
    buf = io.StringIO()
    if fmt == "json":
        json.dump([dict(zip(columns, r)) for r in rows], buf, indent=1)
        buf.write("\n")
    else:
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows(["" if v is None else v for v in r] for r in rows)
    if args.out:
        try:
            Path(args.out).write_text(buf.getvalue())
        except OSError as err:
            raise InputError(f"cannot write: {err.strerror}", file=args.out) from None
        print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(buf.getvalue())


def check_writable(path) -> None:
    """InputError now, not after minutes of work, when ``path`` cannot be written (its folder is missing,
    read-only, or a pseudo file system such as /proc)."""
    path = Path(path)
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror or err}", file=path) from None
    if not existed:
        path.unlink(missing_ok=True)


def progress_bar(description: str):
    """A rich progress bar on stderr; returns (context manager, callback(done, total))."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=False)
    task = bar.add_task(description, total=None)

    def update(done, total):
        bar.update(task, completed=done, total=total)

    return bar, update
