"""The event contract between the product and cutover.

Producers publish one JSON object (UTF-8) per Pub/Sub message, with attributes
``entity``, ``client_id``, ``op`` and ordering key ``<entity>:<id>``. ``version``
grows with every change of one id, which is what lets every writer be idempotent
and order-insensitive: the newest version wins, whatever order messages arrive in.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .limits import (
    MAX_BODY_BYTES,
    MAX_CLIENT_ID_CHARS,
    MAX_EVENT_DEPTH,
    MAX_SAFE_INTEGER,
    LimitError,
    check_depth,
    depth_at_most,
    describe,
)


class EventError(ValueError):
    """A message that does not meet the contract; the message says which part and why."""


class Event(BaseModel):
    """One change of one entity instance."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    event_id: str = Field(min_length=1, max_length=200)
    entity: str = Field(min_length=1, max_length=100)
    op: Literal["upsert", "delete"]
    id: str = Field(min_length=1, max_length=900)
    client_id: str = Field(min_length=1, max_length=MAX_CLIENT_ID_CHARS)
    version: int = Field(ge=0, le=MAX_SAFE_INTEGER)
    occurred_at: datetime = Field(description="RFC 3339 timestamp with a UTC offset.")
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> datetime:
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"not an RFC 3339 timestamp: {value!r}") from None
        else:
            raise ValueError("must be an RFC 3339 string")
        if parsed.tzinfo is None:
            raise ValueError("RFC 3339 timestamps need a UTC offset (e.g. Z)")
        try:
            return parsed.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
            raise ValueError(f"{value!r} is out of range in UTC") from None

    @property
    def ordering_key(self) -> str:
        return f"{self.entity}:{self.id}"

    @property
    def attributes(self) -> dict[str, str]:
        return {"entity": self.entity, "client_id": self.client_id, "op": self.op}

    def to_json_bytes(self) -> bytes:
        payload = self.model_dump(mode="json")
        payload["occurred_at"] = self.occurred_at.isoformat().replace("+00:00", "Z")
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_event(raw: bytes | str) -> Event:
    """Decode and validate one message body, raising :class:`EventError` with the reason.

    Whatever the body holds, this returns an event or raises EventError: the size and
    the nesting depth are checked before any recursive step (the parser's own
    recursion is caught, pydantic and the mapping only ever see shallow values). The
    values themselves are checked against :mod:`core.limits` by the mapping.
    """
    if len(raw) > MAX_BODY_BYTES:
        raise EventError(f"message is {len(raw):,} bytes, more than {MAX_BODY_BYTES:,}")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise EventError(f"message is not UTF-8: {exc}") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventError(f"message is not JSON: {exc}") from None
    except RecursionError:
        raise EventError(f"message is nested more than {MAX_EVENT_DEPTH} levels deep") from None
    if not isinstance(payload, dict):
        raise EventError(f"message must be a JSON object, got {type(payload).__name__}")
    if not depth_at_most(text, MAX_EVENT_DEPTH):
        try:
            check_depth(payload, MAX_EVENT_DEPTH)
        except LimitError as exc:
            raise EventError(f"message {exc}") from None
    # JSON has no datetime type, so occurred_at arrives as a string and is parsed above;
    # everything else must already have the right JSON type (strict mode: no "3" for 3).
    try:
        return Event.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors()
        )
        raise EventError(f"event does not meet the contract: {problems}") from None


def event_schema() -> dict[str, Any]:
    """The JSON Schema of the contract, for producers."""
    schema = Event.model_json_schema()
    schema["properties"]["occurred_at"] = {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339 timestamp with a UTC offset.",
    }
    schema["x-cutover-limits"] = describe()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cutover entity change event"
    return schema
