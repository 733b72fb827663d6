"""FHIR REST answers: OperationOutcome and batch/transaction-response Bundles built from mapping results."""

from __future__ import annotations

from typing import Any

from vigil_ingest.mapping import EntryOutcome, Rejection


def operation_outcome(issues: list[tuple[str, str, str]]) -> dict[str, Any]:
    """An OperationOutcome from (severity, code, diagnostics) triples."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": s, "code": c, "diagnostics": d} for s, c, d in issues]
        or [{"severity": "information", "code": "informational", "diagnostics": "ok"}],
    }


def rejection_issues(rejections: list[Rejection], severity: str = "error") -> list[tuple[str, str, str]]:
    """One issue per rejection, naming the resource and the problem (no values)."""
    out = []
    for r in rejections:
        where = f"{r.resource_type}/{r.resource_id}: " if r.resource_type and r.resource_id else ""
        out.append((severity, r.issue, f"{where}{r.reason}"))
    return out


def entry_status(entry: EntryOutcome, fresh: int) -> tuple[str, list[tuple[str, str, str]]]:
    """The HTTP status line of one entry and its issues.

    201 when it gave new canonical events, 200 when it was accepted with nothing new to publish (a repeat, a code
    outside the vocabulary, a value absent, linkage recorded) or corrected a known resource, 409 when it conflicts
    with what was published or with another entry of the request, 422 when it was rejected.
    """
    issues: list[tuple[str, str, str]] = []
    if entry.outcome == "rejected":
        if any(r.issue == "conflict" for r in entry.rejections):
            return "409 Conflict", rejection_issues(entry.rejections)
        return "422 Unprocessable Entity", rejection_issues(entry.rejections)
    if entry.rejections:
        issues.extend(rejection_issues(entry.rejections, "warning"))
    if entry.events:
        duplicates = len(entry.events) - fresh
        message = f"{fresh} canonical event(s) published"
        if duplicates:
            message += f", {duplicates} already published"
        issues.append(("information", "informational", message))
    if entry.note:
        issues.append(("information", "informational", entry.note))
    if entry.outcome == "ignored" and not entry.note:
        issues.append(("information", "informational", "ignored"))
    # A correction updates a resource that exists (as a PUT would: 200); a repeat creates nothing (200).
    return ("201 Created" if fresh and not entry.correction else "200 OK"), issues


def location(entry: EntryOutcome) -> str | None:
    """The entry's resource as type/id."""
    if entry.resource_type and entry.resource_id:
        return f"{entry.resource_type}/{entry.resource_id}"
    return None
