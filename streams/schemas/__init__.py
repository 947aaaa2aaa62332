"""JSON Schemas (draft 2020-12) of the topic contracts (README "Topic contracts", docs/design.md §3).

One ``<topic>.schema.json`` per topic, shipped with the package: the input topics' allow unknown fields,
tailcast's own are closed. :mod:`streams.records` stays the validator the worker runs (sizes, stripped ids,
timestamps). :func:`validate` needs ``jsonschema`` (the ``test`` extra); :func:`schema` does not.

>>> TOPICS
('events', 'items', 'events.dlq', 'score-requests', 'recommendations', 'longtail-metrics', 'impressions')
>>> schema("events.dlq")["required"][:2]
['reason', 'error']
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from streams.topics import DLQ, EVENTS, IMPRESSIONS, ITEMS, LONGTAIL_METRICS, RECOMMENDATIONS, SCORE_REQUESTS

__all__ = ["TOPICS", "schema", "validator", "validate", "errors"]

#: The topics that have a schema here: every topic of ``streams.topics.topic_specs``.
TOPICS = (EVENTS, ITEMS, DLQ, SCORE_REQUESTS, RECOMMENDATIONS, LONGTAIL_METRICS, IMPRESSIONS)


@functools.cache
def _text(topic: str) -> str:
    if topic not in TOPICS:
        raise KeyError(f"no schema for topic {topic!r}; topics with one: {', '.join(TOPICS)}")
    return resources.files(__name__).joinpath(f"{topic}.schema.json").read_text(encoding="utf-8")


def schema(topic: str) -> dict[str, Any]:
    """The JSON Schema of ``topic``'s message values (a fresh dict: the caller may change it)."""
    return json.loads(_text(topic))


@functools.cache
def validator(topic: str):
    """A ``jsonschema.Draft202012Validator`` for ``topic`` (no format checking), built once."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema(topic))


def errors(topic: str, message: Any) -> list[str]:
    """Every way ``message`` (a decoded value) breaks ``topic``'s schema, one line each; empty when valid."""
    return sorted(f"{e.json_path}: {e.message}" for e in validator(topic).iter_errors(message))


def validate(topic: str, message: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``message`` (a decoded value) conforms to ``topic``'s schema."""
    validator(topic).validate(message)
