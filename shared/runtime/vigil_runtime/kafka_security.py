"""The one way every Vigil Kafka client connects: TLS and SCRAM-SHA-512, or plaintext in development mode only.

Services, the CLI's readers, the simulator, replay, the demo and the benchmarks all take a
:class:`KafkaConnection` (built from a service's settings by ``settings.kafka``) and hand its
:meth:`~KafkaConnection.client_kwargs` to aiokafka or :meth:`~KafkaConnection.faststream_security` to FastStream.
The password is a ``SecretStr``: it never appears in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from faststream.security import BaseSecurity, SASLScram256, SASLScram512
from pydantic import SecretStr

from vigil_contracts.access import AclBinding

SecurityProtocol = Literal["SASL_SSL", "PLAINTEXT"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256"]


class KafkaSecurityError(ValueError):
    """The Kafka security settings are incomplete or refused (the message names the setting, never a secret)."""


@functools.cache
def ssl_context_for(ca_file: str | None) -> ssl.SSLContext:
    """One TLS client context per CA file and process: verifies the broker's certificate and its host name.

    Built once because loading the CA and creating a context costs milliseconds, and every producer, consumer and
    admin client of a process shares it (connections themselves are reused by each client).
    """
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True)
class KafkaConnection:
    """Where the broker is and how to authenticate to it."""

    bootstrap_servers: str
    security_protocol: SecurityProtocol = "SASL_SSL"
    ca_file: str | None = None
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)

    @property
    def secured(self) -> bool:
        return self.security_protocol != "PLAINTEXT"

    def check(self) -> None:
        """Refuse incomplete security settings before any connection is attempted."""
        if not self.secured:
            return
        if not self.username:
            raise KafkaSecurityError("kafka_username is not set (SASL_SSL needs a principal)")
        if self.password is None or not self.password.get_secret_value():
            raise KafkaSecurityError(f"no Kafka password for {self.username!r}: set kafka_password_file")
        if self.ca_file and not Path(self.ca_file).is_file():
            raise KafkaSecurityError(f"kafka_ca_file {self.ca_file} does not exist")

    def as_user(self, username: str, password: SecretStr | str) -> KafkaConnection:
        """The same broker and CA under another principal (tests and tools acting as a given service)."""
        secret = password if isinstance(password, SecretStr) else SecretStr(password)
        return KafkaConnection(
            self.bootstrap_servers, self.security_protocol, self.ca_file, self.sasl_mechanism, username, secret
        )

    def security_kwargs(self) -> dict[str, Any]:
        """Aiokafka's security arguments (no bootstrap servers)."""
        if not self.secured:
            return {"security_protocol": "PLAINTEXT"}
        self.check()
        if self.password is None or self.username is None:  # check() refuses this; the types cannot tell
            raise KafkaSecurityError("SASL_SSL needs a Kafka username and password")
        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": ssl_context_for(self.ca_file),
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password.get_secret_value(),
        }

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments for any aiokafka producer, consumer or admin client: bootstrap servers and security."""
        return {"bootstrap_servers": self.bootstrap_servers, **self.security_kwargs()}

    def faststream_security(self) -> BaseSecurity | None:
        """FastStream's security object (None for plaintext).

        Incomplete settings are not refused here but when the service starts (``check`` in the service frame),
        so that a service's app can be built in unit tests without a broker or credentials.
        """
        if not self.secured:
            return None
        password = self.password.get_secret_value() if self.password is not None else ""
        kind = SASLScram512 if self.sasl_mechanism == "SCRAM-SHA-512" else SASLScram256
        return kind(
            username=self.username or "",
            password=password,
            ssl_context=ssl_context_for(self.ca_file),
            use_ssl=True,
        )


# The broker's ACL wire codes (org.apache.kafka.common.resource / acl enums).
_RESOURCE = {"topic": 2, "group": 3, "cluster": 4}
_PATTERN = {"literal": 3, "prefixed": 4}
_OPERATION = {"All": 2, "Read": 3, "Write": 4, "Create": 5, "Describe": 8, "DescribeConfigs": 10}
_ALLOW = 3


async def create_acls(connection: KafkaConnection, bindings: Iterable[AclBinding]) -> int:
    """Create ACLs with the admin principal's connection; returns how many were created.

    aiokafka's admin client has no ACL methods, but aiokafka ships the CreateAcls request (API 30), which is what
    Kafka's own ``kafka-acls`` sends; sending it from here avoids one JVM start per ACL. Creating an ACL that
    exists is a no-op on the broker, so this is safe to repeat on every start.
    """
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import for_code
    from aiokafka.protocol.admin import CreateAclsRequest

    client = AIOKafkaClient(**connection.client_kwargs(), client_id="vigil-acl-admin")
    await client.bootstrap()
    try:
        requests = [
            CreateAclsRequest(
                _RESOURCE[b.resource_type],
                b.resource_name,
                _PATTERN[b.pattern],
                f"User:{b.principal}",
                "*",
                _OPERATION[b.operation],
                _ALLOW,
            )
            for b in bindings
        ]
        node = client.get_random_node()
        responses = await asyncio.gather(*(client.send(node, r) for r in requests))
        for response in responses:
            for error_code, message in response.creation_responses:
                if error_code:
                    raise for_code(error_code)(f"CreateAcls refused: {message}")
        return len(requests)
    finally:
        await client.close()
