"""Command line of shadow (mounted under ``vigil``)."""

from __future__ import annotations

import typer

app = typer.Typer(help="shadow commands.", no_args_is_help=True)
