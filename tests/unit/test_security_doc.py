"""docs/security.md shows the ACL table the code enforces (vigil_contracts.access), not a hand-written copy."""

from __future__ import annotations

import re
from pathlib import Path

from vigil_contracts.access import ACL_TABLE, CONSUMER_GROUPS, Principal, markdown_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_the_documented_acl_table_is_the_one_in_the_code() -> None:
    found = re.search(r"<!-- acl-table:[^>]*-->\n(.*?)\n<!-- /acl-table -->", DOC.read_text(), re.S)
    assert found, "docs/security.md lost its generated ACL table markers"
    assert found.group(1).strip() == markdown_table().strip()


def test_least_privilege_rules_of_the_issue_hold_in_the_table() -> None:
    writers: dict[str, set[str]] = {}
    for grant in ACL_TABLE:
        if grant.operation.value == "Write":
            writers.setdefault(grant.topic.value, set()).add(grant.principal.value)
    assert writers["observations"] == {"ingest"}
    assert writers["models.lifecycle"] == {"registry"}
    assert writers["scores.live"] == {"scorer"}
    assert writers["scorer.state"] == {"scorer"}
    assert writers["deadletter"] == {p.value for p in CONSUMER_GROUPS}
    assert not any(g.principal is Principal.ANALYST and g.operation.value == "Write" for g in ACL_TABLE)
    assert not any(g.principal is Principal.ADMIN for g in ACL_TABLE)  # the super user needs no grants
