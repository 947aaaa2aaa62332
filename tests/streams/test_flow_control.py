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
