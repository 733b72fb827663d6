"""The detector core without Kafka: inputs, predictions, labels, performance, fairness, alert hygiene, the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests import factories
from tests.unit.test_drift_reference import synthetic_stays
from vigil_drift.alerts import AlertBook
from vigil_drift.check import on_timeline, run_check
from vigil_drift.cli import app as drift_cli
from vigil_drift.config import Thresholds, parse_overrides, thresholds_for
from vigil_drift.core import DriftCore, StayHours
from vigil_drift.outcomes import Labeller
from vigil_drift.predictions import ScoreBatch
from vigil_scoring.reference import age_band, build_reference

SMALL = Thresholds(
    psi_window_rows=1500,
    psi_window_min=300,
    psi_window_max=1500,
    psi_every=100,
    missing_expected=80,
    missing_window_min=400,
    missing_every=100,
    prediction_window=500,
    prediction_every=100,
    performance_window=3000,
    performance_every=500,
    min_positives=40,
    min_positive_stays=5,
    fairness_window=3000,
    fairness_min_positive_stays=5,
)
T = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def halves() -> tuple[pd.DataFrame, pd.DataFrame]:
    return synthetic_stays(500, seed=1), synthetic_stays(500, seed=2)


def keys(alerts: list, state: str = "open") -> set[str]:
    return {a.alert_key for a in alerts if a.state == state}


def test_same_population_raises_no_alert(halves: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ref, cur = halves
    result = run_check(ref, cur, thresholds=SMALL, census=30, warmup_hours=24)
    assert result.alerts == []
    assert result.core is not None
    # every measured feature was judged, and the never-measured one (EtCO2) is not monitored
    snap = result.core.snapshot()["inputs"]
    assert snap["heart_rate"]["drift_score"] < SMALL.psi
    assert "drift_score" not in snap["etco2"]
    assert "etco2" not in result.core.inputs.monitored()


def test_unit_change_opens_one_alert_that_resolves_when_it_clears(halves: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ref, cur = halves
    timed = on_timeline(cur, 30)
    t = timed["t"].to_numpy()
    bad = (t >= np.quantile(t, 0.3)) & (t < np.quantile(t, 0.6))
    timed.loc[bad, "Temp"] = timed.loc[bad, "Temp"] * 9 / 5 + 32
    result = run_check(ref, timed.drop(columns=["t", "stay_end"]), thresholds=SMALL, census=30, warmup_hours=24)
    temp = [a for a in result.alerts if a.alert_key == "data_drift:inputs:temperature"]
    assert [a.state for a in temp] == ["open", "resolved"]  # one open alert for the whole episode, then closed
    opened = temp[0]
    assert opened.kind == "data_drift" and opened.feature == "temperature" and opened.metric == "drift_score"
    assert opened.value >= opened.threshold == SMALL.psi
    assert opened.severity == "critical"
    assert opened.evidence["window_mean"] > 40
    assert opened.occurred_at.timestamp() >= np.quantile(t, 0.3)
    assert keys(result.alerts) == {"data_drift:inputs:temperature"}


def test_lab_no_longer_ordered_raises_missingness(halves: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ref, cur = halves
    timed = on_timeline(cur, 30)
    late = timed["t"].to_numpy() >= np.quantile(timed["t"], 0.4)
    timed.loc[late, "Lactate"] = np.nan
    result = run_check(ref, timed.drop(columns=["t", "stay_end"]), thresholds=SMALL, census=30, warmup_hours=24)
    assert "missingness:inputs:lactate" in keys(result.alerts)
    alert = next(a for a in result.alerts if a.alert_key == "missingness:inputs:lactate")
    assert alert.evidence["measured_rate"] < alert.evidence["reference_measured_rate"]
    assert not any(a.feature == "heart_rate" for a in result.alerts)


def test_heart_rate_up_ten_percent_is_detected(halves: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ref, cur = halves
    cur = cur.copy()
    cur["HR"] *= 1.10
    result = run_check(ref, cur, thresholds=SMALL, census=30, warmup_hours=24)
    assert "data_drift:inputs:heart_rate" in keys(result.alerts)


def test_feature_missing_in_both_is_never_reported_but_a_new_one_is() -> None:
    ref = synthetic_stays(150, seed=3)
    cur = synthetic_stays(300, seed=4)
    result = run_check(ref, cur, thresholds=SMALL, census=30, warmup_hours=24)
    assert not any(a.feature == "etco2" for a in result.alerts)
    cur["EtCO2"] = 35.0  # a site that measures what the reference never did
    result = run_check(ref, cur, thresholds=SMALL, census=30, warmup_hours=24)
    assert "missingness:inputs:etco2" in keys(result.alerts)


def test_alert_book_hysteresis_and_deduplication() -> None:
    book = AlertBook(open_after=2, resolve_after=2)
    seq = [0.1, 0.35, 0.1, 0.35, 0.4, 0.5, 0.25, 0.35, 0.1, 0.15, 0.1, 0.4, 0.4]
    out = [
        book.observe(
            kind="data_drift",
            subject="inputs",
            feature="hr",
            value=v,
            threshold=0.3,
            clear=0.2,
            at=T + timedelta(hours=i),
            window="w",
        )
        for i, v in enumerate(seq)
    ]
    states = [(i, a.state) for i, a in enumerate(out) if a is not None]
    # opens on the 2nd consecutive value above (i=4), ignores 0.25 (between clear and threshold) and the blip,
    # resolves on the 2nd consecutive below clear (i=9), opens a new episode at i=12
    assert states == [(4, "open"), (9, "resolved"), (12, "open")]
    ids = [a.event_id for a in out if a is not None]
    assert len(set(ids)) == 3
    assert out[9] is not None and out[9].evidence["peak"] == 0.5
    book2 = AlertBook(open_after=2, resolve_after=2)
    again = [
        book2.observe(
            kind="data_drift",
            subject="inputs",
            feature="hr",
            value=v,
            threshold=0.3,
            clear=0.2,
            at=T + timedelta(hours=i),
            window="w",
        )
        for i, v in enumerate(seq)
    ]
    assert [a.event_id for a in again if a] == ids  # a replay gives the same event ids


def test_floor_metric_opens_below_threshold() -> None:
    book = AlertBook(open_after=1, resolve_after=1)
    a = book.observe(
        kind="performance",
        subject="m",
        metric="auroc",
        value=0.6,
        threshold=0.8,
        clear=0.82,
        higher_is_worse=False,
        at=T,
        window="w",
    )
    assert a is not None and a.state == "open" and a.model_name == "m" and a.key == "m"
    assert (
        book.observe(
            kind="performance",
            subject="m",
            metric="auroc",
            value=0.81,
            threshold=0.8,
            clear=0.82,
            higher_is_worse=False,
            at=T,
            window="w",
        )
        is None
    )
    r = book.observe(
        kind="performance",
        subject="m",
        metric="auroc",
        value=0.9,
        threshold=0.8,
        clear=0.82,
        higher_is_worse=False,
        at=T,
        window="w",
    )
    assert r is not None and r.state == "resolved"


def _scores(n: int, mean: float, alert_rate: float, seed: int, latency: float = 30.0) -> ScoreBatch:
    rng = np.random.default_rng(seed)
    p = np.clip(rng.normal(mean, 0.05, n), 0, 1)
    return ScoreBatch(
        model="m",
        version="1",
        probability=p,
        alert=rng.random(n) < alert_rate,
        times=T.timestamp() + np.arange(n) * 60.0,
        latency_ms=rng.lognormal(np.log(latency), 0.3, n),
    )


def test_prediction_shift_and_latency_alerts() -> None:
    core = DriftCore(build_reference(synthetic_stays(10)), inputs_thresholds=SMALL)
    # no baseline in the reference: the first window is the baseline
    assert core.scores(_scores(2000, 0.2, 0.05, 1)) == []
    out = core.scores(_scores(1500, 0.3, 0.05, 2))
    assert "prediction_drift:m:mean_score_shift" in keys(out)
    shift = next(a for a in out if a.metric == "mean_score_shift")
    assert shift.evidence["baseline"] == "first live window" and shift.value >= 0.2
    out = core.scores(_scores(1500, 0.3, 0.05, 3, latency=900.0))
    assert "latency:m:latency_p99_ms" in keys(out)
    lat = next(a for a in out if a.kind == "latency")
    assert lat.value > 500 and lat.threshold == 500


def test_labeller_follows_physionet_convention() -> None:
    lab = Labeller(horizon_hours=6)
    onset = factories.T0 + timedelta(hours=10)
    early = factories.score(data_time=factories.T0 + timedelta(hours=3), observations=1)
    in_horizon = factories.score(data_time=factories.T0 + timedelta(hours=4), observations=2)
    after = factories.score(data_time=factories.T0 + timedelta(hours=12), observations=3)
    other = factories.score(encounter="enc-2", key="enc-2", data_time=factories.T0, observations=1)
    assert lab.add_scores([early, in_horizon, after, other, early], ("sex",)) == {}  # censored: no outcome yet
    out = lab.add_outcomes([factories.outcome(onset_at=onset)], ("sex",))
    assert out["sepsis"].label == [False, True, True]  # duplicate `early` counted once
    out = lab.add_outcomes([factories.outcome(encounter="enc-2", key="enc-2", outcome="discharged", onset_at=None)], ())
    assert out["sepsis"].label == [False]
    assert "enc-1" not in lab.pending
    # a score arriving after the outcome is labelled at once
    late = factories.score(data_time=factories.T0 + timedelta(hours=20), observations=9)
    assert lab.add_scores([late], ())["sepsis"].label == [True]
    assert age_band(45) == "<50" and age_band(70) == "65-79" and age_band(float("nan")) == "unknown"


def _scored_frames(ref: pd.DataFrame, cur: pd.DataFrame, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for df in (ref, cur):
        y = df["SepsisLabel"].to_numpy()
        df["score"] = np.clip(0.08 + 0.25 * y + rng.normal(0, 0.08, len(df)), 0, 1)


def test_labels_flipped_for_a_subgroup_drop_auroc_and_raise_fairness() -> None:
    ref, cur = synthetic_stays(600, seed=5), synthetic_stays(900, seed=6)
    _scored_frames(ref, cur)
    th = SMALL.model_copy(update={"min_positives": 60})
    clean = run_check(ref, cur, thresholds=th, score_column="score", threshold=0.25, census=30, warmup_hours=24)
    assert not keys(clean.alerts) & {"performance:model:auroc", "fairness:model:auroc_disparity:sex"}
    assert clean.core is not None and clean.core.performance["model"].last["auroc"] > 0.9
    women = cur["Gender"].to_numpy() == 0
    flipped = cur.copy()
    flipped.loc[women, "SepsisLabel"] = 1 - flipped.loc[women, "SepsisLabel"]
    res = run_check(ref, flipped, thresholds=th, score_column="score", threshold=0.25, census=30, warmup_hours=24)
    opened = keys(res.alerts)
    assert "performance:model:auroc" in opened
    assert "fairness:model:auroc_disparity:sex" in opened
    fair = next(a for a in res.alerts if a.alert_key == "fairness:model:auroc_disparity:sex")
    by_group = fair.evidence["subgroups"]
    assert by_group["female"]["auroc"] < 0.5 < by_group["male"]["auroc"]
    assert fair.evidence["reference_disparity"] < 1.25  # the reference had no such disparity


def test_stay_hours_turns_observations_into_rows() -> None:
    sh = StayHours(("heart_rate", "temperature"))
    sh.encounter(factories.encounter(icu_admitted_at=factories.T0))
    for i, (feature, minutes, value) in enumerate(
        [("heart_rate", 5, 80.0), ("heart_rate", 40, 90.0), ("temperature", 50, 37.0), ("heart_rate", 190, 100.0)]
    ):
        obs = factories.observation(
            feature=feature,
            value=value,
            observed_at=factories.T0 + timedelta(minutes=minutes),
            source=factories.source(resource_id=f"o{i}"),
        )
        sh.observe(obs)
        sh.observe(obs)  # redelivered: ignored
    values, times, counts = sh.drain()
    # hour 0 closed by the hour-3 reading; hours 1 and 2 were silent
    assert values.shape == (3, 2)
    assert values[0, 0] == 90.0 and values[0, 1] == 37.0 and counts[0, 0] == 2
    assert np.isnan(values[1:]).all()
    assert times[0] == (factories.T0 + timedelta(hours=1)).timestamp()
    assert sh.duplicates == 4
    sh.encounter(factories.encounter(status="finished", discharged_at=factories.T0 + timedelta(hours=4)))
    values, _, _ = sh.drain()
    assert values.shape == (1, 2) and values[0, 0] == 100.0


def test_thresholds_per_model() -> None:
    overrides = parse_overrides('{"*": {"open_after": 3}, "sepsis": {"ece": 0.05}}')
    assert thresholds_for("sepsis", overrides).ece == 0.05
    assert thresholds_for("sepsis", overrides).open_after == 3
    assert thresholds_for("other", overrides).ece == 0.1
    with pytest.raises(ValueError):
        parse_overrides('{"m": {"no_such_threshold": 1}}')


def test_cli_check_prints_alerts_as_json_lines(tmp_path: Path, halves: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ref, cur = halves
    cur = cur.copy()
    cur["Temp"] = cur["Temp"] * 9 / 5 + 32
    ref.to_parquet(tmp_path / "ref.parquet")
    cur.to_parquet(tmp_path / "cur.parquet")
    small = json.dumps({"*": SMALL.model_dump(mode="json")})
    result = CliRunner().invoke(
        drift_cli,
        [
            "check",
            "--reference",
            str(tmp_path / "ref.parquet"),
            "--current",
            str(tmp_path / "cur.parquet"),
            "--json",
            "--thresholds",
            small,
            "--census",
            "30",
            "--warmup-hours",
            "24",
            "--no-summary",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.strip()]
    temp = [x for x in lines if x.get("feature") == "temperature"]
    assert temp and temp[0]["kind"] == "data_drift" and temp[0]["state"] == "open"
    assert {"kind", "feature", "metric", "value", "threshold", "severity"} <= set(temp[0])


def test_service_reads_its_reference_and_tolerates_a_foreign_one(tmp_path: Path) -> None:
    from vigil_drift.app import build_core, load_reference
    from vigil_drift.settings import Settings

    ours = build_reference(synthetic_stays(20), np.full(len(synthetic_stays(20)), 0.1), threshold=0.5)
    core = build_core(Settings(reference_path=str(ours.save(tmp_path / "reference.json")), model_name="m"))
    assert "heart_rate" in core.inputs.features
    foreign = tmp_path / "pkg.json"
    foreign.write_text(json.dumps({"feature_set_version": "v1", "rows": 10, "features": {}, "risk": {"mean": 0.04}}))
    ref = load_reference(foreign)
    assert ref.features == {} and ref.scores is not None and ref.scores.mean_score == 0.04
    small = json.dumps({"*": SMALL.model_dump(mode="json")})
    core = build_core(Settings(reference_path=str(foreign), model_name="m", thresholds=small))
    assert core.inputs.features == ()
    # the package's mean risk is the score baseline; the alert rate is learnt from the first window
    out = core.scores(_scores(1000, 0.2, 0.05, 1))
    shift = next(a for a in out if a.alert_key == "prediction_drift:m:mean_score_shift")
    assert shift.evidence["baseline_mean"] == 0.04 and shift.evidence["baseline"] == "reference"
    assert core.predictions["m"].baseline_alert_rate is not None
    assert core.snapshot()["reference"]["format"] == "foreign"


def test_cli_accepts_a_reference_json(tmp_path: Path, halves: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ref, cur = halves
    path = build_reference(ref).save(tmp_path / "reference.json")
    cur.to_parquet(tmp_path / "cur.parquet")
    small = json.dumps({"*": SMALL.model_dump(mode="json")})
    result = CliRunner().invoke(
        drift_cli,
        ["check", "--reference", str(path), "--current", str(tmp_path / "cur.parquet"), "--thresholds", small,
         "--census", "30", "--warmup-hours", "24"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ""  # same population: nothing printed
    assert '"alerts_opened": 0' in result.stderr
