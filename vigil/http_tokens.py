"""The HTTP credentials of the stack's own callers and the registry's signing key, made on first use.

Like the Kafka secrets (``vigil/credentials.py``), these live under ``.vigil/secrets`` (directory 0700, files 0600)
and are reused afterwards:

- ``http/<caller>.token``: one random 256-bit bearer token per caller (the simulator posting FHIR, the scorer's
  and shadow's registry clients, the operator's CLI and demo, and the registry roles the demo acts as);
- ``http/tokens.json``: the table every service reads (``VIGIL_AUTH_TOKENS_FILE``): token -> user, registry
  role and SMART scopes, least privilege per caller (:data:`CALLERS`);
- ``lifecycle/registry-signing.key`` (and ``.pub``): the registry's Ed25519 key for lifecycle events; the public
  half is what scorer and shadow are given (``VIGIL_LIFECYCLE_PUBLIC_KEY_FILE``).

Rotation: delete a caller's ``.token`` file (or ``tokens.json`` for all) and restart the stack; for the signing key
see docs/security.md ("Provenance").
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from vigil_runtime.provenance import ensure_signing_key, public_key_path, write_private

WRITE_FHIR = [f"system/{t}.write" for t in ("Observation", "Patient", "Encounter", "Location", "DiagnosticReport")]

CALLERS: dict[str, dict[str, object]] = {
    "simulator": {"user": "ehr-simulator", "scopes": WRITE_FHIR},
    "scorer": {"user": "svc-scorer", "role": "viewer", "scopes": []},
    "shadow": {"user": "svc-shadow", "role": "viewer", "scopes": []},
    "operator": {
        "user": "operator",
        "role": "viewer",
        "scopes": ["system/*.read", "system/ComparisonSummary.write"],
    },
    "scientist": {"user": "dana-scientist", "role": "data_scientist", "scopes": []},
    "approver": {"user": "dr-alice", "role": "clinical_approver", "scopes": []},
    "approver2": {"user": "dr-bob", "role": "clinical_approver", "scopes": []},
    # Replays from the console: shadow checks this role on the token the console forwards.
    "analyst": {"user": "ann-analyst", "role": "analyst", "scopes": []},
    "admin": {"user": "admin", "role": "admin", "scopes": []},
    # `vigil adapt-loop` and the demo's adapt step: registers and stages site-adapted candidates, never approves.
    "adapt": {"user": "svc-adapt", "role": "data_scientist", "scopes": []},
}
"""Who calls which service, and what each may do (docs/security.md has the table of routes)."""


@dataclass(frozen=True)
class HttpSecrets:
    """The HTTP secrets of one Vigil home."""

    directory: Path

    @property
    def table(self) -> Path:
        return self.directory / "http" / "tokens.json"

    def token_file(self, caller: str) -> Path:
        return self.directory / "http" / f"{caller}.token"

    def token(self, caller: str) -> str:
        return self.token_file(caller).read_text().strip()

    @property
    def signing_key(self) -> Path:
        return self.directory / "lifecycle" / "registry-signing.key"

    @property
    def public_key(self) -> Path:
        return public_key_path(self.signing_key)

    def ensure(self) -> HttpSecrets:
        """Create whatever is missing: a token per caller, the table, the signing key."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        changed = not self.table.exists()
        for caller in CALLERS:
            path = self.token_file(caller)
            if not path.exists():
                write_private(path, secrets.token_urlsafe(32).encode())
                changed = True
        if changed:
            table = {self.token(caller): grant for caller, grant in CALLERS.items()}
            write_private(self.table, json.dumps(table, indent=2).encode())
        ensure_signing_key(self.signing_key)
        return self
