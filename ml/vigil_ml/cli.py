"""Command line of ml (mounted under ``vigil``)."""

from __future__ import annotations

import typer

app = typer.Typer(help="ml commands.", no_args_is_help=True)
