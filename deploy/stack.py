"""Start the whole stack on this machine: one real Kafka broker and the three services as processes.

Used by `make up` (foreground, Ctrl-C stops everything; it adds the coordinator console, `console_process`),
`make demo`, the end-to-end tests, the fault suite and the benchmarks. Readiness is awaited by asking each
service's /ready (database and broker), the console's /health.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import psycopg

from services.coi_tracking.courier_keys import signature_headers
from services.common import development
from services.common.development import (
    DEV_COURIER_SIGNING_KEYS,
    DEV_PATIENT_MATCH_KEY,
    DEV_PHI_KEY,
    DEV_QA_SIGNING_PIN,
    DEV_WEBHOOK_SECRET_KEY,
    public_key_of,
)
from services.common.kafka_access import KafkaAccess, kafka_from_environment
from services.common.private_files import OWNER_ONLY_UMASK, open_owner_only_log

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {
    "order-intake": "services.order_intake.app:create_app",
    "coi-tracking": "services.coi_tracking.app:create_app",
    "scheduling": "services.scheduling.app:create_app",
}
DEFAULT_PORTS = {"order-intake": 8001, "coi-tracking": 8002, "scheduling": 8003}
CONSOLE_APP = "services.console.app:create_app"
CONSOLE_PORT = 8004
DEV_TOKENS_FILE = ROOT / "deploy" / "dev-tokens.json"
DEV_LEDGER_SIGNING_KEYS = json.dumps(development.DEV_LEDGER_SIGNING_KEYS)
DEV_SIGNING_PINS = json.dumps(development.DEV_SIGNING_PINS)
DEV_COURIER_VERIFY_KEYS = json.dumps(
    {
        key_id: {"company": company, "public_key": public_key_of(private)}
        for company, (key_id, private) in DEV_COURIER_SIGNING_KEYS.items()
    }
)
"""What COI tracking registers for them (COURIER_VERIFY_KEYS)."""


def courier_signature(value: bytes, company: str = "CRYO-EXPRESS") -> list[tuple[str, bytes]]:
    """The signature headers a development courier company's system puts on a couriers.scans record."""
    key_id, private = DEV_COURIER_SIGNING_KEYS[company]
    return signature_headers(value, key_id, private)


class KafkaAccounts(Protocol):
    """A broker that knows its principals' credentials (deploy/kafka's LocalKafka and LocalKafkaCluster)."""

    def access(self, user: str = ...) -> KafkaAccess: ...


@dataclass(frozen=True)
class ConfiguredKafka:
    """A broker named by the environment (KAFKA_BOOTSTRAP_SERVERS and the other KAFKA_* variables): every
    service logs in as the one configured principal; on such a broker the operator sets the ACLs."""

    configured: KafkaAccess

    def access(self, user: str = "") -> KafkaAccess:
        return self.configured


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    app: str = ""
    """The uvicorn factory (default: the service's, `SERVICES`)."""
    ready_path: str = "/ready"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open_owner_only_log(self.log_path)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--no-server-header",
                "--factory",
                self.app or SERVICES[self.name],
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--timeout-graceful-shutdown",
                "20",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=OWNER_ONLY_UMASK,  # its database files: the owner's only
        )
        log.close()  # the child has its own copy

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.url}{self.ready_path}", timeout=2.0)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as error:
                last = repr(error)
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: drain and commit), SIGKILL if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class Stack:
    """The three services, each with its own database, against one broker."""

    kafka: KafkaAccounts
    """The broker, and how each service logs in to it (as its own principal)."""
    database_urls: Mapping[str, str]
    workdir: Path
    ports: Mapping[str, int] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in SERVICES:
            env = {
                **os.environ,
                "SERVICE_NAME": name,
                "DATABASE_URL": self.database_urls[name],
                **self.kafka.access(name).environment(),
                # A development stack, run with the published development secrets (services/common/development.py).
                development.DEV_MODE_VARIABLE: os.environ.get(development.DEV_MODE_VARIABLE, "true"),
                "CGT_API_TOKENS_FILE": os.environ.get("CGT_API_TOKENS_FILE", str(DEV_TOKENS_FILE)),
                "PHI_ENCRYPTION_KEY": os.environ.get("PHI_ENCRYPTION_KEY", DEV_PHI_KEY),
                "PATIENT_MATCH_KEY": os.environ.get("PATIENT_MATCH_KEY", DEV_PATIENT_MATCH_KEY),
                "SEED_SIGNING_PINS": os.environ.get("SEED_SIGNING_PINS", DEV_SIGNING_PINS),
                "LEDGER_SIGNING_KEYS": os.environ.get("LEDGER_SIGNING_KEYS", DEV_LEDGER_SIGNING_KEYS),
                "COURIER_VERIFY_KEYS": os.environ.get("COURIER_VERIFY_KEYS", DEV_COURIER_VERIFY_KEYS),
                "WEBHOOK_SECRET_KEY": os.environ.get("WEBHOOK_SECRET_KEY", DEV_WEBHOOK_SECRET_KEY),
                "PYTHONUNBUFFERED": "1",
                # A development stack: its webhook receivers (demo, tests, bench) listen on loopback.
                "WEBHOOK_ALLOW_LOOPBACK": os.environ.get("WEBHOOK_ALLOW_LOOPBACK", "true"),
                # Development, the suite and the bench: one address, a few tokens, thousands of requests.
                "RATE_LIMIT_PER_MINUTE": os.environ.get("RATE_LIMIT_PER_MINUTE", "1000000"),
                "RATE_LIMIT_FAILED_AUTH_PER_MINUTE": os.environ.get(
                    "RATE_LIMIT_FAILED_AUTH_PER_MINUTE", "100000"
                ),
                **self.extra_env,
            }
            port = self.ports.get(name) or free_port()
            self.services[name] = ServiceProcess(name, port, env, self.workdir / f"{name}.log")

    def url(self, name: str) -> str:
        return self.services[name].url

    @property
    def admin(self) -> KafkaAccess:
        """The broker's super user: the tests', the tools' and the benchmarks' raw clients."""
        return self.kafka.access()

    def start(self, timeout: float = 90.0) -> None:
        for service in self.services.values():
            service.start()
        for service in self.services.values():
            service.wait_ready(timeout)

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()


def console_process(stack: Stack, port: int | None = None) -> ServiceProcess:
    """The coordinator console in front of `stack`'s services (no database, no broker: ready when its
    /health answers), with the development session key and, for plain HTTP on loopback, cookies without
    `Secure`, unless the environment says otherwise."""
    env = {
        **os.environ,
        development.DEV_MODE_VARIABLE: os.environ.get(development.DEV_MODE_VARIABLE, "true"),
        "CONSOLE_SESSION_KEY": os.environ.get("CONSOLE_SESSION_KEY", development.DEV_CONSOLE_SESSION_KEY),
        "CONSOLE_COOKIE_SECURE": os.environ.get("CONSOLE_COOKIE_SECURE", "false"),
        "ORDER_INTAKE_URL": stack.url("order-intake"),
        "COI_TRACKING_URL": stack.url("coi-tracking"),
        "SCHEDULING_URL": stack.url("scheduling"),
        "PYTHONUNBUFFERED": "1",
    }
    return ServiceProcess(
        "console",
        port or free_port(),
        env,
        stack.workdir / "console.log",
        app=CONSOLE_APP,
        ready_path="/health",
    )


def sqlite_urls(directory: Path) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    return {name: f"sqlite:///{directory / (name.replace('-', '_') + '.db')}" for name in SERVICES}


POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://cgt:cgt@127.0.0.1:5432/postgres")


def create_postgres_databases(names: list[str]) -> dict[str, str]:
    """Fresh databases (one per service) on the test PostgreSQL server; fails loudly if none answers."""
    urls: dict[str, str] = {}
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=10) as connection:
        for name in names:
            database = f"cgt_{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
            connection.execute(f'CREATE DATABASE "{database}"')
            urls[name] = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    return urls


def drop_postgres_databases(urls: dict[str, str], attempts: int = 60) -> None:
    """Drop the databases. An autovacuum worker in one cannot be terminated by a non-superuser (FORCE fails
    with InsufficientPrivilege); it finishes in moments, so the drop is retried, within a bound."""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=10) as connection:
        for url in urls.values():
            database = url.rsplit("/", 1)[1]
            for attempt in range(1, attempts + 1):
                try:
                    connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                    break
                except psycopg.errors.InsufficientPrivilege:
                    if attempt == attempts:
                        raise
                    time.sleep(0.5)


def epcis_schema_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why COI tracking would refuse to start for want of its EPCIS schema (EPCIS_SCHEMA_PATH, else the
    checksum-pinned file `make install` fetches), or None."""
    from services.coi_tracking import epcis

    given = environ.get("EPCIS_SCHEMA_PATH")
    try:
        epcis.service_validator(Path(given) if given else epcis.DEFAULT_SCHEMA_PATH)
    except epcis.SchemaUnavailable as error:
        return str(error)
    return None


def make_up_kafka() -> KafkaAccess:
    """The broker of `make up` as its super user (credentials in var/kafka/security, owner-only), unless
    the environment names another broker."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return kafka_from_environment()
    access: KafkaAccess = _local_kafka()(port=9092, data_dir=ROOT / "var" / "kafka").access()
    return access


def _local_kafka() -> type:
    """deploy/kafka's LocalKafka (a script directory, so imported from its path)."""
    sys.path.insert(0, str(ROOT / "deploy" / "kafka"))
    from kafka_local import LocalKafka  # type: ignore[import-not-found]

    local_kafka: type = LocalKafka
    return local_kafka


def _cli_env() -> int:
    """`export` lines for the command-line tools (verify, dlq) against `make up`: its broker's login, and
    the public halves of the ledger keys its COI tracking signs with (verifying needs no private key)."""
    if not (ROOT / "var" / "kafka" / "security").is_dir() and not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        print("no broker of make up here (var/kafka): run make up first", file=sys.stderr)
        return 2
    signing = json.loads(os.environ.get("LEDGER_SIGNING_KEYS", DEV_LEDGER_SIGNING_KEYS))
    verify = {key_id: public_key_of(private) for key_id, private in signing.items()}
    variables = {**make_up_kafka().environment(), "LEDGER_VERIFY_KEYS": json.dumps(verify)}
    for variable, value in variables.items():
        print(f"export {variable}={shlex.quote(value)}")
    return 0


def _up(args: argparse.Namespace) -> int:
    problem = epcis_schema_problem()
    if problem is not None:
        print(f"make up: not starting: {problem}", file=sys.stderr)
        return 2
    LocalKafka = _local_kafka()
    var = ROOT / "var"
    broker = None
    kafka: KafkaAccounts
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        kafka = ConfiguredKafka(kafka_from_environment())
    else:
        broker = LocalKafka(port=args.kafka_port, data_dir=var / "kafka")
        print(f"starting Apache Kafka (KRaft, SASL over TLS) on 127.0.0.1:{args.kafka_port} ...", flush=True)
        broker.start()
        kafka = broker
    bootstrap = kafka.access().bootstrap_servers
    stack = Stack(
        kafka=kafka, database_urls=sqlite_urls(var / "db"), workdir=var / "logs", ports=DEFAULT_PORTS
    )
    console = console_process(stack, CONSOLE_PORT)
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        stack.start()
        console.start()
        console.wait_ready()
        print("\nCGT Logistics is up (SQLite databases in var/db, logs in var/logs):")
        print(f"  kafka          {bootstrap}")
        for name, service in stack.services.items():
            print(f"  {name:<14} {service.url}   (OpenAPI: {service.url}/docs)")
        print(f"  {'console':<14} {console.url}   (sign in with a token below; docs/console.md)")
        print("\nDevelopment mode (CGT_DEV_MODE=true): the published development secrets are accepted;")
        print("outside it the services refuse them (docs/security.md).")
        print("\nExample credentials (deploy/dev-tokens.json, development only):")
        print("  coordinator       Authorization: Bearer dev-coordinator-token")
        print("  courier           Authorization: Bearer dev-courier-token      (company CRYO-EXPRESS)")
        print("  treatment center  Authorization: Bearer dev-center-token       (site TC-BOSTON)")
        print(
            f"  QA                Authorization: Bearer dev-qa-token        (signing PIN {DEV_QA_SIGNING_PIN})"
        )
        print("\nTry `make demo` in another terminal. Ctrl-C stops everything.", flush=True)
        while not stopping:
            for service in [*stack.services.values(), console]:
                if service.process is not None and service.process.poll() is not None:
                    print(f"{service.name} exited:\n{service.log_tail()}", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
    finally:
        print("\nstopping services ...", flush=True)
        console.stop()
        stack.stop()
        if broker is not None:
            print("stopping Kafka ...", flush=True)
            broker.stop()
        print("stopped.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="broker + three services on SQLite + the console, in the foreground")
    up.add_argument("--kafka-port", type=int, default=9092)
    sub.add_parser("cli-env", help="export lines: the CLIs' broker login and ledger keys for make up")
    args = parser.parse_args()
    if args.command == "up":
        return _up(args)
    if args.command == "cli-env":
        return _cli_env()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
