"""The scorer's registry client and model choice, against httpx.MockTransport (no network)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.support import package_path, tarball
from tests import factories
from vigil_contracts import events as ev
from vigil_runtime.metrics import ServiceMetrics
from vigil_runtime.registry_client import PackageRejected, RegistryClient, RegistryUnavailable
from vigil_scorer.pipeline import ScorerService
from vigil_scorer.settings import Settings
from vigil_scoring.model_package import ModelPackage, verify_package


def registry(handler: Any) -> RegistryClient:
    return RegistryClient("http://registry", verify=verify_package, transport=httpx.MockTransport(handler))


@pytest.fixture(scope="module")
def v1() -> Path:
    return package_path("1")


@pytest.mark.parametrize(
    "body",
    [
        {"version": "3", "artifact_url": "/artifacts/3", "artifact_sha256": "a" * 64},
        {"model_version": "3", "url": "http://registry/artifacts/3", "sha256": "a" * 64},
        {"model": {"name": "sepsis"}, "version": {"version": "3", "artifact_url": "artifacts/3", "sha256": "a" * 64}},
    ],
)
async def test_production_answer_shapes_are_all_understood(body: dict[str, Any]) -> None:
    client = registry(lambda request: httpx.Response(200, json=body))
    ref = await client.production("sepsis")
    assert ref is not None
    assert (ref.version, ref.artifact_url, ref.artifact_sha256) == ("3", "http://registry/artifacts/3", "a" * 64)


async def test_no_production_version_is_none_and_failures_are_unavailable() -> None:
    assert await registry(lambda r: httpx.Response(404, json={})).production("sepsis") is None
    with pytest.raises(RegistryUnavailable):
        await registry(lambda r: httpx.Response(503)).production("sepsis")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(RegistryUnavailable):
        await registry(refuse).production("sepsis")


async def test_a_package_is_accepted_only_with_matching_digests(v1: Path, tmp_path: Path) -> None:
    data = tarball(v1)
    client = registry(lambda r: httpx.Response(200, content=data))
    sha = ModelPackage.load(v1).sha256
    package = await client.fetch_package(
        "http://registry/a", cache_dir=tmp_path, artifact_sha256=sha, package_sha256=hashlib.sha256(data).hexdigest()
    )
    assert package.version == "1" and package.sha256 == sha
    with pytest.raises(PackageRejected, match="sha256"):
        await client.fetch_package("http://registry/a", cache_dir=tmp_path / "x", artifact_sha256="0" * 64)
    garbage = registry(lambda r: httpx.Response(200, content=b"not an archive"))
    with pytest.raises(PackageRejected):
        await garbage.fetch_package("http://registry/b", cache_dir=tmp_path / "y", artifact_sha256=None)
    local = await client.fetch_package(f"file://{v1}", cache_dir=tmp_path, artifact_sha256=sha)
    assert local.version == "1"


def service(tmp_path: Path, handler: Any) -> ScorerService:
    settings = Settings(default_model_path=package_path("1"), model_cache_dir=tmp_path)
    return ScorerService(
        settings,
        ServiceMetrics("scorer"),
        sink=None,  # type: ignore[arg-type]
        dead_letters=None,  # type: ignore[arg-type]
        registry=registry(handler),
    )


async def test_without_a_registry_the_default_model_scores_flagged(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    svc = service(tmp_path, refuse)
    model = await svc.load_initial_model()
    assert model.default_model and model.stage is ev.Stage.PRODUCTION
    svc.install(model)
    assert svc.core is not None and svc.core.default_model
    scores = svc.core.score([factories.encounter(), factories.observation()])
    assert scores and all(s.default_model for s in scores)


async def test_registry_production_version_is_used_and_a_demotion_pauses_live_scoring(tmp_path: Path, v1: Path) -> None:
    data = tarball(v1)
    sha = ModelPackage.load(v1).sha256

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/production"):
            return httpx.Response(200, json={"version": "1", "artifact_url": "/artifacts/1", "artifact_sha256": sha})
        return httpx.Response(200, content=data)

    svc = service(tmp_path, handler)
    model = await svc.load_initial_model()
    assert not model.default_model and model.package.version == "1"
    svc.install(model)
    demoted = factories.lifecycle(
        action=ev.LifecycleAction.RETIRED, model_version="1", from_stage=ev.Stage.PRODUCTION, to_stage=ev.Stage.RETIRED
    )
    await svc.on_lifecycle(demoted)
    assert svc.core is not None and svc.core.stage is ev.Stage.RETIRED
    assert svc.live is not None
    from vigil_scoring.scoring import NotProductionError

    with pytest.raises(NotProductionError):
        await svc.live.publish([])


def test_a_package_of_another_input_schema_is_rejected(v1: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from vigil_scoring.model_package import write_manifest

    other = tmp_path / "other"
    shutil.copytree(v1, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").unlink()
    write_manifest(
        other,
        name="sepsis",
        version="9",
        thresholds=manifest["thresholds"],
        created_at=manifest["created_at"],
        feature_set_version="some-other-features-v0",
        columns=("a", "b"),
    )

    with pytest.raises(PackageRejected, match="input schema"):
        verify_package(other, artifact_sha256=None, package_sha256=None)


async def test_a_relative_artifact_url_is_fetched_from_the_registry(v1: Path, tmp_path: Path) -> None:
    data = tarball(v1)
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(200, content=data)

    client = registry(handler)
    package = await client.fetch_package("/models/sepsis/versions/1/artifact", cache_dir=tmp_path, artifact_sha256=None)
    assert package.version == "1"
    assert asked == ["http://registry/models/sepsis/versions/1/artifact"]


def test_the_real_registry_api_answers_what_the_client_expects(tmp_path: Path, v1: Path) -> None:
    """Contract check against the registry service itself (its FastAPI app, SQLite, no Kafka)."""
    import asyncio

    from fastapi.testclient import TestClient

    from vigil_registry.app import create_app as registry_app
    from vigil_registry.artifacts import pack_folder
    from vigil_registry.settings import Settings as RegistrySettings

    tokens = {
        "scientist-token-0123456789abcdef": {"user": "dana", "role": "data_scientist"},
        "approver-token-0123456789abcdefg": {"user": "dr-alice", "role": "clinical_approver"},
        "viewer-token-0123456789abcdefghi": {"user": "vic", "role": "viewer"},
    }
    sci, app_ = ({"Authorization": f"Bearer {t}"} for t in list(tokens)[:2])
    settings = RegistrySettings(
        database_url=f"sqlite:///{tmp_path / 'r.db'}",
        artifact_root=tmp_path / "artifacts",
        public_url="http://registry",
        tokens=tokens,
        kafka_enabled=False,
        development=False,
    )
    app = registry_app(settings)
    with TestClient(app, base_url="http://registry") as http:
        created = http.post(
            "/models/sepsis/versions", content=pack_folder(v1), headers={**sci, "Content-Type": "application/gzip"}
        )
        assert created.status_code == 201, created.text
        for path, payload, headers in [
            ("/models/sepsis/versions/1/stage", {"to": "shadow"}, sci),
            ("/models/sepsis/versions/1/proposals", {"reason": "first version"}, sci),
            ("/models/sepsis/versions/1/approve", {"reason": "ok"}, app_),
            ("/models/sepsis/versions/1/promote", {"reason": "go live"}, app_),
        ]:
            assert http.post(path, json=payload, headers=headers).status_code in (200, 201)

        def through_test_client(request: httpx.Request) -> httpx.Response:
            r = http.request(request.method, str(request.url), headers=dict(request.headers))
            return httpx.Response(r.status_code, content=r.content, headers=r.headers)

        client = RegistryClient(
            "http://registry",
            verify=verify_package,
            token="viewer-token-0123456789abcdefghi",
            transport=httpx.MockTransport(through_test_client),
        )

        async def fetch() -> ModelPackage:
            ref = await client.production("sepsis")
            assert ref is not None and ref.version == "1" and ref.artifact_url and ref.package_sha256
            return await client.fetch_package(
                ref.artifact_url,
                cache_dir=tmp_path / "cache",
                artifact_sha256=ref.artifact_sha256,
                package_sha256=ref.package_sha256,
            )

        package = asyncio.run(fetch())
    assert package.version == "1" and package.sha256 == ModelPackage.load(v1).sha256


async def test_on_the_default_model_the_registry_is_asked_again_and_its_version_swapped_in(
    tmp_path: Path, v1: Path
) -> None:
    import asyncio

    data = tarball(v1)
    sha = ModelPackage.load(v1).sha256
    up = {"registry": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if not up["registry"]:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path.endswith("/production"):
            return httpx.Response(200, json={"version": "1", "artifact_url": "/artifacts/1", "artifact_sha256": sha})
        return httpx.Response(200, content=data)

    svc = service(tmp_path, handler)
    svc.settings.registry_poll_s = 0.01
    svc.install(await svc.load_initial_model())
    assert svc.core is not None and svc.core.default_model
    poll = asyncio.create_task(svc.poll_registry())
    try:
        up["registry"] = True
        for _ in range(200):
            if not svc.core.default_model:
                break
            await asyncio.sleep(0.02)
    finally:
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)
    assert not svc.core.default_model and svc.core.model_version == "1"


async def test_a_missed_promotion_is_caught_up_by_the_registry_poll(tmp_path: Path, v1: Path) -> None:
    import asyncio

    v2 = package_path("2")
    current = {"version": "1"}
    archives = {"1": tarball(v1), "2": tarball(v2)}
    digests = {"1": ModelPackage.load(v1).sha256, "2": ModelPackage.load(v2).sha256}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/production"):
            v = current["version"]
            return httpx.Response(200, json={"version": v, "artifact_url": f"/a/{v}", "artifact_sha256": digests[v]})
        return httpx.Response(200, content=archives[request.url.path.rsplit("/", 1)[-1]])

    svc = service(tmp_path, handler)
    svc.settings.registry_poll_s = 0.01
    svc.install(await svc.load_initial_model())
    assert svc.core is not None and svc.core.model_version == "1" and not svc.core.default_model
    poll = asyncio.create_task(svc.poll_registry())
    try:
        current["version"] = "2"  # promoted while the lifecycle event went unseen
        for _ in range(200):
            if svc.core.model_version == "2":
                break
            await asyncio.sleep(0.02)
    finally:
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)
    assert svc.core.model_version == "2" and svc.core.stage is ev.Stage.PRODUCTION
