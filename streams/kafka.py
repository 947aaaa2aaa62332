"""Connection settings shared by every Kafka client tailcast makes (aiokafka and Faust)."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

from streams.config import KafkaSettings

__all__ = ["client_kwargs", "faust_credentials", "send_batched"]


def _ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    if kafka.security_protocol not in {"SSL", "SASL_SSL"}:
        return None
    return ssl.create_default_context(cafile=kafka.ssl_cafile)


def client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka producers, consumers and admin clients."""
    kwargs: dict[str, Any] = {"bootstrap_servers": kafka.servers, "security_protocol": kafka.security_protocol}
    context = _ssl_context(kafka)
    if context is not None:
        kwargs["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL"):
        kwargs.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                      sasl_plain_password=kafka.sasl_password)
    return kwargs


def faust_credentials(kafka: KafkaSettings) -> Any:
    """Faust ``broker_credentials`` for the configured security protocol (None for PLAINTEXT)."""
    import faust

    context = _ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=kafka.sasl_username, password=kafka.sasl_password,
                                     mechanism=kafka.sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


async def send_batched(producer, topic: str, records: Sequence[tuple[bytes, bytes, int]]) -> None:
    """Enqueue ``(key, value, partition)`` records as one record batch per partition (aiokafka's batch
    API) on ``producer``, the app's own aiokafka producer, so the flush Faust does before each offset
    commit covers them too (at-least-once)."""
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
