"""The registry's read contract as its clients see it: the production answer, and the two ways fetching fails.

Pydantic-free on purpose (plain dataclass and exceptions): the runtime's HTTP client raises these, and the scoring
core's package verification raises :class:`PackageRejected`, without either importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlparse


class RegistryUnavailable(RuntimeError):
    """The registry did not answer usably (down, timing out, or failing)."""


class PackageRejected(RuntimeError):
    """A downloaded package failed its digest or schema checks."""


@dataclass(frozen=True)
class ProductionRef:
    """What the registry says about a model's production version."""

    name: str
    version: str
    artifact_url: str | None
    artifact_sha256: str | None
    package_sha256: str | None = None

    @classmethod
    def from_json(cls, name: str, body: dict[str, Any], base_url: str) -> ProductionRef:
        """Read the registry's answer, whatever the exact field names (see the module docstring)."""
        version = body.get("version", body.get("model_version"))
        if version is None:
            raise RegistryUnavailable("the registry's production answer has no version")
        url = body.get("artifact_url") or body.get("url")
        if url and not urlparse(str(url)).scheme:
            url = urljoin(base_url.rstrip("/") + "/", str(url).lstrip("/"))
        return cls(
            name=str(body.get("model_name", body.get("name", name))),
            version=str(version),
            artifact_url=str(url) if url else None,
            artifact_sha256=body.get("artifact_sha256") or body.get("sha256"),
            package_sha256=body.get("package_sha256"),
        )
