"""Small helpers shared by the readers: sidecar parsing and duplicate tracking."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from recaption.readers.base import (
    Failure,
    InputShard,
    Sample,
    decode_caption,
    exists_or_failure,
    shard_failure,
)


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


def read_tar_shard(
    shard: InputShard, make_sample: Callable[[Any], Sample | Failure], stage: str = "read"
) -> Iterator[Sample | Failure]:
    """The samples of one tar shard, with what every tar layout shares: a missing shard, member
    problems, duplicate keys and an empty shard become manifest rows. ``make_sample`` turns one
    member group (:class:`~recaption.readers.tar.TarGroup`) into a sample or a failure."""
    from recaption.readers.refs import safe_member_name
    from recaption.readers.tar import iter_tar_groups, split_key

    missing = exists_or_failure(shard, stage)
    if missing:
        yield missing
        return
    keys = KeyTracker()
    n = 0
    for ev in iter_tar_groups(shard.uri):
        if ev.problem:
            # the member's key names the row (a refused name, outside the shard, is no key)
            key = split_key(ev.member)[0] if ev.member and safe_member_name(ev.member) else ""
            yield Failure(key=key, stage=stage, reason=ev.problem, uri=shard.uri, member=ev.member)
            continue
        assert ev.group is not None
        item = make_sample(ev.group)
        if isinstance(item, Sample):
            member = item.ref.member if item.ref else ""
            dup = keys.check(item.key, member, stage, shard.uri, member)
            if dup:
                yield dup
                continue
            n += 1
        yield item
    if n == 0:
        yield shard_failure(shard, stage, "shard holds no samples (empty tar)", severity="warning")


def skipped_failures(root: str, skipped: tuple[tuple[str, str, str], ...], stage: str) -> Iterator[Failure]:
    """A failure row per file a source lists but does not read (``(file, reason, severity)``)."""
    from recaption.readers.folder import _rel, _stem

    for url, reason, severity in skipped:
        yield Failure(key=_stem(_rel(root, url)), stage=stage, uri=url, reason=reason, severity=severity)
