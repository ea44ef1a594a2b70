"""Google Cloud Pub/Sub clients built from settings.

With ``pubsub_emulator_host`` set, the official client talks to a local server
(``PUBSUB_EMULATOR_HOST``); without it, to Google Cloud with the ambient
credentials. Nothing else in cutover reads that environment variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from .events import Event
from .settings import Settings


def _apply_emulator(settings: Settings) -> None:
    if settings.pubsub_emulator_host:
        os.environ["PUBSUB_EMULATOR_HOST"] = settings.pubsub_emulator_host


def publisher(settings: Settings, *, ordering: bool = True) -> pubsub_v1.PublisherClient:
    _apply_emulator(settings)
    options = pubsub_v1.types.PublisherOptions(enable_message_ordering=ordering)
    batch = pubsub_v1.types.BatchSettings(max_messages=1000, max_latency=0.01)
    return pubsub_v1.PublisherClient(publisher_options=options, batch_settings=batch)


def subscriber(settings: Settings) -> pubsub_v1.SubscriberClient:
    _apply_emulator(settings)
    return pubsub_v1.SubscriberClient()


def topic_path(settings: Settings, topic: str) -> str:
    return f"projects/{settings.pubsub_project}/topics/{topic}"


def subscription_path(settings: Settings, name: str) -> str:
    return f"projects/{settings.pubsub_project}/subscriptions/{name}"


def ensure_topic(
    settings: Settings, topic: str, client: pubsub_v1.PublisherClient | None = None
) -> bool:
    """Create the topic if missing; returns whether it was created."""
    client = client or publisher(settings)
    try:
        client.create_topic(name=topic_path(settings, topic))
        return True
    except gexc.AlreadyExists:
        return False


def publish_events(
    settings: Settings,
    events: Iterable[Event],
    *,
    topic: str | None = None,
    client: pubsub_v1.PublisherClient | None = None,
    on_published: object = None,
) -> int:
    """Publish events with the contract's attributes and ordering key; waits for all.

    ``topic`` defaults to the entity's name. Returns how many were published; raises
    the first publish error (after the rest have settled) so nothing fails silently.
    """
    client = client or publisher(settings)
    futures = []
    for event in events:
        path = topic_path(settings, topic or event.entity)
        futures.append(
            client.publish(
                path, event.to_json_bytes(), ordering_key=event.ordering_key, **event.attributes
            )
        )
        if callable(on_published):
            on_published(1)
    errors = []
    for future in futures:
        try:
            future.result(timeout=120)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(futures)} events failed to publish: {errors[0]}")
    return len(futures)
