"""The benches' scratch folder: gone after a bench that finished, kept (and named) after one that failed."""

from __future__ import annotations

import pytest

from bench.support import scratch_dir


def test_the_scratch_folder_is_removed_when_the_bench_finishes() -> None:
    with scratch_dir("vigil-test-scratch-") as path:
        (path / "scorer.log").write_text("started\n")
        assert path.is_dir()
    assert not path.exists()


def test_the_scratch_folder_is_kept_and_named_when_the_bench_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="not every event was scored"), scratch_dir("vigil-test-scratch-") as path:
        (path / "scorer.log").write_text("the log that explains it\n")
        raise RuntimeError("not every event was scored")
    try:
        assert (path / "scorer.log").read_text() == "the log that explains it\n"
        assert str(path) in capsys.readouterr().err
    finally:
        (path / "scorer.log").unlink()
        path.rmdir()
