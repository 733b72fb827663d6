"""``vigil bench compare``'s bookkeeping: reading each side's output and the medians and ratios it reports.

The runs themselves (a temporary worktree, its own environment, a broker) are what ``vigil bench compare`` does;
the figures it measured are in docs/architecture.md.
"""

from __future__ import annotations

import pytest

from bench.compare import flatten, parse_ingest, summarise

pytestmark = pytest.mark.unit


def test_flatten_keeps_every_number_under_a_dotted_key() -> None:
    data = {"throughput": {"events_per_s": 100, "complete": True}, "latency": [{"p50": 1.0}], "stays": 120}
    assert flatten(data) == {"throughput.events_per_s": 100.0, "stays": 120.0}


def test_parse_ingest_reads_the_key_value_lines_and_skips_the_load_line() -> None:
    out = "load average before: 3.10 on 2 CPUs\ncore_obs_per_s_wall      17652.3\nratio_x      5.300\nnoise\n"
    assert parse_ingest(out) == {"core_obs_per_s_wall": 17652.3, "ratio_x": 5.3}


def test_summarise_gives_medians_and_the_after_over_before_ratio_of_common_figures() -> None:
    runs = {
        "ingest": {
            "before": [{"obs": 100.0, "old_only": 1.0}, {"obs": 300.0, "old_only": 1.0}, {"obs": 200.0}],
            "after": [{"obs": 260.0}, {"obs": 220.0}, {"obs": 240.0}],
        }
    }
    figures = summarise(runs)["ingest"]
    assert set(figures) == {"obs"}  # a figure one side lacks in any run is not compared
    assert figures["obs"]["median_before"] == 200.0
    assert figures["obs"]["median_after"] == 240.0
    assert figures["obs"]["ratio_after_before"] == 1.2
