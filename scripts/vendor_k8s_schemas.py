"""Write the JSON schemas that `vigil k8s check` validates the manifests against (deploy/k8s/schemas).

Run by hand when a Kubernetes, Strimzi or KEDA version changes; CI only reads its output. Sources (all Apache-2.0,
see deploy/k8s/schemas/README.md):

- Kubernetes: the strict schemas shipped in the PyPI package ``kubernetes-validate`` (its
  ``kubernetes-json-schema/v<k8s>-local-strict`` folder). They point into a shared ``_definitions.json``; this
  script copies each kind's closure of definitions into the kind's own file, so each schema stands alone (the
  layout kubeconform reads: ``<kind>-<group>-<version>.json``).
- Strimzi and KEDA: their CustomResourceDefinitions (``packaging/install/cluster-operator/04*-Crd-*.yaml`` of
  strimzi/strimzi-kafka-operator, ``config/crd/bases/keda.sh_*.yaml`` of kedacore/keda). Each served version's
  ``openAPIV3Schema`` becomes a JSON schema the way kubeconform's openapi2jsonschema does in strict mode: objects
  with declared properties admit no others (unless ``x-kubernetes-preserve-unknown-fields``), int-or-string and
  nullable fields take both forms.

    python scripts/vendor_k8s_schemas.py --kubernetes DIR --crd FILE... [--kinds deployment-apps-v1 ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "schemas"
KINDS = (
    "configmap-v1",
    "deployment-apps-v1",
    "networkpolicy-networking-v1",
    "persistentvolumeclaim-v1",
    "poddisruptionbudget-policy-v1",
    "service-v1",
    "serviceaccount-v1",
)
"""The Kubernetes kinds the manifests use (a kind without a schema fails the check: add it here)."""
REF = re.compile(r"^(?:/api/_definitions\.json)?#/\$defs/(.+)$")


def standalone(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every definition it reaches copied under its own ``$defs`` and references made local."""
    needed: dict[str, Any] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and (m := REF.match(value)):
                    name = m.group(1)
                    if name not in needed:
                        needed[name] = None  # placeholder first: definitions refer to each other in cycles
                        needed[name] = walk(definitions[name])
                    out[key] = f"#/$defs/{name}"
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result = walk(schema)
    result["$defs"] = dict(sorted(needed.items()))
    return result


def strict_crd_schema(node: Any) -> Any:
    """An openAPIV3Schema made a strict JSON schema (openapi2jsonschema's conversion, written afresh)."""
    if isinstance(node, list):
        return [strict_crd_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_crd_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schemas(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """File name -> JSON schema for each served version of one CRD."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    out = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = strict_crd_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
        props = schema.setdefault("properties", {})
        props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        props["kind"] = {"type": "string", "enum": [kind]}
        props["metadata"] = {"type": "object"}
        out[f"{kind.lower()}-{group.split('.')[0]}-{version['name']}.json"] = schema
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubernetes", type=Path, required=True, help="kubernetes-validate's v1.NN.0-local-strict")
    parser.add_argument("--crd", type=Path, nargs="+", required=True, help="CRD YAML files (Strimzi, KEDA)")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    definitions = json.loads((args.kubernetes / "_definitions.json").read_text())["$defs"]
    written = {}
    for kind in args.kinds:
        schema = json.loads((args.kubernetes / f"{kind}.json").read_text())
        written[f"{kind}.json"] = standalone(schema, definitions)
    for path in args.crd:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                written.update(crd_schemas(doc))
    for name, schema in sorted(written.items()):
        (OUT / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(name)


if __name__ == "__main__":
    main()
