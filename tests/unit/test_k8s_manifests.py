"""deploy/k8s holds what the tables and the architecture say: a KafkaTopic per topic with three replicas and
min.insync.replicas=2, a KafkaUser per principal with exactly the ACL table, the five services with probes,
resources, disruption budgets and secrets from Kubernetes Secrets, KEDA on the three consumers. (Rendering and
schema validation with the real kustomize and kubeconform: tests/integration/test_k8s.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vigil.k8s import GENERATED, K8S, PARTITIONS, kafka_users, render_generated
from vigil_contracts.access import Principal, bindings_for
from vigil_contracts.topics import COMPACTED, Topic, Topics

BASE = K8S / "base"
SERVICES = ("ingest", "scorer", "shadow", "drift", "registry")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _base() -> list[dict[str, Any]]:
    return [d for path in sorted(BASE.rglob("*.yaml")) if path.name != "kustomization.yaml" for d in _docs(path)]


def _of(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _base() if d["kind"] == kind}


def test_the_committed_strimzi_resources_are_the_ones_the_tables_give() -> None:
    for filename, text in render_generated().items():
        assert (BASE / "kafka" / filename).read_text() == text, f"run `vigil k8s generate`: {filename} is stale"
    assert set(GENERATED) == {"topics.yaml", "users.yaml"}


def test_every_topic_is_replicated_three_times_with_two_in_sync() -> None:
    topics = {d["spec"]["topicName"]: d["spec"] for d in _of("KafkaTopic").values()}
    assert set(topics) == set(Topics("vigil.").all().values())
    for topic in Topic:
        spec = topics[Topics("vigil.").name(topic)]
        assert (spec["replicas"], spec["partitions"], spec["config"]["min.insync.replicas"]) == (3, PARTITIONS, "2")
        assert (spec["config"].get("cleanup.policy") == "compact") == (topic in COMPACTED)


def test_every_principal_but_the_administrator_is_a_kafka_user_with_exactly_its_acls() -> None:
    users = _of("KafkaUser")
    assert set(users) == {p.value for p in Principal} - {Principal.ADMIN.value}
    expected = {(b.principal, b.resource_type, b.resource_name, b.operation) for b in bindings_for(Topics("vigil."))}
    found = {
        (name, acl["resource"]["type"], acl["resource"]["name"], op)
        for name, user in users.items()
        for acl in user["spec"]["authorization"]["acls"]
        for op in acl["operations"]
    }
    assert found == expected
    assert all(u["spec"]["authentication"]["type"] == "scram-sha-512" for u in users.values())
    assert kafka_users()  # the generator is what wrote them (checked byte for byte above)


def test_the_cluster_is_three_nodes_secured_and_replicated() -> None:
    (kafka,) = _of("Kafka").values()
    (pool,) = _of("KafkaNodePool").values()
    assert pool["spec"]["replicas"] == 3 and set(pool["spec"]["roles"]) == {"broker", "controller"}
    config = kafka["spec"]["kafka"]["config"]
    assert (config["default.replication.factor"], config["min.insync.replicas"]) == (3, 2)
    assert config["auto.create.topics.enable"] is False
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True and listener["authentication"]["type"] == "scram-sha-512"


def test_each_service_has_probes_resources_a_budget_and_its_secrets_from_kubernetes() -> None:
    deployments, budgets = _of("Deployment"), _of("PodDisruptionBudget")
    assert set(deployments) == set(SERVICES) == set(budgets)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        # Its own SCRAM password (Strimzi's KafkaUser Secret), the cluster CA, the token table, the public key.
        assert {name, "vigil-cluster-ca-cert", "vigil-http-tokens", "vigil-lifecycle-signing"} <= secrets
        env = {e["name"]: e for e in container["env"]}
        assert env[f"{name.upper()}_KAFKA_PASSWORD_FILE"]["value"] == "/secrets/kafka/password"
        assert not any("PASSWORD" in k and "value" in e and "FILE" not in k for k, e in env.items())
    registry_env = {e["name"]: e for e in deployments["registry"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert registry_env["REGISTRY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "vigil-postgres"


def test_keda_scales_the_three_consumers_on_their_own_groups_lag_never_past_the_partitions() -> None:
    scaled = _of("ScaledObject")
    assert set(scaled) == {"scorer", "shadow", "drift"}
    for name, obj in scaled.items():
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "kafka" and trigger["metadata"]["consumerGroup"] == f"vigil-{name}"
        assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
        assert obj["spec"]["maxReplicaCount"] <= PARTITIONS
    # Drift has one working instance (one-owner assignor): scaling adds a standby at most.
    assert scaled["drift"]["spec"]["maxReplicaCount"] == 2


def test_network_policies_start_from_deny_all_and_open_only_the_architectures_paths() -> None:
    policies = _of("NetworkPolicy")
    deny = policies["services-deny-all"]["spec"]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny and "egress" not in deny
    # Only scorer, shadow and drift call the registry; only the registry reaches PostgreSQL.
    callers = policies["registry-from-consumers"]["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert callers["matchExpressions"][0]["values"] == ["scorer", "shadow", "drift"]
    postgres = policies["registry-to-postgres"]["spec"]
    assert postgres["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "registry"}
    assert postgres["egress"][0]["ports"] == [{"protocol": "TCP", "port": 5432}]
