"""Small helpers shared by the readers: sidecar parsing and duplicate tracking."""

from __future__ import annotations

import json
from typing import Any

from recaption.readers.base import Failure, Sample, decode_caption


def parse_json_sidecar(raw: bytes, what: str) -> tuple[dict[str, Any], str | None]:
    """Parse a JSON sidecar; on failure return ``{}`` and a warning that says why."""
    try:
        value = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        return {}, f"{what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); ignored"
    if not isinstance(value, dict):
        return {}, f"{what} is JSON but not an object ({type(value).__name__}); ignored"
    return value, None


def caption_from_bytes(sample: Sample, raw: bytes, what: str) -> None:
    text, warning = decode_caption(raw, what)
    sample.caption = text
    if warning:
        sample.warnings.append(warning)


class KeyTracker:
    """Refuses a second sample with the same key in one shard (the first one is kept)."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def check(self, key: str, where: str, stage: str, uri: str, member: str) -> Failure | None:
        if key in self._seen:
            return Failure(
                key=key,
                stage=stage,
                reason=f"duplicate key {key!r}: already used by {self._seen[key]}; this one was dropped",
                uri=uri,
                member=member,
            )
        self._seen[key] = where
        return None


def json_safe(value: Any) -> Any:
    """Make sidecar metadata JSON-serialisable for the output shards."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)
