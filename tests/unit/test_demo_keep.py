"""``vigil demo --keep``: the option (and its old spelling) reaches the demo, and the summary says where to look,
who to sign in as (the token's file, never the token) and how to stop the stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import vigil.demo
from vigil.cli import app
from vigil.demo import DemoOptions
from vigil.demo.summary import kept_lines, kept_stack
from vigil.stack import Stack

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("flags", "keep"), [([], False), (["--keep"], True), (["--keep-running"], True)])
def test_keep_reaches_the_demo(monkeypatch: pytest.MonkeyPatch, flags: list[str], keep: bool) -> None:
    seen: list[DemoOptions] = []

    def fake_run(options: DemoOptions, console: Any = None) -> dict[str, Any]:
        seen.append(options)
        return {"accounting": {"zero_loss": True}, "models": {}}

    monkeypatch.setattr(vigil.demo, "run_demo", fake_run)
    result = CliRunner().invoke(app, ["demo", *flags])
    assert result.exit_code == 0, result.output
    assert [o.keep for o in seen] == [keep]


def test_the_kept_stack_names_the_console_a_reviewer_and_how_to_stop_it(tmp_path: Path) -> None:
    stack = Stack(home=tmp_path, kafka_port=24092, port_base=13001)
    kept = kept_stack(stack)
    assert kept["console"] == "http://127.0.0.1:13005/ui"  # the registry is the fifth port
    assert kept["reviewer"]["user"] == "dr-alice" and kept["reviewer"]["role"] == "clinical_approver"
    token_file = Path(kept["reviewer"]["token_file"])
    assert token_file == tmp_path / "secrets" / "http" / "approver.token" and token_file.exists()
    assert kept["stop"] == "vigil down --kafka-port 24092 --port-base 13001"
    lines = "\n".join(kept_lines(kept))
    assert str(token_file) in lines and "vigil down" in lines and kept["console"] in lines
    for caller in ("approver", "analyst"):  # the files are named, the secrets never printed
        assert stack.http_secrets.token(caller) not in lines
    assert kept_stack(Stack(home=tmp_path))["stop"] == "vigil down"
