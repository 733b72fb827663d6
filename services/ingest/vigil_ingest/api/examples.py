"""Request examples for ingest's OpenAPI document: an Observation and a transaction Bundle that ingest accepts.

A client that posts them (a developer trying ``/docs``, schemathesis's examples phase) reaches the 201 path, not only
the refusals. They are dated an hour before the module is imported, i.e. before the service starts: ingest refuses
readings later than its clock. Posted again they are identical resubmissions (200). Made-up ids, no patient data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RESOURCE_TYPE = "Observation"
RESOURCE_ID = "example-heart-rate"


def observation(at: datetime, resource_id: str = RESOURCE_ID) -> dict[str, Any]:
    """A heart-rate reading of the example encounter."""
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "meta": {"versionId": "1"},
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
        "subject": {"reference": "Patient/example-patient"},
        "encounter": {"reference": "Encounter/example-encounter"},
        "effectiveDateTime": at.isoformat().replace("+00:00", "Z"),
        "valueQuantity": {"value": 88, "unit": "/min", "system": UCUM, "code": "/min"},
    }


def bundle(at: datetime) -> dict[str, Any]:
    """A transaction Bundle: the patient, the ICU encounter and a reading, as an EHR integration sends an hour."""
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "example-patient", "gender": "female"},
        {
            "resourceType": "Encounter",
            "id": "example-encounter",
            "meta": {"versionId": "1"},
            "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": "Patient/example-patient"},
            "period": {"start": (at - timedelta(hours=2)).isoformat().replace("+00:00", "Z")},
        },
        observation(at, "example-bundle-heart-rate"),
    ]
    entries = [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


EXAMPLE_TIME = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
"""When the examples' reading was taken: before the service started."""
OBSERVATION = observation(EXAMPLE_TIME)
BUNDLE = bundle(EXAMPLE_TIME)
