"""A registry with the story a reviewer meets, on a real SQLite database: the console's tests start from it.

Version 1 of ``sepsis`` (the real bundled package) is in production; version 2 is in shadow with a comparison
computed by shadow's own ``compare`` on synthetic stays (no patient data) and published as the registry receives
it; the drift service's alerts are there too. Nothing is proposed yet: the browser test does that.
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

from tests import factories
from vigil_contracts import events as ev
from vigil_registry.artifacts import ArtifactStore
from vigil_registry.auth import Principal
from vigil_registry.core import Registry
from vigil_registry.db import make_engine, migrate
from vigil_shadow.compare import CompareConfig, compare
from vigil_shadow.join import JoinState

PACKAGES = Path(__file__).resolve().parents[1] / "shared" / "scoring" / "vigil_scoring" / "assets" / "models" / "sepsis"
SCIENTIST = Principal("dana-scientist", "data_scientist")
APPROVER = Principal("dr-alice", "clinical_approver")
ADMIN = Principal("admin", "admin")
POLICY = {"min_shadow_hours": 24.0, "min_labelled_outcomes": 20}
"""A short shadow period, so a test's synthetic day of stays is enough evidence."""


def synthetic_comparison(stays: int = 240, seed: int = 17) -> ev.ComparisonSummarized:
    """Candidate 2 against live 1 on made-up stays, through shadow's join and comparison code."""
    rng = random.Random(seed)
    state = JoinState()
    for i in range(stays):
        enc = f"enc-{i:04d}"
        start = factories.T0 + timedelta(minutes=rng.randrange(0, 600))
        length = rng.randrange(20, 40)
        septic = rng.random() < 0.3
        onset = start + timedelta(hours=length - 2) if septic else None
        for feature, value in (("sex", float(i % 2)), ("age", float(rng.choice([30, 55, 70, 85])))):
            state.add(factories.observation(encounter=enc, feature=feature, value=value, observed_at=start, unit="1"))
        for hour in range(length):
            t = start + timedelta(hours=hour)
            positive = onset is not None and t >= onset - timedelta(hours=6)
            base = 0.45 if positive else 0.06
            for stage, version, noise in ((ev.Stage.PRODUCTION, "1", 0.16), (ev.Stage.SHADOW, "2", 0.09)):
                p = min(0.99, max(0.001, base + rng.gauss(0, noise)))
                state.add(
                    factories.score(
                        encounter=enc,
                        model_version=version,
                        stage=stage,
                        probability=p,
                        alert=p >= 0.3,
                        threshold=0.3,
                        data_time=t,
                        hour=hour,
                    )
                )
        end = start + timedelta(hours=length)
        state.add(
            factories.outcome(
                event_id=ev.deterministic_id("outcome", enc),
                encounter=enc,
                outcome="sepsis" if septic else "discharged",
                onset_at=onset,
                recorded_at=end,
            )
        )
    result = compare(state, "sepsis", "2", config=CompareConfig(bootstrap_iterations=100))
    return result.to_event(occurred_at=factories.T0 + timedelta(days=2))


def alerts() -> list[ev.AlertRaised]:
    """A worsening temperature drift (still open) and a calibration alert that resolved."""
    out = []
    for n, value in enumerate((0.31, 0.36, 0.44)):
        out.append(
            factories.alert(
                event_id=ev.deterministic_id("alert", "temp", n),
                occurred_at=factories.T0 + timedelta(hours=6 * n),
                model_version="1",
                value=value,
                evidence={"detector": "psi"},
            )
        )
    for n, (state, value) in enumerate((("open", 0.12), ("resolved", 0.07))):
        out.append(
            factories.alert(
                event_id=ev.deterministic_id("alert", "cal", n),
                occurred_at=factories.T0 + timedelta(hours=10 + 8 * n),
                alert_key="calibration:sepsis:ece",
                kind="calibration",
                state=state,
                feature=None,
                metric="ece",
                model_version="1",
                value=value,
                threshold=0.1,
                window="last 500 labelled hours",
                evidence={"detector": "expected calibration error"},
            )
        )
    return out


def seed(database_url: str, artifact_root: Path, public_url: str = "http://127.0.0.1") -> Registry:
    """Migrate the database and tell the story; returns the core (dispose its engine when done).

    ``public_url``: where the registry will be served, so artifact URLs lead back to it (shadow's replay
    downloads a package from there, and refuses URLs off the registry).
    """
    migrate(database_url)
    registry = Registry(
        make_engine(database_url),
        ArtifactStore(artifact_root),
        artifact_url=lambda n, v: f"{public_url}/models/{n}/versions/{v}/artifact",
    )
    for version in ("1", "2"):
        registry.lifecycle.register_folder(SCIENTIST, PACKAGES / version)
    registry.lifecycle.set_policy(ADMIN, "sepsis", POLICY)
    registry.lifecycle.set_stage(SCIENTIST, "sepsis", "1", ev.Stage.SHADOW, "first candidate")
    registry.lifecycle.propose(SCIENTIST, "sepsis", "1", "first production model")
    registry.lifecycle.approve(APPROVER, "sepsis", "1", "validated on set A")
    registry.lifecycle.promote(APPROVER, "sepsis", "1", "first production version")
    registry.lifecycle.set_stage(SCIENTIST, "sepsis", "2", ev.Stage.SHADOW, "candidate retrained with an alert budget")
    registry.evidence.handle_outcomes(
        [factories.outcome(event_id=ev.deterministic_id("o", i), encounter=f"enc-{i}") for i in range(30)]
    )
    registry.evidence.handle_comparison(synthetic_comparison())
    for alert in alerts():
        registry.evidence.handle_alert(alert)
    return registry
