"""Connection settings shared by every Kafka client tailcast makes (aiokafka and Faust)."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from streams.config import KafkaSettings

__all__ = ["client_kwargs", "ssl_context", "send_batched", "UnreachableReporter"]


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of the SSL and SASL_SSL protocols (None for the others)."""
    if kafka.security_protocol not in {"SSL", "SASL_SSL"}:
        return None
    return ssl.create_default_context(cafile=kafka.ssl_cafile)


def client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka producers, consumers and admin clients."""
    kwargs: dict[str, Any] = {"bootstrap_servers": kafka.servers, "security_protocol": kafka.security_protocol}
    context = ssl_context(kafka)
    if context is not None:
        kwargs["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL"):
        kwargs.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                      sasl_plain_password=kafka.sasl_password)
    return kwargs


async def send_batched(producer, topic: str, records: Sequence[tuple[bytes, bytes, int]]) -> None:
    """Enqueue ``(key, value, partition)`` records as one record batch per partition on ``producer``, the
    app's own aiokafka producer, so Faust's flush before each offset commit covers them (at-least-once)."""
    batches = {}
    for key, value, partition in records:
        builder = batches.get(partition)
        if builder is None:
            builder = batches[partition] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
            await producer.send_batch(builder, topic, partition=partition)
            builder = batches[partition] = producer.create_batch()
            builder.append(key=key, value=value, timestamp=None)
    for partition, builder in batches.items():
        await producer.send_batch(builder, topic, partition=partition)


class UnreachableReporter(logging.Handler):
    """Turns aiokafka's connection errors (which name a node id and socket, and vary with timing) into one
    ``Kafka at HOST:PORT is unreachable (...)`` on the ``tailcast`` logger, at most once every ``every`` s.

    >>> import io
    >>> out = io.StringIO(); h = logging.StreamHandler(out); logging.getLogger("tailcast").addHandler(h)
    >>> t = [0.0]
    >>> reporter = UnreachableReporter("127.0.0.1:9092", every=30.0, clock=lambda: t[0])
    >>> aio = logging.getLogger("aiokafka.consumer.fetcher"); aio.addHandler(reporter); aio.propagate = False
    >>> aio.error("Unable connect to node with id 1: Connect call failed ('127.0.0.1', 9092)")
    >>> aio.error("Unable to update metadata from [1]"); t[0] = 10.0
    >>> aio.error("Unable connect to node with id 1: Connect call failed ('127.0.0.1', 9092)")
    >>> reporter.seen_within(5.0), reporter.seen_within(0.0)
    (True, True)
    >>> print(out.getvalue().strip())
    Kafka at 127.0.0.1:9092 is unreachable (Unable connect to node with id 1: Connect call failed ('127.0.0.1', 9092)); retrying with backoff
    >>> aio.removeHandler(reporter); aio.propagate = True; logging.getLogger("tailcast").removeHandler(h)
    """

    MARKERS = ("Connect call failed", "Unable to bootstrap", "Unable connect", "KafkaConnectionError",
               "Connection at", "not ready")

    def __init__(self, servers: str, *, every: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(level=logging.ERROR)
        self.servers = servers
        self.every = float(every)
        self.clock = clock
        self._last: float | None = None
        self.last_error_at: float | None = None  # the latest connection error seen, reported or not
        self._log = logging.getLogger("tailcast")

    def seen_within(self, seconds: float) -> bool:
        """Whether a connection error was seen in the last ``seconds``."""
        return self.last_error_at is not None and self.clock() - self.last_error_at <= seconds

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed third-party record must not break logging
            return
        if not any(marker in message for marker in self.MARKERS):
            return
        now = self.clock()
        self.last_error_at = now
        if self._last is not None and now - self._last < self.every:
            return
        self._last = now
        self._log.error("Kafka at %s is unreachable (%s); retrying with backoff", self.servers, message[:200])
