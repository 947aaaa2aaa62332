"""The apps' flow control keeps records of the current consumer generation when Faust resumes the streams (#7).

faust-streaming's own ``FlowControlEvent.resume()`` empties every stream queue, and at the end of table
recovery it runs after the fetcher has already put freshly fetched records there: those records were lost.
These tests drive the real app's ``flow_control`` and queues, as Faust's recovery does.
"""

from __future__ import annotations

import asyncio

from faust.types.tuples import Message

from streams.app import KeepCurrentGenerationFlowControl, faust_app
from streams.config import load_settings


def _app(tmp_path):
    return faust_app(load_settings({"TAILCAST_STATE_DIR": str(tmp_path)}), "tailcast-test")


def _event(app, topic: str, offset: int, generation: int):
    message = Message(topic, 0, offset, 0.0, 0, None, b"u1", b"{}", None, generation_id=generation)
    return app.create_event(b"u1", b"{}", None, message)


def _offsets(queue) -> list[tuple[str, int]]:
    return [(e.message.topic, e.message.offset) for e in queue._queue]


def test_resume_keeps_the_current_generations_records_and_drops_older_ones(tmp_path):
    app = _app(tmp_path)
    assert isinstance(app.flow_control, KeepCurrentGenerationFlowControl)
    table = app.Table("user_state", default=None, key_type=bytes, value_type=bytes)
    changelog = table.changelog_topic.get_topic_name()
    app.consumer_generation_id = 2
    queue = app.FlowControlQueue(maxsize=16, clear_on_resume=True)  # how Faust builds a stream's queue
    for record in (_event(app, "events", 7, 1), _event(app, "events", 8, 2), _event(app, changelog, 3, 2),
                   _event(app, "events", 9, 2)):
        queue.put_nowait(record)
    app.flow_control.suspend()
    app.flow_control.resume()  # what Recovery._resume_streams calls once the seek is done
    assert app.flow_control.is_active()
    assert _offsets(queue) == [("events", 8), ("events", 9)]  # Faust's own resume() left nothing


def test_a_put_waiting_for_room_gets_the_room_the_dropped_records_leave(tmp_path):
    app = _app(tmp_path)
    app.consumer_generation_id = 3

    async def scenario():
        app.flow_control.resume()
        queue = app.FlowControlQueue(maxsize=2, clear_on_resume=True)
        queue.put_nowait(_event(app, "events", 1, 2))
        queue.put_nowait(_event(app, "events", 2, 2))
        waiting = asyncio.ensure_future(queue.put(_event(app, "events", 10, 3)))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # full
        app.flow_control.suspend()
        app.flow_control.resume()
        await asyncio.wait_for(waiting, timeout=2)
        return _offsets(queue)

    assert asyncio.run(scenario()) == [("events", 10)]


def test_seek_to_committed_sends_uncommitted_stream_partitions_to_their_beginning(tmp_path):
    """Records fetched while the flow is stopped are dropped, and the seek to committed offsets re-delivers
    them; a stream partition with no committed offset (a worker killed before its first commit) is sent
    to its beginning, as ``auto_offset_reset="earliest"`` says, and changelog partitions are left alone."""
    from types import SimpleNamespace

    from aiokafka import TopicPartition
    from faust.transport.drivers import aiokafka as faust_aiokafka

    app = _app(tmp_path)  # applies the patch
    table = app.Table("user_state", default=None, key_type=bytes, value_type=bytes)
    changelog = table.changelog_topic.get_topic_name()
    fresh, committed, zero, table_tp = (TopicPartition("events", 0), TopicPartition("events", 1),
                                        TopicPartition("events", 2), TopicPartition(changelog, 0))
    sought: list[tuple] = []

    async def seek_to_committed():
        return {fresh: None, committed: 42, zero: 0, table_tp: None}

    async def seek_to_beginning(*tps):
        sought.append(tps)

    consumer = SimpleNamespace(seek_to_committed=seek_to_committed, seek_to_beginning=seek_to_beginning)

    async def call_thread(fun, *args):
        return await fun(*args)

    thread = SimpleNamespace(consumer=SimpleNamespace(app=app), _ensure_consumer=lambda: consumer,
                             call_thread=call_thread)
    got = asyncio.run(faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed(thread))
    assert got == {fresh: None, committed: 42, zero: 0, table_tp: None}
    assert sought == [(fresh, zero)]
