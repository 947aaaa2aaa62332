"""What the embedded broker's CPU goes to: requests, not bytes (the freshness benchmark's broker share).

Each measurement starts a fresh embedded broker (Tansu, memory storage), creates a topic ``t`` of 4 partitions and
reads the broker process's user + system CPU around one load, with confluent-kafka (librdkafka) as the client:

* ``produce_bulk_us_per_record``: ``--records`` records of ``--bytes`` bytes, produced with a 5 ms linger
  (large batches), per record;
* ``consume_bulk_us_per_record``: the same records read back by one consumer from the beginning, per record;
* ``produce_request_us``: one record a request (``flush`` after each), per request;
* ``idle_fetch_share``: three consumers assigned every partition at its end, nothing produced, for ``--seconds``:
  the broker's CPU share (1.0 = a core) spent answering their empty fetches (``fetch.wait.max.ms`` 50, what
  the worker and the scorer use, ``streams.app.FETCH_MAX_WAIT_MS``);
* ``tailing_us_per_record``: the same three consumers while a producer sends ``--rate`` records/s of ``--bytes``
  bytes, per record produced (the freshness benchmark's shape: a few clients following the heads of topics).

    python -m benchmarks.broker_cost [--records 20000] [--bytes 1000] [--rate 1000] [--seconds 6] [--out FILE.json]

The clock tick is 10 ms, so figures under ~1 µs a record are at the resolution of the measurement.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import fresh_broker, workdir
from benchmarks.freshness import cpu_seconds
from streams.app import FETCH_MAX_WAIT_MS

__all__ = ["run"]

TOPIC = "t"
PARTITIONS = 4
FOLLOWERS = 3


@contextmanager
def _broker(root: Path) -> Iterator[tuple[str, int]]:
    from confluent_kafka.admin import AdminClient, NewTopic

    with fresh_broker(root) as broker:
        admin = AdminClient({"bootstrap.servers": broker.address})
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result(timeout=30)
        yield broker.address, broker.pid


def _producer(address: str, linger_ms: int):
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": address, "linger.ms": linger_ms, "queue.buffering.max.messages": 1_000_000})


def _cpu(pid: int, load: Callable[[], None]) -> float:
    before = cpu_seconds(pid)
    load()
    return cpu_seconds(pid) - before


@contextmanager
def _followers(address: str, n: int) -> Iterator[None]:
    """``n`` consumers following every partition from its end (no group: assigned), until the block ends."""
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    stop = threading.Event()
    ready = threading.Barrier(n + 1, timeout=60)  # a follower that fails to start breaks it: no hang

    def follow(j: int) -> None:
        consumer = Consumer({"bootstrap.servers": address, "group.id": f"follower{j}",
                             "fetch.wait.max.ms": FETCH_MAX_WAIT_MS, "enable.auto.commit": False})
        consumer.assign([TopicPartition(TOPIC, p, OFFSET_END) for p in range(PARTITIONS)])
        consumer.consume(1, 0.5)  # the first fetch is out
        ready.wait()
        while not stop.is_set():
            consumer.consume(1000, 0.1)
        consumer.close()

    threads = [threading.Thread(target=follow, args=(j,), daemon=True) for j in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join()


def run(*, records: int = 20_000, size: int = 1000, rate: float = 1000.0, seconds: float = 6.0,
        root: Path | None = None) -> dict[str, float]:
    from confluent_kafka import Consumer, TopicPartition

    root = root or workdir("broker-cost")
    value = b"x" * size
    out: dict[str, float] = {}
    with _broker(root) as (address, pid):
        producer = _producer(address, 5)

        def bulk() -> None:
            for i in range(records):
                producer.produce(TOPIC, value, key=str(i).encode())
                if i % 1000 == 0:
                    producer.poll(0)
            producer.flush()

        out["produce_bulk_us_per_record"] = 1e6 * _cpu(pid, bulk) / records
        consumer = Consumer({"bootstrap.servers": address, "group.id": "bulk", "enable.auto.commit": False})
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])

        def read() -> None:
            got = 0
            while got < records:
                got += len(consumer.consume(1000, 1.0))

        out["consume_bulk_us_per_record"] = 1e6 * _cpu(pid, read) / records
        consumer.close()
        single = _producer(address, 0)
        n_single = max(500, records // 20)

        def one_by_one() -> None:
            for i in range(n_single):
                single.produce(TOPIC, value, key=str(i).encode())
                single.flush()

        out["produce_request_us"] = 1e6 * _cpu(pid, one_by_one) / n_single
    with _broker(root) as (address, pid), _followers(address, FOLLOWERS):
        out["idle_fetch_share"] = _cpu(pid, lambda: time.sleep(seconds)) / seconds
    with _broker(root) as (address, pid), _followers(address, FOLLOWERS):
        producer = _producer(address, 5)
        sent = 0

        def paced() -> None:
            nonlocal sent
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                producer.produce(TOPIC, value, key=str(sent).encode())
                sent += 1
                producer.poll(0)
                time.sleep(max(0.0, start + sent / rate - time.perf_counter()))
            producer.flush()

        out["tailing_us_per_record"] = 1e6 * _cpu(pid, paced) / max(sent, 1)
        out["tailing_records_per_s"] = sent / seconds
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--bytes", type=int, default=1000)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    result = run(records=a.records, size=a.bytes, rate=a.rate, seconds=a.seconds)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
