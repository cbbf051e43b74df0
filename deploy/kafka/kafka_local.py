"""A real Apache Kafka broker (KRaft, combined broker and controller) on loopback, from the Maven Central
artifacts in deploy/kafka/lib (`make kafka-deps`). No Docker needed.

Used by `make up`, the tests, the fault suite and the benchmarks. Readiness is awaited by asking the
broker for its cluster metadata, never by sleeping.

    python deploy/kafka/kafka_local.py --port 9092 [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
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
    ) -> None:
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
        self.expected_brokers = 1
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

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
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    f"controller.quorum.voters={self.voters}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
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
            )
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
            ),
            capture_output=True,
            text=True,
        )
        if formatted.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed:\n{formatted.stdout}{formatted.stderr}")

    def start(self, timeout: float = 90.0) -> None:
        """Launch and return once the broker answers; a broker that never gets ready is killed, not leaked
        (it runs in its own session, so nothing else would stop it)."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def launch(self) -> None:
        """Format (once) and start the process, without waiting: a cluster launches all nodes first."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"Kafka already running on {self.bootstrap} (pid {self.process.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._format(config)
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self._java("kafka.Kafka", str(config), heap=self.heap),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

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
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
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

    def __init__(self, size: int = 3, data_dir: Path | None = None) -> None:
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
        self.nodes = [
            LocalKafka(
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

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, timeout: float = 120.0) -> None:
        for node in self.nodes:
            node.launch()
        self.nodes[0].wait_ready(timeout)

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
