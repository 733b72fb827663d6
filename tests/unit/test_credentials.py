"""The secrets made on first use: owner-only files, a CA that verifies the broker's certificate, stable reuse."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from cryptography import x509

from vigil.credentials import KafkaSecrets, kafka_secrets
from vigil_contracts.access import Principal
from vigil_runtime.settings import VigilSettings


def test_secrets_are_owner_only_and_reused(tmp_path: Path) -> None:
    secrets = kafka_secrets(tmp_path).ensure(["test-admin"])
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE(secrets.directory.stat().st_mode) == 0o700
    files = sorted(secrets.directory.iterdir())
    assert {f.name for f in files} >= {"ca.pem", "ca.key", "broker.pem", "test-admin.password"}
    assert {f"{p.value}.password" for p in Principal} <= {f.name for f in files}
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    before = {f.name: f.read_bytes() for f in files}
    kafka_secrets(tmp_path).ensure(["test-admin"])
    assert {f.name: f.read_bytes() for f in secrets.directory.iterdir()} == before  # second start: nothing new
    passwords = {secrets.password(p.value).get_secret_value() for p in Principal}
    assert len(passwords) == len(Principal) and all(len(p) >= 40 for p in passwords)


def test_the_broker_certificate_is_signed_by_the_ca_for_the_broker_hosts(tmp_path: Path) -> None:
    secrets = KafkaSecrets(tmp_path / "k").ensure()
    chain = x509.load_pem_x509_certificates(secrets.broker_pem.read_bytes())
    leaf, ca = chain[0], x509.load_pem_x509_certificate(secrets.ca_file.read_bytes())
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "kafka"}
    assert leaf.subject.rfc4514_string() == "CN=admin"  # the controller quorum's mTLS principal
    context = ssl.create_default_context(cafile=str(secrets.ca_file))  # what every client builds
    assert context.cert_store_stats()["x509_ca"] == 1


def test_the_password_never_shows_in_settings_or_connection_reprs(tmp_path: Path) -> None:
    secrets = KafkaSecrets(tmp_path / "k").ensure()
    password = secrets.password("scorer").get_secret_value()
    settings = VigilSettings(
        kafka_username="scorer",
        kafka_password_file=str(secrets.password_file("scorer")),
        kafka_ca_file=str(secrets.ca_file),
    )
    connection = settings.kafka
    assert connection.password is not None and connection.password.get_secret_value() == password
    for text in (repr(settings), str(settings), repr(connection), repr(connection.faststream_security())):
        assert password not in text
