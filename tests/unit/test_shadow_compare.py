"""The comparison core without Kafka: labelling, the join, metrics against scikit-learn, the paired bootstrap."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests import factories
from tests.factories import T0
from vigil_contracts import events as ev
from vigil_scoring.utility import normalized_utility
from vigil_shadow import stats
from vigil_shadow.compare import CompareConfig, compare
from vigil_shadow.join import JoinState


def _scores(state: JoinState, enc: str, probs_live: list[float], probs_cand: list[float], thr: float = 0.5) -> None:
    for h, (pl, pc) in enumerate(zip(probs_live, probs_cand, strict=True)):
        t = T0 + timedelta(hours=h)
        state.add(factories.score(encounter=enc, data_time=t, hour=h, probability=pl, alert=pl >= thr, threshold=thr))
        state.add(
            factories.score(
                encounter=enc,
                data_time=t,
                hour=h,
                probability=pc,
                alert=pc >= thr,
                threshold=thr,
                model_version="2",
                stage=ev.Stage.SHADOW,
            )
        )


def _sepsis(enc: str, onset_hour: int) -> ev.OutcomeRecorded:
    return factories.outcome(
        encounter=enc, key=enc, event_id=ev.deterministic_id("o", enc), onset_at=T0 + timedelta(hours=onset_hour)
    )


def _discharged(enc: str) -> ev.OutcomeRecorded:
    return factories.outcome(
        encounter=enc, key=enc, event_id=ev.deterministic_id("d", enc), outcome="discharged", onset_at=None
    )


def test_labels_follow_sepsislabel_and_censor_open_stays() -> None:
    state = JoinState()
    state.add(_sepsis("a", 10))
    state.add(_discharged("b"))
    assert state.label("a", T0 + timedelta(hours=3)) == 0.0
    assert state.label("a", T0 + timedelta(hours=4)) == 1.0  # onset - 6 h
    assert state.label("a", T0 + timedelta(hours=30)) == 1.0
    assert state.label("b", T0 + timedelta(hours=30)) == 0.0
    assert math.isnan(state.label("c", T0))  # no outcome yet: censored, not negative
    state.add(_discharged("a"))  # a later discharge does not undo sepsis
    assert state.label("a", T0 + timedelta(hours=5)) == 1.0


def test_join_keeps_the_complete_hour_and_ignores_redelivery() -> None:
    state = JoinState()
    partial = factories.score(probability=0.1, observations=3, hour=0)
    complete = factories.score(probability=0.7, observations=9, hour=0, data_time=T0 + timedelta(minutes=30))
    for s in (partial, complete, partial, complete):
        state.add(s)
    assert state.live["sepsis"][("enc-1", 0)].probability == 0.7


def test_only_common_hours_are_compared() -> None:
    state = JoinState()
    _scores(state, "a", [0.1, 0.2, 0.3], [0.2, 0.3, 0.4])
    state.add(factories.score(encounter="a", hour=7, data_time=T0 + timedelta(hours=7)))  # live only
    state.add(_discharged("a"))
    c = compare(state, "sepsis", "2", config=CompareConfig(bootstrap_iterations=0))
    assert c.scored_hours == 3
    assert c.labelled_hours == 3
    assert c.metrics["agreement"] == 1.0


def test_metrics_match_sklearn_and_the_challenge_utility() -> None:
    rng = np.random.default_rng(1)
    state = JoinState()
    rows = []
    for i in range(30):
        enc = f"e{i}"
        n = int(rng.integers(10, 30))
        septic = i % 3 == 0
        onset = int(rng.integers(5, n + 3)) if septic else 10**6
        y = np.array([1.0 if h >= onset - 6 else 0.0 for h in range(n)])
        pl = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)
        pc = np.clip(0.5 * y + rng.uniform(0, 0.5, n), 0, 1)
        _scores(state, enc, pl.tolist(), pc.tolist())
        state.add(_sepsis(enc, onset) if septic else _discharged(enc))
        rows.append((enc, y, pl, pc))
    state.add(factories.score(encounter="open", hour=0, data_time=T0))  # censored
    state.add(factories.score(encounter="open", hour=0, data_time=T0, model_version="2", stage=ev.Stage.SHADOW))
    c = compare(state, "sepsis", "2", config=CompareConfig(bootstrap_iterations=300))
    rows.sort(key=lambda r: r[0])
    y = np.concatenate([r[1] for r in rows])
    pl = np.concatenate([r[2] for r in rows])
    pc = np.concatenate([r[3] for r in rows])
    m = c.metrics
    assert c.scored_hours == len(y) + 1
    assert c.labelled_hours == len(y)
    assert c.labelled_encounters == 30
    assert c.positive_encounters == 10
    assert m["live"]["auroc"] == pytest.approx(roc_auc_score(y, pl), abs=1e-12)
    assert m["candidate"]["auroc"] == pytest.approx(roc_auc_score(y, pc), abs=1e-12)
    codes = np.concatenate([np.full(len(r[1]), i) for i, r in enumerate(rows)])
    assert m["candidate"]["utility"] == pytest.approx(normalized_utility(codes, y, pc >= 0.5), abs=1e-12)
    assert m["live"]["utility"] == pytest.approx(normalized_utility(codes, y, pl >= 0.5), abs=1e-12)
    d = m["auroc_diff"]
    assert d["ci_low"] <= d["estimate"] <= d["ci_high"]
    assert d["estimate"] == pytest.approx(m["candidate"]["auroc"] - m["live"]["auroc"])
    assert d["ci_low"] > 0  # the candidate separates much better: the paired CI excludes 0
    assert m["candidate"]["sensitivity"] == pytest.approx(((pc >= 0.5) & (y == 1)).sum() / (y == 1).sum())
    assert m["alert_rate_ratio"] == pytest.approx(m["candidate"]["alert_rate"] / m["live"]["alert_rate"])
    assert 0 <= m["candidate"]["ece"] <= 1
    c2 = compare(state, "sepsis", "2", config=CompareConfig(bootstrap_iterations=300))
    assert c2.metrics == m  # seeded: the same evidence gives the same CIs
    assert c2.to_event().event_id == c.to_event().event_id


def test_weighted_auroc_equals_auroc_of_the_repeated_rows() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(size=50).round(2)  # ties included
    y = (rng.uniform(size=50) < 0.4).astype(float)
    w = rng.integers(0, 4, size=50).astype(float)
    expected = roc_auc_score(np.repeat(y, w.astype(int)), np.repeat(p, w.astype(int)))
    assert stats.RankedScores.of(p, y).auroc(w) == pytest.approx(expected, abs=1e-12)


def test_subgroups_come_from_the_observation_stream() -> None:
    state = JoinState()
    for i in range(8):
        enc = f"s{i}"
        state.add(factories.encounter(encounter=enc, key=enc, unit="MICU" if i % 2 else "SICU"))
        state.add(factories.observation(encounter=enc, key=enc, feature="sex", value=float(i % 2), unit="1"))
        state.add(factories.observation(encounter=enc, key=enc, feature="age", value=30.0 + 10 * i, unit="a"))
        _scores(state, enc, [0.6] * 12, [0.6 if i % 2 else 0.2] * 12)
        state.add(_sepsis(enc, 8))
    c = compare(state, "sepsis", "2", config=CompareConfig(bootstrap_iterations=0, min_subgroup_positives=1))
    sub = c.metrics["subgroups"]
    assert set(sub["sex"]) == {"male", "female"}
    assert set(sub["unit"]) == {"MICU", "SICU"}
    assert sub["sex"]["male"]["candidate"]["sensitivity"] == 1.0
    assert sub["sex"]["female"]["candidate"]["sensitivity"] == 0.0
    # A group the candidate never detects: the ratio is infinite, published as null (the policy fails closed).
    assert c.metrics["candidate"]["disparity_ratio"] is None
    assert c.metrics["live"]["disparity_ratio"] == 1.0


def test_report_is_self_contained_html_with_four_plots() -> None:
    from vigil_shadow.report import render_html

    state = JoinState()
    for i in range(6):
        enc = f"r{i}"
        _scores(state, enc, [0.01 * h for h in range(12)], [0.02 * h for h in range(12)], thr=0.1)
        state.add(_sepsis(enc, 9) if i % 2 else _discharged(enc))
    c = compare(state, "sepsis", "2", config=CompareConfig(bootstrap_iterations=20), with_plots=True)
    assert c.plots["distribution"]["edges"][-1] < 1.0  # bins span the observed scores, not [0, 1]
    page = render_html([c], title="t", context={"from": "x"})
    assert page.count('src="data:image/png;base64,') == 4
    assert "http://" not in page and "https://" not in page
    empty = render_html([], title="t", context={})
    assert "No candidate" in empty


def test_lead_time_counts_only_alerts_before_onset_and_curves_travel_in_the_event() -> None:
    state = JoinState()
    # Stay a: onset at hour 6; live first alerts at hour 2 (4 h early), the candidate only at onset (too late).
    _scores(state, "a", [0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9])
    state.add(_sepsis("a", 6))
    # Stay b: onset at hour 5; both alert first at hour 3 (2 h early).
    _scores(state, "b", [0.1, 0.1, 0.1, 0.8, 0.8, 0.8], [0.1, 0.1, 0.1, 0.8, 0.8, 0.8])
    state.add(_sepsis("b", 5))
    _scores(state, "c", [0.2, 0.3, 0.1], [0.1, 0.2, 0.3])
    state.add(_discharged("c"))
    c = compare(state, "sepsis", "2", config=CompareConfig(bootstrap_iterations=0))
    lead = c.metrics["lead_time"]
    assert lead["live"] == {"septic_stays": 2, "detected_before_onset": 2, "median_hours": 3.0}
    assert lead["candidate"] == {"septic_stays": 2, "detected_before_onset": 1, "median_hours": 2.0}
    curves = c.to_event().metrics["curves"]
    assert curves["roc"]["live"]["fpr"][0] == 0.0 and curves["roc"]["live"]["tpr"][-1] == 1.0
    assert sum(b["n"] for b in curves["calibration"]["candidate"]) == c.labelled_hours
