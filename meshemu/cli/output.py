"""Rows out: a table on the terminal, or CSV / JSON to stdout or a file."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

from meshemu.errors import InputError

FORMATS = ("table", "csv", "json")


def add_output_args(parser) -> None:
    parser.add_argument("--format", "-f", choices=FORMATS, help="output format (default: table, or from --out's suffix)")
    parser.add_argument("--out", "-o", metavar="FILE", help="write to FILE (.csv or .json) instead of the terminal")


def output_format(args) -> str:
    """``--format``, or the one ``--out``'s suffix names; an InputError when neither says."""
    if args.out is not None and not str(args.out).strip():
        raise InputError("--out is empty: give a file name (.csv or .json)")
    fmt = args.format or (Path(args.out).suffix.lstrip(".") if args.out else "table")
    if fmt not in FORMATS:
        raise InputError(f"cannot tell the format from {args.out!r}: use --format csv or json")
    return fmt


def check_rows_output(args) -> None:
    """Before the work: the format can be told and ``--out`` can be written (not after minutes of it)."""
    output_format(args)
    if args.out:
        check_writable(args.out)


def write_rows(args, columns, rows, *, title: str = "") -> None:
    """Write ``rows`` (sequences matching ``columns``) as the arguments ask."""
    fmt = output_format(args)
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


def series_path(text) -> Path:
    """Where ``--out FILE.npz`` saves a series: ``.npz`` added when missing (as numpy does), never a folder.

    >>> str(series_path("run/a")), str(series_path("a.npz"))
    ('run/a.npz', 'a.npz')
    >>> series_path("results/")
    Traceback (most recent call last):
    ...
    meshemu.errors.InputError: results/: --out names a folder: give a file name such as results/series.npz
    """
    text = str(text)
    if not text.strip():
        raise InputError("--out is empty: give a file name such as series.npz")
    if text.endswith("/") or Path(text).is_dir():
        # before: numpy saved 'results/' as 'results.npz', beside the folder instead of in it
        raise InputError(f"--out names a folder: give a file name such as {Path(text) / 'series.npz'}", file=text)
    return Path(text if text.endswith(".npz") else f"{text}.npz")


def check_output_dir(path) -> Path:
    """InputError now, before a run whose records folder ``path`` will hold, when it could not be made or
    written; nothing is made (a run refused later leaves nothing behind)."""
    if not str(path).strip():
        raise InputError("--out is empty: give a folder name")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError("is a file; --out wants a folder", file=path)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot make the folder: {existing} is a file", file=path)
    probe = existing / f".meshemu-write-test-{os.getpid()}"
    try:
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as err:
        raise InputError(f"cannot write into {existing}: {err.strerror or err}", file=path) from None
    return path


def make_output_dir(path) -> Path:
    """Make the records folder ``path`` (one line when it cannot be made)."""
    path = check_output_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot make the folder: {err.strerror or err}", file=path) from None
    return path


def check_writable(path) -> None:
    """InputError now, not after minutes of work, when ``path`` cannot be written (its folder is missing,
    read-only, or a pseudo file system such as /proc)."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder: give a file name", file=path)
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
