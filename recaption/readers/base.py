"""What every reader yields, and the interface every source implements.

A source is cheap, picklable configuration (a root URL and options). It partitions its input into
:class:`InputShard` s deterministically, and reads one shard at a time into :class:`Sample` s (and
:class:`Failure` s for samples that cannot be used). Samples carry an :class:`ImageRef`, so a later
stage reopens the image from the original shard instead of copying images around.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from recaption import io
from recaption.readers.refs import ImageRef

REF_COLUMNS = ("image_uri", "image_member", "image_offset", "image_length")


@dataclass
class Sample:
    """One image (or caption-only row) with what the source knows about it.

    ``data`` holds the image bytes when the reader already had them in hand (tar streams,
    parquet rows); it is never written out. ``warnings`` are problems that did not make the
    sample unusable (an unparsable JSON sidecar, a caption that was not UTF-8); each becomes a
    ``warning`` row in the failure manifest.
    """

    key: str
    source_kind: str
    ref: ImageRef | None = None
    caption: str | None = None
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)
    # reads the image when the reader has it coming (loose files read a window ahead of use)
    fetch: Callable[[], bytes] | None = field(default=None, repr=False, compare=False)

    def image_bytes(self) -> bytes:
        """The image's bytes: in hand, being read ahead, or read now from the reference."""
        if self.data is not None:
            return self.data
        if self.fetch is not None:
            return self.fetch()
        if self.ref is None:
            raise ValueError(f"sample {self.key!r} has no image (a captions-only source)")
        return self.ref.read()


SEVERITY_ERROR = "error"  # the sample was dropped at this stage
SEVERITY_WARNING = "warning"  # the sample went on, but something was not as expected


@dataclass(frozen=True)
class Failure:
    """One row of the failure manifest: which sample, where, at which stage, and why."""

    key: str
    stage: str
    reason: str
    uri: str = ""
    member: str = ""
    severity: str = SEVERITY_ERROR

    @classmethod
    def for_sample(cls, sample: Sample, stage: str, reason: str, severity: str = SEVERITY_ERROR) -> Failure:
        ref = sample.ref
        return cls(
            key=sample.key,
            stage=stage,
            reason=reason,
            uri=ref.uri if ref else str(sample.meta.get("source_uri", "")),
            member=ref.member if ref else "",
            severity=severity,
        )


@dataclass(frozen=True)
class InputShard:
    """A deterministic slice of a source: input shard ``index`` becomes output ``part-{index:05d}``.

    ``uri`` is the shard file (a tar, a parquet) or the folder; ``files`` lists the files of a
    folder chunk; ``start``/``stop`` select rows of a table. ``companions``: the files beside a
    folder chunk's images that its rows are also read from (their ``.txt``/``.json`` sidecars, the
    caption manifests over them) as the plan's listing found them; ``None`` where the source does
    not list them. Recorded with the output, so a rerun notices one that appeared since
    (:mod:`recaption.shards.identity`); not part of the plan (a new sidecar redoes its shard, it
    does not make a different source).
    """

    index: int
    uri: str
    files: tuple[str, ...] = ()
    start: int = 0
    stop: int | None = None
    kind: str = ""
    companions: tuple[str, ...] | None = None

    def describe(self) -> str:
        if self.files:
            return f"{self.uri} [{len(self.files)} files]"
        if self.stop is not None:
            return f"{self.uri} [rows {self.start}:{self.stop}]"
        return self.uri

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "uri": self.uri,
            "files": list(self.files),
            "start": self.start,
            "stop": self.stop,
            "kind": self.kind,
            # only where listed: the dict of every other shard (and older plans' digests) unchanged
            **({} if self.companions is None else {"companions": list(self.companions)}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputShard:
        return cls(
            index=int(d["index"]),
            uri=str(d["uri"]),
            files=tuple(d.get("files") or ()),
            start=int(d.get("start") or 0),
            stop=None if d.get("stop") is None else int(d["stop"]),
            kind=str(d.get("kind") or ""),
            companions=None if d.get("companions") is None else tuple(d["companions"]),
        )


class Source(ABC):
    """A collection of samples, split into shards. Implementations are small picklable dataclasses."""

    kind: ClassVar[str]
    has_images: ClassVar[bool] = True
    root: str

    @abstractmethod
    def shards(self) -> list[InputShard]:
        """The deterministic list of input shards."""

    @abstractmethod
    def read_shard(self, shard: InputShard) -> Iterator[Sample | Failure]:
        """Samples of one shard, in a stable order; failures for samples that cannot be used."""

    def describe(self) -> str:
        return f"{self.kind} source at {self.root}"

    def iter_samples(self) -> Iterator[Sample | Failure]:
        for shard in self.shards():
            yield from self.read_shard(shard)


def shard_failure(shard: InputShard, stage: str, reason: str, severity: str = SEVERITY_ERROR) -> Failure:
    """A manifest row about a whole shard (missing, empty, truncated)."""
    return Failure(key="", stage=stage, reason=reason, uri=shard.uri, member="", severity=severity)


def decode_caption(raw: bytes, what: str) -> tuple[str, str | None]:
    """Decode caption bytes; on invalid UTF-8, decode with replacement and return a warning."""
    try:
        return raw.decode("utf-8").strip(), None
    except UnicodeDecodeError as e:
        text = raw.decode("utf-8", errors="replace").strip()
        return text, (
            f"{what} is not valid UTF-8 (byte {e.start}: {raw[e.start : e.start + 1]!r}); "
            "decoded with U+FFFD replacement characters"
        )


def exists_or_failure(shard: InputShard, stage: str = "read") -> Failure | None:
    if not io.exists(shard.uri):
        return shard_failure(shard, stage, f"shard not found: {shard.uri} (it was listed but is gone)")
    return None
