"""The Kubernetes manifests as a cluster would receive them: every overlay rendered by the real kustomize and
validated by kubeconform, strict, against the vendored Kubernetes, Strimzi and KEDA schemas (offline: no cluster
runs here). The binaries come from scripts/install-k8s-tools.sh (run by scripts/install-system-deps.sh)."""

from __future__ import annotations

import pytest
import yaml

from vigil.k8s import OVERLAYS, render, validate


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_and_validates_against_the_schemas(overlay: str) -> None:
    manifests = render(overlay)
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    assert {d["metadata"].get("namespace") for d in docs} == {"vigil"}
    result = validate(manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every resource checked against a schema: none skipped for want of one.
    assert f"{len(docs)} resources found" in result.stdout and "Invalid: 0, Errors: 0, Skipped: 0" in result.stdout


def test_the_dev_overlay_is_one_broker_and_production_three_spread_over_zones() -> None:
    dev = [d for d in yaml.safe_load_all(render("dev")) if d]
    prod = [d for d in yaml.safe_load_all(render("production")) if d]

    def one(docs: list[dict], kind: str) -> dict:  # type: ignore[type-arg]
        return next(d for d in docs if d["kind"] == kind)

    assert one(dev, "KafkaNodePool")["spec"]["replicas"] == 1
    assert {d["spec"]["replicas"] for d in dev if d["kind"] == "KafkaTopic"} == {1}
    assert one(prod, "KafkaNodePool")["spec"]["replicas"] == 3
    assert {d["spec"]["replicas"] for d in prod if d["kind"] == "KafkaTopic"} == {3}
    assert one(prod, "Kafka")["spec"]["kafka"]["rack"]["topologyKey"] == "topology.kubernetes.io/zone"


def test_the_schemas_refuse_what_a_cluster_would_refuse() -> None:
    """The check has teeth: an unknown field, a wrong type and Kafka's spelling of a Strimzi enum all fail."""
    docs = [d for d in yaml.safe_load_all(render("production")) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/health"}
    user = next(d for d in docs if d["kind"] == "KafkaUser" and d["metadata"]["name"] == "scorer")
    user["spec"]["authorization"]["acls"][-1]["resource"]["patternType"] = "prefixed"
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    scaled["spec"]["maxReplicaCount"] = "six"
    result = validate(yaml.safe_dump_all([deployment, user, scaled]))
    assert result.returncode != 0
    assert "Invalid: 3" in result.stdout, result.stdout
