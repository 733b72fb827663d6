"""The registry's adaptation policy: due on enough new labelled stays or an open alert on production; admin-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import factories
from tests.pg import make_package
from tests.unit.test_registry_core import (
    ADMIN,
    SCIENTIST,
    database_url,  # noqa: F401 - the fixture
    outcomes,
    registry,  # noqa: F401 - the fixture
    to_production_first,
)
from vigil_registry.core import Registry
from vigil_registry.errors import Forbidden
from vigil_registry.queries import ADAPTED_TAG


def test_due_after_enough_new_labelled_stays_then_counted_from_the_new_candidate(
    registry: Registry,  # noqa: F811
    tmp_path: Path,
) -> None:
    to_production_first(registry, tmp_path)
    registry.lifecycle.set_policy(ADMIN, "sepsis", {"adapt_min_new_stays": 5})
    registry.evidence.handle_outcomes(outcomes(4))
    verdict = registry.queries.adaptation("sepsis")
    assert verdict["due"] is False and verdict["new_labelled_stays"] == 4
    registry.evidence.handle_outcomes(outcomes(6, start=3))  # one redelivered, two new
    verdict = registry.queries.adaptation("sepsis")
    assert (
        verdict["due"] is True
        and verdict["new_labelled_stays"] == 6
        and "6 new labelled stays" in verdict["reasons"][0]
    )
    registry.lifecycle.register_folder(SCIENTIST, make_package(tmp_path / "c", version="site-1"), tags=[ADAPTED_TAG])
    assert registry.queries.adaptation("sepsis")["due"] is False  # counted again from the adapted candidate


def test_an_open_alert_on_production_makes_it_due_until_resolved(registry: Registry, tmp_path: Path) -> None:  # noqa: F811
    to_production_first(registry, tmp_path)
    registry.evidence.handle_alert(factories.alert(model_version="1"))
    verdict = registry.queries.adaptation("sepsis")
    assert verdict["due"] is True and verdict["open_alerts"] == ["data_drift:sepsis:temperature"]
    registry.evidence.handle_alert(
        factories.alert(model_version="1", state="resolved", event_id="e2", occurred_at=factories.T0.replace(hour=9))
    )
    assert registry.queries.adaptation("sepsis")["due"] is False


def test_only_an_admin_changes_the_adaptation_policy(registry: Registry, tmp_path: Path) -> None:  # noqa: F811
    to_production_first(registry, tmp_path)
    with pytest.raises(Forbidden):
        registry.lifecycle.set_policy(SCIENTIST, "sepsis", {"adapt_min_new_stays": 1})
    assert registry.queries.policy("sepsis").adapt_min_new_stays == 500


def test_the_verdict_carries_the_policys_alert_rate_ratio_for_the_adaptation_job(
    registry: Registry,  # noqa: F811
    tmp_path: Path,
) -> None:
    # adapt-loop builds no candidate the policy would hold in shadow for its alarm burden: it reads the bound here.
    to_production_first(registry, tmp_path)
    assert registry.queries.adaptation("sepsis")["max_alert_rate_ratio"] == 1.2
    registry.lifecycle.set_policy(ADMIN, "sepsis", {"max_alert_rate_ratio": 1.5})
    assert registry.queries.adaptation("sepsis")["max_alert_rate_ratio"] == 1.5
