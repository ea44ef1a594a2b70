"""One message body to one row, or the reason it is poison.

Shared by the batch handler and by failure replays, so a replayed message is judged
exactly as it was when it first arrived.
"""

from __future__ import annotations

from core.config import Config, Entity
from core.events import Event, EventError, parse_event
from core.redaction import redact
from stores.mapping import MappingError, Row, row_from_event


def decode(config: Config, entity: Entity, data: bytes | str) -> tuple[Event, Row]:
    """Parse the contract, then map to the subscription's entity.

    Raises :class:`~core.events.EventError` (not UTF-8, not JSON, fails the
    contract) or :class:`~stores.mapping.MappingError` (unknown entity, an event of
    another entity on this subscription, a value of the wrong type). Anything else it
    raises is a bug for that one body; callers contain it with :func:`reason`.
    """
    event = parse_event(data)
    if event.entity not in config.entities:
        known = ", ".join(sorted(config.entities))
        raise MappingError(
            f"event {event.event_id!r}: unknown entity {event.entity!r} (known: {known})"
        )
    return event, row_from_event(entity, event)


def reason(exc: BaseException) -> str:
    """Why decoding a body failed, for the failure log.

    The contract's and the mapping's errors are their own message; any other exception
    (a recursion, an overflow, a bug) is named with its type, so the entry says it was
    not a rule of the contract that refused the body.
    """
    if isinstance(exc, EventError | MappingError):
        return str(exc)
    text = str(exc)[:10_000]
    return f"the message could not be decoded: {type(exc).__name__}: {redact(text)}"
