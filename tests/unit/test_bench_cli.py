"""The benchmarks' command line: ``vigil bench scorer`` is a typer command with the benchmark's options."""

from __future__ import annotations

from typer.testing import CliRunner

from bench.cli import app


def test_bench_scorer_command_is_declared_with_its_options() -> None:
    listing = CliRunner().invoke(app, ["--help"])
    assert listing.exit_code == 0 and "scorer" in listing.output
    result = CliRunner().invoke(app, ["scorer", "--help"])
    assert result.exit_code == 0
    for option in ("--bootstrap", "--stays", "--rate", "--latency-seconds", "--batch-max-records", "--instances"):
        assert option in result.output
