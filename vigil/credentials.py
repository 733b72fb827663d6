"""Secure by default: the local CA, the broker's certificate and one SCRAM password per principal, made on first use.

Like Elasticsearch 8 on its first start, ``vigil kafka start`` and ``vigil up`` create what the secured broker
needs under ``.vigil/secrets`` (directory 0700, files 0600) when it is missing, and reuse it afterwards:

- ``kafka/ca.pem`` (public; every client trusts it) and ``kafka/ca.key`` (signs; used only here);
- ``kafka/broker.pem``: the broker's private key (PKCS#8) and certificate chain, which Kafka reads directly
  (``ssl.keystore.type=PEM``, no keytool). Its subject is ``CN=admin``: the broker authenticates to its own
  controller quorum with it (mutual TLS), as the one super user. SANs: 127.0.0.1, localhost and ``kafka``
  (the compose service name);
- ``kafka/<principal>.password``: a random 256-bit password per principal (SCRAM-SHA-512 credentials are
  created from them when the broker's storage is formatted).

Nothing here is printed; the passwords reach services as file paths (``*_KAFKA_PASSWORD_FILE``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from vigil.http_tokens import HttpSecrets
from vigil_contracts.access import Principal
from vigil_runtime.kafka_security import KafkaConnection

BROKER_HOSTS = ("127.0.0.1", "localhost", "kafka")
CERT_DAYS = 825
"""Leaf certificate lifetime (the CA/Browser Forum's former maximum); the CA lives ten years."""


def _write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, created with that mode (no window with wider permissions)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    path.chmod(0o600)


@dataclass(frozen=True)
class KafkaSecrets:
    """The Kafka secrets of one Vigil home."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def broker_pem(self) -> Path:
        return self.directory / "broker.pem"

    def password_file(self, principal: str) -> Path:
        return self.directory / f"{principal}.password"

    def password(self, principal: str) -> SecretStr:
        return SecretStr(self.password_file(principal).read_text().strip())

    def ensure(self, principals: Iterable[str] = (), *, hosts: Iterable[str] = BROKER_HOSTS) -> KafkaSecrets:
        """Create whatever is missing: the CA, the broker's key and certificate, a password per principal."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        if not (self.ca_file.exists() and self.ca_key.exists()):
            self._make_ca()
            self.broker_pem.unlink(missing_ok=True)  # a new CA invalidates the old leaf
        if not self.broker_pem.exists():
            self._make_broker_cert(list(hosts))
        for principal in {*(p.value for p in Principal), *principals}:
            path = self.password_file(principal)
            if not path.exists():
                _write_private(path, secrets.token_urlsafe(32).encode())
        return self

    def connection(self, bootstrap_servers: str, principal: str) -> KafkaConnection:
        """A client connection to the local broker as ``principal``."""
        return KafkaConnection(
            bootstrap_servers=bootstrap_servers,
            ca_file=str(self.ca_file),
            username=principal,
            password=self.password(principal),
        )

    def service_env(self, env_prefix: str, principal: str) -> dict[str, str]:
        """Environment variables that give a service its principal (paths only, never the password itself)."""
        return {
            f"{env_prefix}_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            f"{env_prefix}_KAFKA_CA_FILE": str(self.ca_file),
            f"{env_prefix}_KAFKA_USERNAME": principal,
            f"{env_prefix}_KAFKA_PASSWORD_FILE": str(self.password_file(principal)),
        }

    def _make_ca(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Vigil local CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(
            self.ca_key,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        _write_private(self.ca_file, cert.public_bytes(serialization.Encoding.PEM))

    def _make_broker_cert(self, hosts: list[str]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{self.ca_key} is not the EC key this CA was made with")
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, Principal.ADMIN.value)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            # Server for clients, client for the broker's own connections to its controller quorum (mTLS).
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        pem += cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
        _write_private(self.broker_pem, pem)


def kafka_secrets(home: Path) -> KafkaSecrets:
    """The Kafka secrets under a Vigil home (``<home>/secrets/kafka``; ``<home>/secrets`` is 0700 too)."""
    secrets_dir = home / "secrets"
    if secrets_dir.exists():
        secrets_dir.chmod(0o700)
    else:
        secrets_dir.mkdir(mode=0o700, parents=True)
    return KafkaSecrets(secrets_dir / "kafka")


@dataclass(frozen=True)
class StackSecrets:
    """Everything secret a stack needs: the broker's (Kafka) and the HTTP side's (tokens, signing key)."""

    kafka: KafkaSecrets | None
    """None in development mode (plaintext broker)."""
    http: HttpSecrets


def ensure_secrets(home: Path, principals: Iterable[str] = (), *, kafka: bool = True) -> StackSecrets:
    """The one entry point for a stack's secrets, made on first use and reused afterwards.

    ``vigil kafka start``, ``vigil up`` and the demo all come through here (the broker's start calls it), so the
    Kafka CA/certificates/SCRAM passwords and the HTTP tokens/signing key are always made together, under
    ``<home>/secrets``. ``principals``: extra SCRAM users (the tests'); ``kafka=False``: development mode, no
    Kafka secrets (the HTTP side is authenticated in every mode).
    """
    kafka_side = kafka_secrets(home).ensure(principals) if kafka else None
    return StackSecrets(kafka=kafka_side, http=HttpSecrets(home / "secrets").ensure())


# --- compose: the one-shot services that make the secrets and provision the broker ----------------------------

BROKER_UID = 1000
"""The apache/kafka image's user."""
SERVICE_UID = 10001
"""deploy/Dockerfile's ``vigil`` user."""
COMPOSE_DATA = "/var/lib/kafka/data"


def compose_init(directory: Path) -> None:
    """Make the secrets in a volume and the broker's configuration; give each file to the one user that reads it.

    Runs as root in the ``kafka-init`` service. The broker (uid 1000) reads its key, its configuration and the
    format arguments; the services (uid 10001) read their passwords and the CA; the admin password stays root's
    (only ``kafka-provision``, also root, uses it).
    """
    from vigil.kafka_local import scram_arguments, server_properties

    kafka = KafkaSecrets(directory)
    kafka.ensure(hosts=("kafka", "localhost", "127.0.0.1"))
    properties = server_properties(
        node_id=1,
        voters="1@kafka:9093",
        listen_host="0.0.0.0",
        advertised_host="kafka",
        port=9092,
        controller_port=9093,
        log_dir=COMPOSE_DATA,
        replication=1,
        secrets=kafka,
    )
    # The controller listener binds the container's interfaces but admits only the CA's certificates (mTLS).
    _write_private(directory / "server.properties", properties.encode())
    _write_private(directory / "format.args", " ".join(scram_arguments(kafka, [p.value for p in Principal])).encode())
    cluster_id = directory / "cluster.id"
    if not cluster_id.exists():
        from vigil.kafka_local import _kafka_uuid

        _write_private(cluster_id, _kafka_uuid().encode())
    _write_private(
        directory / "admin-client.properties",
        (
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
            f"ssl.truststore.type=PEM\nssl.truststore.location={kafka.ca_file}\n"
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="admin" password="{kafka.password(Principal.ADMIN.value).get_secret_value()}";\n'
        ).encode(),
    )
    directory.chmod(0o755)  # a directory listing; every file keeps its own 0600 owner
    kafka.ca_file.chmod(0o644)
    for name in ("broker.pem", "server.properties", "format.args", "cluster.id", "admin-client.properties"):
        os.chown(directory / name, BROKER_UID, BROKER_UID)
    for principal in Principal:
        if principal not in (Principal.ADMIN,):
            os.chown(kafka.password_file(principal.value), SERVICE_UID, SERVICE_UID)
    # The HTTP side in the same volume: the token table (every service), the scorer's and shadow's registry
    # tokens and the registry's signing key go to the services' user; the people's tokens (scientist, approver,
    # admin, operator, simulator) stay root's, read with `docker compose run` by whoever runs the stack.
    http = HttpSecrets(directory).ensure()
    service_reads = [
        http.table.parent,
        http.table,
        http.token_file("scorer"),
        http.token_file("shadow"),
        http.signing_key.parent,
        http.signing_key,
        http.public_key,
    ]
    for path in service_reads:
        os.chown(path, SERVICE_UID, SERVICE_UID)


def compose_provision(directory: Path, bootstrap: str, prefix: str, partitions: int) -> None:
    """Create the topics and ACLs as the admin principal (the ``kafka-provision`` one-shot service)."""
    import asyncio

    from vigil.kafka_local import provision
    from vigil_contracts.topics import Topics

    connection = KafkaSecrets(directory).connection(bootstrap, Principal.ADMIN.value)
    created = asyncio.run(provision(connection, Topics(prefix), partitions=partitions))
    print(f"provisioned {len(created)} new topics and the ACL table for prefix {prefix!r}")


def main(argv: list[str] | None = None) -> None:
    """``python -m vigil.credentials compose-init DIR`` or ``compose-provision DIR BOOTSTRAP PREFIX PARTITIONS``."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "compose-init":
        compose_init(Path(args[1]))
    elif len(args) == 5 and args[0] == "compose-provision":
        compose_provision(Path(args[1]), args[2], args[3], int(args[4]))
    else:
        raise SystemExit(main.__doc__)


if __name__ == "__main__":
    main()
