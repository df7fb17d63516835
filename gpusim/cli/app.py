"""The command-line application every command registers with, and its one-line errors for bad input."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="gpusim: simulate Linux fork() page-table copying (early COW for pinned pages).",
)


err = Console(stderr=True, highlight=False)


def bad_input(msg: str) -> None:
    err.print(f"gpusim: error: {msg}", markup=False, soft_wrap=True)
    raise typer.Exit(2)
