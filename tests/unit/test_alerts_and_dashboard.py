"""The alert rules and the on-call dashboard: promtool checks the configuration and the rules and runs the rules'
unit tests (deploy/prometheus/alerts.test.yml); every dashboard query is valid PromQL (promtool checks it as a
recording rule) against the provisioned data source, and the panels an on-call engineer needs are there.

Whether each query returns data from a running stack is the dashboard test of the e2e tier.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promtool import promtool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "vigil.json"


def run(*args: str, cwd: Path = DEPLOY) -> str:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=cwd, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_prometheus_configuration_and_rules_are_valid() -> None:
    out = run("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out
    assert "SUCCESS: 10 rules found" in run("check", "rules", "prometheus/alerts.yml")


def test_alert_rules_unit_tests_pass() -> None:
    out = run("test", "rules", "alerts.test.yml", cwd=DEPLOY / "prometheus")
    assert "SUCCESS" in out


def test_every_alert_rule_is_unit_tested() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert names == tested
    # Each rule is shown firing at least once, not only silent.
    firing = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert names - firing <= {"VigilRegistryOutboxStuck"}, names - firing
    assert all(r["labels"]["severity"] in ("critical", "warning") for g in rules["groups"] for r in g["rules"])


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_the_dashboard_is_provisioned_with_the_data_source_it_names() -> None:
    d = dashboard()
    datasources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    providers = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "vigil.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        assert p["type"] in ("timeseries", "table", "stat") and p["title"] and p["description"]
        assert p["datasource"]["uid"] == uid
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']} overlaps another"
        cells |= mine
        assert p["targets"] and all(t["expr"] and t["refId"] and t["datasource"]["uid"] == uid for t in p["targets"])


def test_the_dashboard_has_the_on_call_panels() -> None:
    titles = " | ".join(p["title"].lower() for p in dashboard()["panels"])
    for needed in ("ingest", "refusals", "consumer lag", "event-to-score latency", "live and in shadow", "open alerts"):
        assert needed in titles, needed


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"vigil:dashboard_panel{p['id']}_{t['refId'].lower()}", "expr": t["expr"]}
        for p in dashboard()["panels"]
        for t in p["targets"]
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run("check", "rules", str(path))


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(vigil_[a-z_]+)\b", expr))


@pytest.fixture(scope="module")
def queried() -> set[str]:
    """Every vigil_* metric the dashboard and the alert rules query."""
    names = {n for p in dashboard()["panels"] for t in p["targets"] for n in metric_names(t["expr"])}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return names | {n for g in rules["groups"] for r in g["rules"] for n in metric_names(r["expr"])}


def test_the_queries_name_metrics_the_services_export(queried: set[str]) -> None:
    exported = set()
    for source in (ROOT / "shared").rglob("*.py"), (ROOT / "services").rglob("*.py"):
        for path in source:
            exported |= set(re.findall(r'"(vigil_[a-z_]+)"', path.read_text()))
    # Exposed names: counters gain _total, histograms _bucket/_count/_sum.
    exposed = exported | {f"{n}_total" for n in exported} | {f"{n}_bucket" for n in exported}
    assert queried <= exposed, queried - exposed
