"""``vigil bench e2e``'s own accounting: which score answers which post, percentiles, what counts as sustained.

The benchmark itself (a stack, thousands of posts) is what ``vigil bench e2e`` runs; its figures are in
docs/scaling.md. No timing is asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.bench_e2e import Post, ScoreSeen, hot_frames, match, percentile, plan, summarize
from bench.cli import app
from vigil.simulate import SAMPLE


def _post(encounter: str, hour: int, n: int = 8, due: float = 0.0) -> Post:
    return Post(encounter, hour, n, b"{}", due=due, status=200, sent=due)


def test_a_score_with_a_bundles_id_and_all_its_readings_answers_it_and_every_earlier_one() -> None:
    posts = [_post("a", 0), _post("b", 0), _post("a", 1), _post("a", 2)]
    # Encounter a: a score carrying post 2's id (a's second bundle) answers posts 0 and 2 at once.
    match(posts, [ScoreSeen(2, "a", 16, at=5.0), ScoreSeen(1, "b", 8, at=6.0)])
    assert [p.scored for p in posts] == [5.0, 6.0, 5.0, None]


def test_a_batch_ending_inside_a_bundle_waits_for_the_score_holding_all_of_it() -> None:
    posts = [_post("a", 0), _post("a", 1)]
    scores = [
        ScoreSeen(0, "a", 3, at=1.0),  # the batch ended after 3 of the bundle's 8 readings
        ScoreSeen(0, "a", 8, at=2.0),  # the rest
        ScoreSeen(1, "a", 16, at=3.0),
    ]
    match(posts, scores)
    assert [p.scored for p in posts] == [2.0, 3.0]


def test_scores_of_other_runs_or_without_an_id_are_ignored() -> None:
    posts = [_post("a", 0)]
    match(posts, [ScoreSeen(None, "a", 8, at=1.0), ScoreSeen(7, "zz", 8, at=1.5)])
    assert posts[0].scored is None
    match(posts, [ScoreSeen(0, "a", 8, at=2.0)])
    assert posts[0].scored == 2.0


def test_percentile_interpolates_and_is_none_without_values() -> None:
    assert percentile(list(range(1, 101)), 50) == 50.5
    assert percentile([10.0, 20.0], 99) == 19.9
    assert percentile([], 99) is None


def test_summary_counts_latency_from_the_due_time_and_says_whether_the_load_was_carried() -> None:
    posts = [_post("a", h, n=10, due=h * 0.1) for h in range(10)]
    for p in posts:
        p.scored = p.due + 0.05  # 50 ms after it was due, every one
    carried = summarize(posts, target=100.0)
    assert carried["latency_ms"]["p50"] == pytest.approx(50.0, abs=0.1)
    assert carried["bundles_scored"] == 10 and carried["observations"] == 100
    # 100 observations between the first due time (0) and the last score (0.95 s).
    assert carried["delivered_obs_per_s"] == pytest.approx(100 / 0.95, rel=1e-3)
    assert carried["sustained"] is True

    posts[-1].scored = None  # one bundle never scored: not sustained, whatever the rate
    assert summarize(posts, target=100.0)["sustained"] is False
    late = [_post("a", h, n=10, due=h * 0.1) for h in range(10)]
    for p in late:
        p.scored = 5.0  # a backlog drained seconds after the last post
    assert summarize(late, target=100.0)["sustained"] is False


@pytest.mark.skipif(not SAMPLE.exists(), reason="the bundled sample is absent")
def test_plan_gives_each_bed_one_encounter_hour_per_second_due_by_observations() -> None:
    posts = plan(80.0, 3, tag="t")
    assert len({p.encounter for p in posts}) == 10  # 80 obs/s / 8 per bundle
    assert {p.hour for p in posts} == {0, 1, 2}
    dues = [p.due for p in posts]
    assert dues == sorted(dues) and dues[0] == 0.0
    # The due time of each is the observations before it at 80 a second.
    assert dues[-1] == pytest.approx(sum(p.observations for p in posts[:-1]) / 80.0)
    # Hour by hour across the beds: an encounter's bundles keep their order.
    for enc in {p.encounter for p in posts}:
        hours = [p.hour for p in posts if p.encounter == enc]
        assert hours == sorted(hours)


def test_hot_frames_shares_busy_samples_and_sets_idle_apart() -> None:
    raw = "\n".join(
        [
            "<module> (app.py:1);run (loop.py:2);select (selectors.py:3) 50",
            "<module> (app.py:1);handle (core.py:9);loads (json.py:4) 30",
            "<module> (app.py:1);handle (core.py:9) 10",
        ]
    )
    figures = hot_frames(raw)
    assert figures["busy_samples"] == 40 and figures["idle_samples"] == 50
    assert figures["self_top"]["loads json.py"] == 0.75
    assert figures["inclusive_top"]["handle core.py"] == 1.0


def test_bench_e2e_command_is_declared_with_its_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["e2e", "--help"])
    assert result.exit_code == 0
    for option in ("--loads", "--seconds", "--senders", "--stack", "--with", "--profile-dir"):
        assert option in result.output
    refused = CliRunner().invoke(app, ["e2e", "--stack", "elsewhere"])
    assert refused.exit_code != 0
