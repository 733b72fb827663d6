"""Command line of drift (mounted under ``vigil``)."""

from __future__ import annotations

import typer

app = typer.Typer(help="drift commands.", no_args_is_help=True)
