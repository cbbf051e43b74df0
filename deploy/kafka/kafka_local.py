"""A real Apache Kafka broker (KRaft, combined broker and controller) on loopback, from the Maven Central
artifacts in deploy/kafka/lib (`make kafka-deps`). No Docker needed.

Used by `make up`, the tests, the fault suite and the benchmarks. Readiness is awaited by asking the
broker for its cluster metadata, never by sleeping.

Secure by default, as production runs: clients speak SASL (SCRAM-SHA-512) over TLS to a listener whose
certificate is signed by a certificate authority generated here at first start (kept in the data
directory); the controller listener takes only TLS clients holding a certificate from that authority; the
StandardAuthorizer denies whatever no ACL allows. Users are created with the broker's own storage tool at
format time (`--add-scram`), ACLs with Kafka's Admin API once the broker answers (`CreateAcls.java`).

    python deploy/kafka/kafka_local.py --port 9092 [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
LIB = HERE / "lib"
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:  # run as a script: the project's packages (the Kafka access of every client)
    sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from services.common.kafka_access import KafkaAccess  # noqa: E402
from services.common.private_files import OWNER_ONLY_UMASK, open_owner_only_log, write_owner_only  # noqa: E402

SASL_MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"
"""The broker's super user: creates users, ACLs and topics for tools; no service runs as it."""
BROKER_CERT_NAME = "cgt-kafka-broker"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cluster_id() -> str:
    """Kafka's cluster ids are 16 random bytes, URL-safe base64 without padding. Like Kafka's own
    Uuid.randomUuid, never one starting with '-': the storage tool would take it for an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class BrokerSecurity:
    """The certificates, users and ACLs of one broker or cluster, kept in `directory` (owner-only files) so
    that a restart on the same data finds the same authority and passwords.

    `users` are the principals clients log in as (each gets a random password, `password(user)`); `acls`
    are lines `PRINCIPAL RESOURCE_TYPE PATTERN_TYPE NAME OPERATION` (see CreateAcls.java)."""

    def __init__(self, directory: Path, users: tuple[str, ...] = (), acls: tuple[str, ...] = ()) -> None:
        self.directory = Path(directory)
        self.users = tuple(dict.fromkeys((ADMIN, *users)))
        self.acls = acls
        self._passwords: dict[str, str] | None = None

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def keystore_path(self) -> Path:
        """The broker's private key and certificate chain, in one PEM file (Kafka's PEM key store)."""
        return self.directory / "broker.pem"

    def password(self, user: str) -> str:
        return self.passwords()[user]

    def passwords(self) -> dict[str, str]:
        if self._passwords is None:
            path = self.directory / "users.json"
            known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
            missing = {user: secrets.token_urlsafe(24) for user in self.users if user not in known}
            if missing or not path.exists():
                self.directory.mkdir(parents=True, exist_ok=True)
                write_owner_only(path, json.dumps({**known, **missing}))
            self._passwords = {**known, **missing}
        return self._passwords

    def ensure_certificates(self) -> None:
        """A certificate authority and the broker's certificate (for 127.0.0.1 and localhost), made once."""
        if self.ca_path.exists() and self.keystore_path.exists():
            return
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        def name(common: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(name("cgt-local-kafka-ca"))
            .issuer_name(name("cgt-local-kafka-ca"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(BROKER_CERT_NAME))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.directory.mkdir(parents=True, exist_ok=True)
        write_owner_only(
            self.keystore_path,
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
            + cert.public_bytes(pem).decode()
            + ca.public_bytes(pem).decode(),
        )
        write_owner_only(self.ca_path, ca.public_bytes(pem).decode())

    def broker_config(self, port: int, controller_port: int) -> list[str]:
        admin = self.password(ADMIN)
        return [
            f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            f"sasl.enabled.mechanisms={SASL_MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={SASL_MECHANISM}",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
            f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN}" password="{admin}";',
            # The controller listener takes only a client certificate from our authority: the brokers'.
            "listener.name.controller.ssl.client.auth=required",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.keystore_path}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.ca_path}",
            "ssl.endpoint.identification.algorithm=https",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:{ADMIN};User:CN={BROKER_CERT_NAME}",
            "allow.everyone.if.no.acl.found=false",
        ]

    def format_arguments(self) -> list[str]:
        """The super user exists before the broker starts (it is the inter-broker identity)."""
        return ["--add-scram", f"{SASL_MECHANISM}=[name={ADMIN},password={self.password(ADMIN)}]"]

    def access(self, bootstrap: str, user: str = ADMIN) -> KafkaAccess:
        return KafkaAccess(
            bootstrap_servers=bootstrap,
            sasl_username=user,
            sasl_password=SecretStr(self.password(user)),
            ssl_cafile=self.ca_path,
        )

    def provision(self, bootstrap: str, classpath: str) -> None:
        """Every user but the super user, and every ACL, in one run of Kafka's Admin API (idempotent)."""
        client = self.directory / "admin-client.properties"
        write_owner_only(
            client,
            "\n".join(
                [
                    f"bootstrap.servers={bootstrap}",
                    "security.protocol=SASL_SSL",
                    f"sasl.mechanism={SASL_MECHANISM}",
                    "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
                    f'username="{ADMIN}" password="{self.password(ADMIN)}";',
                    "ssl.truststore.type=PEM",
                    f"ssl.truststore.location={self.ca_path}",
                    "",
                ]
            ),
        )
        lines = [f"USER {user} {self.password(user)}" for user in self.users if user != ADMIN]
        request = "\n".join([*lines, *self.acls, ""])
        marker = self.directory / "provisioned.sha256"
        digest = hashlib.sha256(f"{bootstrap}\n{request}".encode()).hexdigest()
        if marker.exists() and marker.read_text() == digest:
            return  # a restart on the same data: the users and ACLs are in the broker's metadata already
        done = subprocess.run(
            [
                "java",
                "-Xmx128m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-cp",
                classpath,
                str(HERE / "CreateAcls.java"),
                str(client),
            ],
            input=request,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"creating Kafka users and ACLs failed:\n{done.stdout}{done.stderr}")
        write_owner_only(marker, digest)


def _project_security(
    directory: Path, users: tuple[str, ...] | None, acls: tuple[str, ...] | None
) -> BrokerSecurity:
    from deploy import principals

    return BrokerSecurity(
        directory,
        principals.users() if users is None else users,
        principals.acl_lines() if acls is None else acls,
    )


class LocalKafka:
    """One broker process. `start()` returns once the broker answers a metadata request."""

    def __init__(
        self,
        port: int | None = None,
        controller_port: int | None = None,
        data_dir: Path | None = None,
        node_id: int = 1,
        heap: str = "512m",
        voters: str | None = None,
        cluster_id: str | None = None,
        extra: dict[str, str] | None = None,
        security: BrokerSecurity | None = None,
        users: tuple[str, ...] | None = None,
        acls: tuple[str, ...] | None = None,
    ) -> None:
        """`users` and `acls` default to the project's (`deploy/principals.py`)."""
        self.port = port or _free_port()
        self.controller_port = controller_port or _free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cgt-kafka-")
            data_dir = Path(self._tmp.name)
        self.data_dir = Path(data_dir)
        self.node_id = node_id
        self.heap = heap
        self.voters = voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self.cluster_id = cluster_id or _cluster_id()
        self.extra = extra or {}
        self.security = security or _project_security(self.data_dir / "security", users, acls)
        self.provisions = True
        """Creates the users and ACLs once ready (in a cluster, only the first node does)."""
        self.expected_brokers = 1
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def access(self, user: str = ADMIN) -> KafkaAccess:
        """How a client logs in as `user` (the super user by default: tools and tests)."""
        return self.security.access(self.bootstrap, user)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def _classpath(self) -> str:
        if not (LIB.is_dir() and any(LIB.glob("kafka_2.13-*.jar"))):
            raise RuntimeError(f"Kafka jars missing in {LIB}: run `make kafka-deps` first")
        return str(LIB / "*")

    def _write_config(self) -> Path:
        logs = self.data_dir / "logs"
        config = self.data_dir / "server.properties"
        self.security.ensure_certificates()
        write_owner_only(
            config,
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    f"controller.quorum.voters={self.voters}",
                    "controller.listener.names=CONTROLLER",
                    *self.security.broker_config(self.port, self.controller_port),
                    f"log.dirs={logs}",
                    "auto.create.topics.enable=false",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=5",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=5",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    # After a SIGKILL the controller refuses the new incarnation until the old one's session
                    # expires (DUPLICATE_BROKER_REGISTRATION): a 3 s session (Kafka's default is 9 s) keeps
                    # restarts in the fault suite and the tests short.
                    "broker.heartbeat.interval.ms=500",
                    "broker.session.timeout.ms=3000",
                    "log.flush.interval.messages=9223372036854775807",
                    *(f"{key}={value}" for key, value in self.extra.items()),
                    "",
                ]
            ),
        )
        return config

    def _java(self, *args: str, heap: str = "256m") -> list[str]:
        return [
            "java",
            f"-Xmx{heap}",
            "-XX:+UseSerialGC" if heap == "256m" else "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1" if heap == "256m" else "-XX:+UseStringDeduplication",
            f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
            *args,
        ]

    def _format(self, config: Path) -> None:
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        formatted = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self.cluster_id,
                "-c",
                str(config),
                "--ignore-formatted",
                *self.security.format_arguments(),
            ),
            capture_output=True,
            text=True,
            umask=OWNER_ONLY_UMASK,
        )
        if formatted.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed:\n{formatted.stdout}{formatted.stderr}")

    def start(self, timeout: float = 90.0) -> None:
        """Launch and return once the broker answers; a broker that never gets ready is killed, not leaked
        (it runs in its own session, so nothing else would stop it)."""
        self.launch()
        try:
            self.wait_ready(timeout)
            self.provision()
        except BaseException:
            self.kill()
            raise

    def launch(self) -> None:
        """Format (once) and start the process, without waiting: a cluster launches all nodes first."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"Kafka already running on {self.bootstrap} (pid {self.process.pid})")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = self._write_config()
        self._format(config)
        with open_owner_only_log(self.log_path) as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self._java("kafka.Kafka", str(config), heap=self.heap),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=OWNER_ONLY_UMASK,  # its log segments hold the events: the owner's only
            )

    def provision(self) -> None:
        if self.provisions:
            self.security.provision(self.bootstrap, self._classpath())

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Blocking (runs its own event loop): from async code call it via `asyncio.to_thread`."""
        asyncio.run(self._wait_ready(timeout))

    async def _wait_ready(self, timeout: float) -> None:
        import logging

        from aiokafka.admin import AIOKafkaAdminClient

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections are expected here
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Kafka exited with {self.process.returncode}:\n{self.log_tail()}")
            admin = AIOKafkaAdminClient(**self.access().client_options(), request_timeout_ms=3000)
            cluster: dict[str, Any] | None = None
            try:
                await admin.start()
                cluster = await admin.describe_cluster()
            except Exception as error:
                last_error = error
            finally:
                await admin.close()
            if cluster is not None:
                if cluster.get("cluster_id") != self.stored_cluster_id():
                    raise RuntimeError(
                        f"another Kafka ({cluster.get('cluster_id')}) answers on {self.bootstrap}"
                    )
                if len(cluster.get("brokers", [])) >= self.expected_brokers:
                    return
            await asyncio.sleep(0.2)
        raise TimeoutError(
            f"Kafka not ready on {self.bootstrap} after {timeout}s ({last_error!r}):\n{self.log_tail()}"
        )

    def stored_cluster_id(self) -> str | None:
        """The id this data dir was formatted with (kept across restarts), to tell our broker from a stray one."""
        meta = self.data_dir / "logs" / "meta.properties"
        for line in meta.read_text().splitlines() if meta.exists() else []:
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
        return None

    def stop(self, timeout: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM); SIGKILL if it does not stop in time."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def kill(self) -> None:
        """Abrupt death, for fault tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 90.0) -> None:
        """Start again on the same ports and data (the metadata log is kept, no reformat)."""
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.cleanup()


class LocalKafkaCluster:
    """Three (or more) combined broker-controller nodes on loopback, replication factor 3 and
    min.insync.replicas 2, for faults that a single broker cannot show (losing a broker mid-stream)."""

    def __init__(
        self,
        size: int = 3,
        data_dir: Path | None = None,
        users: tuple[str, ...] | None = None,
        acls: tuple[str, ...] | None = None,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cgt-kafka-cluster-")
            data_dir = Path(self._tmp.name)
        controller_ports = [_free_port() for _ in range(size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(controller_ports))
        cluster_id = _cluster_id()
        replicas = str(min(size, 3))
        extra = {
            "default.replication.factor": replicas,
            "min.insync.replicas": "2",
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": "2",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": "2",
        }
        self.security = _project_security(Path(data_dir) / "security", users, acls)
        self.nodes = [
            LocalKafka(
                security=self.security,
                controller_port=controller_ports[i],
                data_dir=Path(data_dir) / f"node{i + 1}",
                node_id=i + 1,
                heap="384m",
                voters=voters,
                cluster_id=cluster_id,
                extra=extra,
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.expected_brokers = size
            node.provisions = node is self.nodes[0]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, timeout: float = 120.0) -> None:
        for node in self.nodes:
            node.launch()
        self.nodes[0].wait_ready(timeout)
        self.nodes[0].provision()

    def access(self, user: str = ADMIN) -> KafkaAccess:
        return self.security.access(self.bootstrap, user)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description="Run one Apache Kafka broker (KRaft) on loopback.")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--controller-port", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    broker = LocalKafka(port=args.port, controller_port=args.controller_port, data_dir=args.data_dir)
    ready = False
    stop = False

    def _stop(_signum: int, _frame: object) -> None:
        """SIGINT or SIGTERM: before readiness abort start() (which kills the broker), after it leave the loop.
        Installed before start() because the broker runs in its own session and would outlive us."""
        nonlocal stop
        stop = True
        if not ready:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    started = time.monotonic()
    try:
        broker.start()
        ready = True
        print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
        print(f"ready in {time.monotonic() - started:.1f}s, logs in {broker.log_path}", file=sys.stderr)
        while not stop and broker.process is not None and broker.process.poll() is None:
            time.sleep(0.5)
        if not stop:
            print(f"Kafka exited on its own:\n{broker.log_tail()}", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        broker.cleanup()


if __name__ == "__main__":
    os.chdir(HERE.parent.parent)
    sys.exit(main())
