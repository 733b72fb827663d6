"""Demo parts: the shadow phase is stratified by sex and sepsis (the policy's per-group evidence is there by design);
the promotion's evidence is the report the registry decided on."""

from __future__ import annotations

from collections import Counter

from vigil import simulate as sim
from vigil.demo import DemoOptions, promotion_event, shadow_split
from vigil_contracts import events as ev


def strata(stays: list[sim.Stay]) -> Counter[tuple[str, bool]]:
    return Counter(
        ("male" if float(s.rows["Gender"].iloc[0]) == 1.0 else "female", s.onset_hour is not None) for s in stays
    )


def test_the_default_shadow_phase_has_ten_septic_stays_in_each_sex() -> None:
    o = DemoOptions()
    plan = sim.load_stays(None, stays=o.stays, seed=o.seed, arrival_hours=48.0)
    first, second = shadow_split(plan, o.shadow_share)
    shadow = strata(first)
    assert shadow[("female", True)] >= 10 and shadow[("male", True)] >= 10
    assert len(first) + len(second) == len(plan) == 300
    assert {s.encounter for s in first}.isdisjoint(s.encounter for s in second)
    # Each part keeps the plan's (arrival) order.
    order = {s.encounter: i for i, s in enumerate(plan)}
    assert [order[s.encounter] for s in first] == sorted(order[s.encounter] for s in first)
    whole = strata(plan)
    for key, n in whole.items():
        assert abs(shadow[key] - o.shadow_share * n) <= 0.5


def test_a_small_cohort_still_leaves_stays_for_the_second_phase() -> None:
    plan = sim.load_stays(None, stays=3, seed=7)
    first, second = shadow_split(plan, 0.99)
    assert first and second and len(first) + len(second) == 3


def lifecycle(action: ev.LifecycleAction, version: str, evidence: dict | None = None) -> ev.ModelLifecycleChanged:
    return ev.ModelLifecycleChanged(
        event_id=f"{action.value}-{version}",
        occurred_at=ev.utcnow(),
        key="sepsis",
        action=action,
        model_name="sepsis",
        model_version=version,
        from_stage=ev.Stage.SHADOW,
        to_stage=ev.Stage.PRODUCTION,
        actor="policy",
        evidence=evidence or {},
    )


def test_the_promotion_evidence_is_the_report_carried_by_the_candidates_promotion() -> None:
    report = {"eligible": True, "criteria": [{"name": "auroc_diff_ci_low", "passed": True}]}
    events = [
        lifecycle(ev.LifecycleAction.PROMOTED, "2", {"policy": {"criteria": []}}),
        lifecycle(ev.LifecycleAction.STAGE_CHANGED, "3"),
        lifecycle(ev.LifecycleAction.PROMOTED, "3", {"policy": report}),
    ]
    found = promotion_event(events, "3")
    assert found is not None and found.evidence["policy"] == report
    assert promotion_event(events[:2], "3") is None


def test_a_draw_from_larger_data_takes_the_requested_share_of_septic_stays() -> None:
    # The bundled sample stands in for a larger file: 300 stays, 45 septic.
    enriched = sim.load_stays(None, stays=100, seed=3, septic_share=0.3)
    assert len(enriched) == 100 and sum(s.onset_hour is not None for s in enriched) == 30
    again = sim.load_stays(None, stays=100, seed=3, septic_share=0.3)
    assert [s.patient_id for s in again] == [s.patient_id for s in enriched]  # seeded
    capped = sim.load_stays(None, stays=100, seed=3, septic_share=0.9)
    assert len(capped) == 100 and sum(s.onset_hour is not None for s in capped) == 45  # all there are
    assert len(sim.load_stays(None, stays=300, septic_share=0.5)) == 300  # the whole file: nothing to enrich


async def test_a_required_wait_gives_up_at_its_deadline_naming_what_it_waited_for() -> None:
    import pytest

    from vigil.demo.waits import DemoStopped, wait_for

    polls: list[int] = []

    async def never() -> bool:
        polls.append(1)
        return False

    with pytest.raises(DemoStopped, match="gave up after 0s waiting for the scorer to serve v2"):
        await wait_for(never, what="the scorer to serve v2", timeout_s=0.2, interval_s=0.05)
    assert len(polls) >= 2, "polled until the deadline, not once"
    assert await wait_for(lambda: False, what="x", timeout_s=0.1, interval_s=0.05, required=False) is None
    assert await wait_for(lambda: {"ok": 1}, what="x", timeout_s=0.1) == {"ok": 1}


def test_the_scorers_model_is_read_with_the_prometheus_parser() -> None:
    from vigil.demo.clients import model_in_metrics

    text = (
        "# HELP vigil_model_info The model in use (value 1).\n# TYPE vigil_model_info gauge\n"
        'vigil_model_info{default_model="False",model="sepsis",service="scorer",stage="production",version="3"} 1.0\n'
        "# HELP vigil_model_info_other x\n# TYPE vigil_model_info_other gauge\nvigil_model_info_other 1.0\n"
    )
    assert model_in_metrics(text) == ("3", False)
    assert model_in_metrics("") == (None, False)


def test_a_stopped_runs_report_says_why_and_never_zero_loss() -> None:
    from vigil.demo.report import render_html

    summary = {
        "run": "r<1>",
        "stays": 6,
        "data": "sample",
        "seconds": 3.2,
        "failed": "streaming: sending stay #2 of 6's bundle #1 failed: <ReadTimeout>",
        "story": [{"at": "20:00:00", "phase": "streaming", "text": "a & b"}],
        "counts": {"fhir_bundles_sent": 4},
        "accounting": {"zero_loss": False, "fhir_entries_without_outcome": 12},
        "models": {},
        "promotion": {"promoted": False, "eligibility": {}},
        "alerts": [],
        "rollback_drill": {},
        "lifecycle": [],
        "policy_used": {"auto_promote": True},
    }
    page = render_html(summary)
    assert "zero loss: NO" in page and "Stopped: streaming: sending stay #2 of 6" in page
    assert "&lt;ReadTimeout&gt;" in page and "r&lt;1&gt;" in page and "a &amp; b" in page  # escaped
    assert "$" not in page.replace("$value", "")  # every placeholder filled


async def test_the_demos_registry_calls_go_through_the_runtime_client_as_each_role() -> None:
    import httpx

    from vigil.demo.clients import RegistryApi
    from vigil_scoring.model_package import default_package_path

    seen: list[tuple[str, str, str | None, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        headers = request.headers
        seen.append((request.method, request.url.path, headers.get("authorization"), headers.get("content-type")))
        if request.url.path.endswith("/production"):
            return httpx.Response(200, json={"version": "2", "artifact_url": "/a", "artifact_sha256": "x"})
        return httpx.Response(201, json={"ok": True})

    tokens = {role: f"generated-{role}-token-0123456789abcdef" for role in ("scientist", "approver", "admin", "viewer")}
    api = RegistryApi("http://registry", tokens)
    api.client._http = httpx.AsyncClient(transport=httpx.MockTransport(answer), headers=api.client._http.headers)
    try:
        await api.call("approver", "POST", "/models/sepsis/versions/2/approve", json={"reason": "r"})
        assert await api.production_version() == "2"
        await api.register(default_package_path("2"))
    finally:
        await api.aclose()
    assert seen[0][:3] == ("POST", "/models/sepsis/versions/2/approve", f"Bearer {tokens['approver']}")
    assert seen[1][2] == f"Bearer {tokens['viewer']}"  # reads as the viewer
    assert seen[2] == ("POST", "/models/sepsis/versions", f"Bearer {tokens['scientist']}", "application/gzip")
