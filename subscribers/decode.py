"""One message body to one row, or the reason it is poison.

Shared by the batch handler and by failure replays, so a replayed message is judged
exactly as it was when it first arrived.
"""

from __future__ import annotations

from cutover.config import Config, Entity
from cutover.events import Event, parse_event
from stores.mapping import MappingError, Row, row_from_event


def decode(config: Config, entity: Entity, data: bytes | str) -> tuple[Event, Row]:
    """Parse the contract, then map to the subscription's entity.

    Raises :class:`~cutover.events.EventError` (not UTF-8, not JSON, fails the
    contract) or :class:`~stores.mapping.MappingError` (unknown entity, an event of
    another entity on this subscription, a value of the wrong type).
    """
    event = parse_event(data)
    if event.entity not in config.entities:
        known = ", ".join(sorted(config.entities))
        raise MappingError(
            f"event {event.event_id!r}: unknown entity {event.entity!r} (known: {known})"
        )
    return event, row_from_event(entity, event)
