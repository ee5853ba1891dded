"""Readers: one interface (:class:`Source`), many layouts. Start with :func:`open_source`."""

from recaption.readers.base import (
    REF_COLUMNS,
    Failure,
    ImageRef,
    InputShard,
    Sample,
    Source,
)
from recaption.readers.detect import KINDS, open_source
from recaption.readers.refs import ImageOpener, RefError

__all__ = [
    "KINDS",
    "REF_COLUMNS",
    "Failure",
    "ImageOpener",
    "ImageRef",
    "InputShard",
    "RefError",
    "Sample",
    "Source",
    "open_source",
]
