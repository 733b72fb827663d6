"""A real Apache Kafka broker without Docker: jars from Maven Central, run by the machine's JDK.

``vigil kafka start`` fetches the broker (``org.apache.kafka:kafka_2.13``) and a log4j binding with ``mvn
dependency:copy-dependencies`` into ``.vigil/kafka/<version>/libs`` (ignored by git, so the second start is
fast), formats KRaft storage and starts a combined broker+controller on 127.0.0.1. ``--brokers N`` starts an
N-node cluster on one machine (distinct node ids, ports and log dirs), which the failure tests use to kill a
broker for real.

Secured by default (``secured=True``): the client listener is SASL_SSL with SCRAM-SHA-512 (credentials made by
:mod:`vigil.credentials` and written into the metadata when storage is formatted, ``--add-scram``), KRaft's
``StandardAuthorizer`` denies what no ACL allows, and the only super user is ``admin``. The controller listener
is on loopback with mutual TLS (only a holder of a certificate from the local CA, i.e. the broker itself, gets in;
SCRAM cannot authenticate controllers, whose metadata holds the SCRAM credentials). ``secured=False`` is the
development mode a person asks for: plaintext, no ACLs.

Kafka 4.1.1: the newest 4.1 patch; aiokafka 0.14 speaks the classic consumer-group protocol, which 4.x still
serves (KAFKA-18648 restored the metadata versions it needs). The integration tier proves the round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vigil.credentials import KafkaSecrets, kafka_secrets
from vigil_contracts.access import AclBinding, Principal, bindings_for
from vigil_contracts.topics import Topics
from vigil_runtime.kafka_security import KafkaConnection, create_acls
from vigil_runtime.replication import default_replication, min_insync_for

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
REPO_ROOT = Path(__file__).resolve().parents[1]

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>org.vigil</groupId><artifactId>kafka-broker-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

LOG4J2 = """rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=WARN
logger.apache.name=org.apache.kafka
logger.apache.level=WARN
logger.started.name=kafka.server.KafkaRaftServer
logger.started.level=INFO
"""


def vigil_home() -> Path:
    """Where local state lives: ``$VIGIL_HOME`` or ``.vigil`` in the repository (git-ignored)."""
    return Path(os.environ.get("VIGIL_HOME", REPO_ROOT / ".vigil"))


def server_properties(
    *,
    node_id: int,
    voters: str,
    listen_host: str,
    advertised_host: str,
    port: int,
    controller_port: int,
    log_dir: Path | str,
    replication: int,
    secrets: KafkaSecrets | None,
) -> str:
    """One node's ``server.properties``: secured with ``secrets`` (the native broker and compose share this)."""
    rf = replication
    client = "SASL_SSL" if secrets is not None else "PLAINTEXT"
    lines = [
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"controller.quorum.voters={voters}",
        f"listeners={client}://{listen_host}:{port},CONTROLLER://{listen_host}:{controller_port}",
        f"advertised.listeners={client}://{advertised_host}:{port}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={client}",
        f"log.dirs={log_dir}",
        "num.partitions=6",
        f"default.replication.factor={rf}",
        f"min.insync.replicas={min_insync_for(rf)}",
        f"offsets.topic.replication.factor={rf}",
        f"transaction.state.log.replication.factor={rf}",
        f"transaction.state.log.min.isr={min_insync_for(rf)}",
        "offsets.topic.num.partitions=12",
        "group.initial.rebalance.delay.ms=0",
        # Secured, nobody but the administrator creates topics (a typo must not make a new topic).
        f"auto.create.topics.enable={'false' if secrets is not None else 'true'}",
        # Replay re-publishes observations with their clinical times; allow old timestamps.
        "log.message.timestamp.before.max.ms=9223372036854775807",
        "log.message.timestamp.after.max.ms=86400000",
        "log.retention.hours=168",
        "log.segment.bytes=67108864",
    ]
    if secrets is None:
        lines.append("listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT")
        return "\n".join([*lines, ""])
    admin = Principal.ADMIN.value
    password = secrets.password(admin).get_secret_value()
    lines += [
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{admin}" '
        f'password="{password}";',
        # PEM key and chain read directly: no keytool, no JKS password.
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={secrets.broker_pem}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={secrets.ca_file}",
        "ssl.client.auth=none",
        # The controller quorum admits only certificates from the local CA; CN=admin is the principal.
        "listener.name.controller.ssl.client.auth=required",
        "ssl.principal.mapping.rules=RULE:^CN=([^,]+).*$/$1/,DEFAULT",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users=User:{admin}",
    ]
    return "\n".join([*lines, ""])


def scram_arguments(secrets: KafkaSecrets, principals: Iterable[str]) -> list[str]:
    """``kafka-storage format`` arguments that create a SCRAM-SHA-512 user per principal in the metadata."""
    out: list[str] = []
    for principal in principals:
        password = secrets.password(principal).get_secret_value()
        out += ["--add-scram", f"SCRAM-SHA-512=[name={principal},password={password}]"]
    return out


async def provision(
    connection: KafkaConnection,
    topics: Topics,
    *,
    partitions: int = 6,
    replication_factor: int | None = None,
    extra_acls: Iterable[AclBinding] = (),
) -> list[str]:
    """As the administrator: create the stack's topics and the ACLs of :mod:`vigil_contracts.access` for them.

    Services cannot create topics on a secured cluster; this is the step that does it (idempotent). Used by
    ``vigil kafka start``, ``vigil up`` and compose's ``kafka-provision`` service.
    """
    from vigil_runtime.kafka import ensure_topics
    from vigil_runtime.settings import VigilSettings

    settings = VigilSettings(
        kafka_bootstrap_servers=connection.bootstrap_servers,
        topic_prefix=topics.prefix,
        partitions=partitions,
        replication_factor=replication_factor,
        kafka_security_protocol=connection.security_protocol,
        kafka_ca_file=connection.ca_file,
        kafka_username=connection.username,
        kafka_password=connection.password,
        development=not connection.secured,
    )
    created = await ensure_topics(settings)
    if connection.secured:
        await create_acls(connection, [*bindings_for(topics), *extra_acls])
    return created


class KafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped."""


def fetch_jars(version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """The folder of broker jars, fetched from Maven Central with mvn on first use."""
    base = vigil_home() / "kafka" / version
    libs = base / "libs"
    done = base / ".complete"
    if done.exists() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    if shutil.which("mvn") is None:
        raise KafkaError("mvn not found: install Maven (and a JDK 17+) to run the native broker")
    base.mkdir(parents=True, exist_ok=True)
    (base / "pom.xml").write_text(POM.format(kafka=version, log4j=LOG4J_VERSION))
    if libs.exists():
        shutil.rmtree(libs)
    cmd = [
        "mvn",
        "-B",
        "-f",
        str(base / "pom.xml"),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={libs}",
    ]
    if quiet:
        cmd.insert(1, "-q")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KafkaError(f"mvn could not fetch Kafka {version}:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    done.write_text(version)
    return libs


@dataclass(frozen=True)
class Node:
    """One broker of a local cluster."""

    node_id: int
    port: int
    controller_port: int
    directory: Path

    @property
    def pid_file(self) -> Path:
        return self.directory / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "broker.log"

    def pid(self) -> int | None:
        """The broker's process id if it is running."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if process_alive(pid) else None

    def answers(self) -> bool:
        """The broker's port accepts connections."""
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False


@dataclass(frozen=True)
class LocalCluster:
    """A Kafka cluster of ``brokers`` combined nodes on 127.0.0.1, state under ``home/kafka/<name>``."""

    name: str = "default"
    brokers: int = 1
    base_port: int = 9092
    version: str = KAFKA_VERSION
    home: Path | None = None
    secured: bool = True
    """TLS + SCRAM + ACLs; False only in development mode, which a person asks for (``--dev``)."""
    extra_principals: tuple[str, ...] = ()
    """SCRAM users beyond the stack's principals (the tests' ``test-admin`` and ``outsider``)."""

    @property
    def directory(self) -> Path:
        return (self.home or vigil_home()) / "kafka" / "clusters" / self.name

    @property
    def secrets(self) -> KafkaSecrets:
        """The CA, broker certificate and passwords of this cluster's Vigil home."""
        return kafka_secrets(self.home or vigil_home())

    @property
    def principals(self) -> tuple[str, ...]:
        return (*(p.value for p in Principal), *self.extra_principals)

    def connection(self, principal: str = Principal.ADMIN.value) -> KafkaConnection:
        """A client connection to this cluster as ``principal`` (plaintext when the cluster is not secured)."""
        if not self.secured:
            return KafkaConnection(self.bootstrap_servers, security_protocol="PLAINTEXT")
        return self.secrets.connection(self.bootstrap_servers, principal)

    def service_env(self, env_prefix: str, principal: str) -> dict[str, str]:
        """A service's Kafka environment: its principal's credentials, or development mode's plaintext."""
        if not self.secured:
            return {f"{env_prefix}_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", "VIGIL_DEVELOPMENT": "true"}
        return self.secrets.service_env(env_prefix, principal)

    @property
    def _security_marker(self) -> Path:
        return self.directory / "security"

    def _check_formatted_mode(self) -> None:
        """Refuse to start storage formatted for the other mode (a plaintext cluster has no SCRAM users)."""
        mode = "sasl_ssl" if self.secured else "plaintext"
        formatted = any((n.directory / "data" / "meta.properties").exists() for n in self.nodes)
        if not formatted:
            self._security_marker.write_text(mode)
            return
        found = self._security_marker.read_text().strip() if self._security_marker.exists() else "plaintext"
        if found != mode:
            raise KafkaError(
                f"cluster {self.name!r} was formatted {found}, this start asks for {mode}; "
                f"`vigil kafka stop --destroy --name {self.name}` deletes its data so it can be formatted again"
            )

    @property
    def nodes(self) -> list[Node]:
        """Node i listens on base_port + 2i (clients) and base_port + 2i + 1 (controller quorum)."""
        return [
            Node(i + 1, self.base_port + 2 * i, self.base_port + 2 * i + 1, self.directory / f"node-{i + 1}")
            for i in range(self.brokers)
        ]

    @property
    def bootstrap_servers(self) -> str:
        """Comma-separated client addresses of every node."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def _properties(self, node: Node) -> str:
        return server_properties(
            node_id=node.node_id,
            voters=",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes),
            listen_host="127.0.0.1",
            advertised_host="127.0.0.1",
            port=node.port,
            controller_port=node.controller_port,
            log_dir=node.directory / "data",
            replication=default_replication(self.brokers),
            secrets=self.secrets if self.secured else None,
        )

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise KafkaError("java not found: install a JDK 17+ to run the native broker")
        return java

    def start(self, *, timeout: float = 90.0) -> str:
        """Start every node not already running, wait until all answer; returns the bootstrap servers."""
        libs = fetch_jars(self.version)
        java = self._java()
        cp = f"{libs}/*"
        cluster_id_file = self.directory / "cluster.id"
        self.directory.mkdir(parents=True, exist_ok=True)
        if not cluster_id_file.exists():
            cluster_id_file.write_text(_kafka_uuid())
        cluster_id = cluster_id_file.read_text().strip()
        log4j = self.directory / "log4j2.properties"
        log4j.write_text(LOG4J2)
        self._check_formatted_mode()
        if self.secured:
            from vigil.credentials import ensure_secrets

            # The stack's one entry point for secrets: the HTTP tokens and signing key are made with the broker's.
            ensure_secrets(self.home or vigil_home(), self.principals)
        for node in self.nodes:
            if node.pid() is not None:
                continue
            node.directory.mkdir(parents=True, exist_ok=True)
            props = node.directory / "server.properties"
            # 0600: secured, it holds the admin principal's password (the inter-broker login).
            fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(self._properties(node))
            if not (node.directory / "data" / "meta.properties").exists():
                fmt = subprocess.run(
                    [
                        *(java, "-cp", cp, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
                        *self._scram_arguments(),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if fmt.returncode != 0:
                    raise KafkaError(f"formatting storage failed: {fmt.stdout[-2000:]} {fmt.stderr[-2000:]}")
            for port in (node.port, node.controller_port):
                if _port_busy(port):
                    raise KafkaError(f"port {port} is in use by another process; choose another --port")
            with node.log_file.open("ab") as out:
                proc = subprocess.Popen(
                    [
                        java,
                        "-Xms256m",
                        "-Xmx768m",
                        "-XX:+UseG1GC",
                        "-Djava.awt.headless=true",
                        f"-Dlog4j2.configurationFile={log4j}",
                        "-cp",
                        cp,
                        "kafka.Kafka",
                        str(props),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            node.pid_file.write_text(str(proc.pid))
        self.wait_ready(timeout=timeout)
        return self.bootstrap_servers

    def _scram_arguments(self) -> list[str]:
        """``--add-scram`` for every principal: SCRAM users live in the metadata, written at format time."""
        return scram_arguments(self.secrets, self.principals) if self.secured else []

    def provision(self, topics: Topics, *, partitions: int = 6, extra_acls: Iterable[AclBinding] = ()) -> list[str]:
        """Create the stack's topics and ACLs as the administrator (see :func:`provision`)."""
        from concurrent.futures import ThreadPoolExecutor

        run = provision(
            self.connection(),
            topics,
            partitions=partitions,
            replication_factor=default_replication(self.brokers),
            extra_acls=extra_acls,
        )
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, run).result()

    def wait_ready(self, *, timeout: float = 90.0) -> None:
        """Wait until every node answers and the cluster serves metadata with all brokers registered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n in self.nodes if n.pid() is None]
            if dead:
                tail = dead[0].log_file.read_text(errors="replace")[-3000:] if dead[0].log_file.exists() else ""
                raise KafkaError(f"broker {dead[0].node_id} exited during start-up:\n{tail}")
            if all(n.answers() for n in self.nodes) and _registered_brokers(self.connection()) >= self.brokers:
                return
            time.sleep(0.5)
        raise KafkaError(f"Kafka did not answer within {timeout:.0f}s; see {self.nodes[0].log_file}")

    def status(self) -> list[dict[str, object]]:
        """One row per node: id, port, pid, whether it answers."""
        return [
            {"node": n.node_id, "port": n.port, "pid": n.pid(), "answers": n.answers(), "dir": str(n.directory)}
            for n in self.nodes
        ]

    def running(self) -> bool:
        """Every node is running and answers."""
        return all(n.pid() is not None and n.answers() for n in self.nodes)

    def stop_node(self, node_id: int, *, kill: bool = False, timeout: float = 30.0) -> None:
        """Stop one node: SIGTERM (controlled shutdown), or SIGKILL with ``kill`` (a crash)."""
        node = self.nodes[node_id - 1]
        pid = node.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process_alive(pid):
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        node.pid_file.unlink(missing_ok=True)

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop every node cleanly."""
        for node in reversed(self.nodes):
            self.stop_node(node.node_id, timeout=timeout)

    def destroy(self) -> None:
        """Stop and delete the cluster's data."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def client_connection(bootstrap: str, principal: str, home: Path | None = None) -> KafkaConnection:
    """How a command-line tool connects to the broker.

    The ``VIGIL_KAFKA_*`` settings when a person gave them, else the local stack's credentials for ``principal``
    (made on first start, under ``.vigil/secrets``).
    """
    from vigil_runtime.settings import VigilSettings

    settings = VigilSettings(kafka_bootstrap_servers=bootstrap)
    if settings.kafka_username or settings.kafka_security_protocol == "PLAINTEXT":
        return settings.kafka
    return kafka_secrets(home or vigil_home()).connection(bootstrap, principal)


def known_clusters(home: Path | None = None) -> list[LocalCluster]:
    """Every cluster that has state under ``home/kafka/clusters``, with its node count and ports as started.

    The ports are read back from each node's ``server.properties`` (written at start), so a cluster is found by the
    port it actually uses, whatever name it was started under (``vigil up --kafka-port 29092`` names its cluster
    ``stack-29092``).
    """
    root = (home or vigil_home()) / "kafka" / "clusters"
    found: list[LocalCluster] = []
    for directory in sorted(p for p in root.glob("*") if p.is_dir()) if root.exists() else []:
        nodes = sorted(directory.glob("node-*"))
        ports = [_client_port(node / "server.properties") for node in nodes]
        if not ports or ports[0] is None:
            continue
        # Secured or development mode as it was started (a stop/status must not need ``--dev`` to be repeated).
        secured = "SASL_SSL://" in (nodes[0] / "server.properties").read_text()
        found.append(
            LocalCluster(name=directory.name, brokers=len(ports), base_port=ports[0], home=home, secured=secured)
        )
    return found


def find_clusters(*, port: int | None = None, name: str | None = None, home: Path | None = None) -> list[LocalCluster]:
    """The known clusters matching a client port (of any of their nodes) and/or a name; empty when none does."""
    return [
        c
        for c in known_clusters(home)
        if (name is None or c.name == name) and (port is None or any(n.port == port for n in c.nodes))
    ]


def port_answers(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:``port``."""
    return _port_busy(port)


def _client_port(properties: Path) -> int | None:
    """The first non-controller listener's port in a node's server.properties (None if unreadable)."""
    try:
        lines = properties.read_text().splitlines()
        props = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    except OSError:
        return None
    controllers = set(props.get("controller.listener.names", "CONTROLLER").split(","))
    for listener in props.get("listeners", "").split(","):
        listener_name, _, address = listener.partition("://")
        if listener_name.strip() not in controllers and ":" in address:
            with contextlib.suppress(ValueError):
                return int(address.rsplit(":", 1)[1])
    return None


def process_alive(pid: int) -> bool:
    """Whether a process runs (reaping it first if it is our exited child; a zombie counts as gone)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _port_busy(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.3):
        return True
    return False


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (what StorageTool random-uuid prints)."""
    import base64

    while True:
        # Kafka's own Uuid.randomUuid() draws again when the text starts with "-": the command line would read such
        # an id as an option (`format -t -Abc...` failed "argument --cluster-id/-t: expected one argument", 1 in 64).
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _registered_brokers(connection: KafkaConnection) -> int:
    """How many brokers the cluster's metadata lists (0 when it does not answer yet).

    Run on a thread of its own, so that callers inside an event loop (the demo, async tests) can use it too.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _brokers_registered(connection)).result()


async def _brokers_registered(connection: KafkaConnection) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**connection.client_kwargs(), request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), timeout=5)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout=5)
        return len(cluster.get("brokers", []))
    except Exception:
        return 0
    finally:
        try:
            await admin.close()
        except Exception as error:  # the answer is already decided; a failed close only leaks a socket
            log.debug("admin client close failed", extra={"error_type": type(error).__name__})
