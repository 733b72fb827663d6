"""Drift resumes with its windows: a core restored from its snapshot raises exactly the alerts of an uninterrupted one.

The stream is synthetic stays (inputs), live scores whose level shifts half-way (prediction drift) and outcomes
(performance), fed through the event path the service uses, in the same batches with and without restarts.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from tests import factories
from tests.unit.test_drift_core import SMALL, T
from tests.unit.test_drift_reference import synthetic_stays
from vigil_contracts import events as ev
from vigil_drift.core import DriftCore
from vigil_drift.state import ReplayableADWIN, decode, encode, from_records, to_records
from vigil_scoring.reference import Reference, build_reference


@pytest.fixture(scope="module")
def reference() -> Reference:
    return build_reference(synthetic_stays(300, seed=1))


@pytest.fixture(scope="module")
def batches() -> list[tuple[str, list[Any]]]:
    """(kind, events) batches: readings of 120 stays (temperature in Fahrenheit for the later ones), scores whose
    mean jumps half-way, then outcomes."""
    stays = synthetic_stays(120, seed=5)
    out: list[tuple[str, list[Any]]] = []
    rng = np.random.default_rng(3)
    for i, (pid, stay) in enumerate(stays.groupby("patient_id", sort=False)):
        stay = stay.copy()
        if i >= 60:
            stay["Temp"] = stay["Temp"] * 9 / 5 + 32
        events, _ = factories.stay_stream(stay, f"enc-{pid}", admitted=T + timedelta(hours=i), with_outcome=False)
        out.append(("canonical", events))
    scores = []
    for j in range(2400):
        enc = f"enc-s{j % 200}"
        p = float(np.clip(rng.normal(0.2 if j < 1200 else 0.45, 0.05), 0, 1))
        at = T + timedelta(minutes=10 * j)
        scores.append(
            factories.score(encounter=enc, probability=p, alert=p >= 0.3, data_time=at, hour=j // 200, observations=j)
        )
    out += [("scores", scores[k : k + 300]) for k in range(0, len(scores), 300)]
    outcomes = [
        ev.OutcomeRecorded(
            event_id=ev.deterministic_id("outcome", f"enc-s{e}"),
            occurred_at=T + timedelta(days=30),
            key=f"enc-s{e}",
            encounter=f"enc-s{e}",
            patient=f"pat-{e}",
            outcome="sepsis" if e % 4 == 0 else "discharged",
            onset_at=T + timedelta(hours=10) if e % 4 == 0 else None,
            recorded_at=T + timedelta(days=30),
        )
        for e in range(200)
    ]
    out += [("outcomes", outcomes[k : k + 50]) for k in range(0, len(outcomes), 50)]
    return out


RESTARTS = frozenset({40, 90, 119, 124, 129})
"""Batch indexes after which the core restarts (readings: 0-119, scores: 120-127, outcomes: 128-131)."""


def _feed(core: DriftCore, kind: str, events: list[Any]) -> list[ev.AlertRaised]:
    if kind == "canonical":
        return core.on_canonical(events)
    if kind == "scores":
        return core.on_scores(events)
    return core.on_outcomes(events)


def _through_changelog(core: DriftCore, reference: Reference) -> DriftCore:
    """Snapshot as the changelog writes it (JSON through bytes, in chunks), restored into a fresh core."""
    records = dict(to_records("vigil-drift-test", core.state()))
    restored = DriftCore(reference, inputs_thresholds=SMALL)
    state = from_records("vigil-drift-test", records)
    assert state is not None
    restored.load_state(state)
    return restored


def _alerts(alerts: list[ev.AlertRaised]) -> list[dict[str, Any]]:
    return [a.model_dump(mode="json") for a in alerts]


def test_a_restarted_core_raises_the_alerts_of_an_uninterrupted_one(
    reference: Reference, batches: list[tuple[str, list[Any]]]
) -> None:
    uninterrupted = DriftCore(reference, inputs_thresholds=SMALL)
    expected = [a for kind, events in batches for a in _feed(uninterrupted, kind, events)]
    kinds = {a.kind for a in expected}
    assert {"data_drift", "prediction_drift"} <= kinds, kinds  # the stream does drift: there is something to resume

    core = DriftCore(reference, inputs_thresholds=SMALL)
    got: list[ev.AlertRaised] = []
    for i, (kind, events) in enumerate(batches):
        got += _feed(core, kind, events)
        if i in RESTARTS:  # through the changelog's bytes: while readings, scores and outcomes stream
            core = _through_changelog(core, reference)
    assert _alerts(got) == _alerts(expected)
    assert json.dumps(core.snapshot(), default=str) == json.dumps(uninterrupted.snapshot(), default=str)


def test_a_fresh_core_relearns_and_misses_them(reference: Reference, batches: list[tuple[str, list[Any]]]) -> None:
    """Without the state (what a restart did before), the same stream after a restart raises different alerts."""
    uninterrupted = DriftCore(reference, inputs_thresholds=SMALL)
    expected = [a for kind, events in batches for a in _feed(uninterrupted, kind, events)]
    core = DriftCore(reference, inputs_thresholds=SMALL)
    got: list[ev.AlertRaised] = []
    for i, (kind, events) in enumerate(batches):
        got += _feed(core, kind, events)
        if i == len(batches) // 2:
            core = DriftCore(reference, inputs_thresholds=SMALL)
    assert _alerts(got) != _alerts(expected)


def test_adwin_restored_by_refeeding_is_the_same_detector() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.05, 3000), rng.normal(0.5, 0.05, 3000)]).tolist()
    a, b = ReplayableADWIN(0.002), ReplayableADWIN(0.002)
    detections_a: list[bool] = []
    detections_b: list[bool] = []
    for x in values[:4000]:
        a.update(x)
        b.update(x)
        detections_a.append(a.drift_detected)
    b = decode(json.loads(json.dumps(encode(b))))
    for x in values[4000:]:
        a.update(x)
        b.update(x)
        detections_a.append(a.drift_detected)
        detections_b.append(b.drift_detected)
    assert detections_a[4000:] == detections_b and a.width == b.width and a.fed == b.fed


def test_only_known_types_are_ever_built() -> None:
    with pytest.raises(KeyError):
        decode({"__dc": "Popen", "f": {"args": ["true"]}})
    with pytest.raises(KeyError):
        decode({"__river": "os.system", "d": {}})
    with pytest.raises(ValueError, match="incomplete"):
        records = dict(to_records("g", {"x": 1}))
        records["g/0"] = b"another-checkpoint:..."
        from_records("g", records)
