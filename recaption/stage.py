"""The stage interface every runner executes.

A stage is cheap, picklable configuration (a dataclass). The runner ships it to a worker, calls
:meth:`Stage.setup` once there (load models), then :meth:`Stage.process_shard` for each input
shard it is given, writing into a :class:`~recaption.shards.writer.ShardOutput` that the runner
commits. Stages know nothing of the CLI or of Ray.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from recaption.readers.base import InputShard
from recaption.shards.size import ShardSizePolicy
from recaption.shards.writer import ShardOutput


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs (Ray actor resources)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int | None = None
    # Take the GPUs where the cluster has them, run on CPU where it has none (device "auto").
    gpu_optional: bool = False


class Stage(ABC):
    """One step of the pipeline, run shard by shard."""

    name: ClassVar[str]
    #: parquet compression of the data shards ("zstd" for text; features may prefer "none")
    compression: ClassVar[str] = "zstd"

    def resources(self) -> Resources:
        return Resources()

    @abstractmethod
    def schema(self) -> Any:
        """The ``pyarrow.Schema`` of the data shards."""

    def parquet_options(self) -> dict[str, Any]:
        """Extra ``pyarrow.parquet.ParquetWriter`` arguments for the data shards."""
        return {}

    def size_policy(self) -> ShardSizePolicy | None:
        """A target size for the data files (``None``: one file per input shard)."""
        return None

    def file_metadata(self) -> dict[str, str]:
        """Key-value metadata stored in every data shard (e.g. model ids)."""
        return {}

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Every option that changes the output. A rerun into the same folder must match it."""

    def recorded_fingerprint(self, old: dict[str, Any]) -> dict[str, Any]:
        """A fingerprint an older version recorded, as this version would write it (a key it no
        longer records dropped), so outputs made before still match."""
        return old

    @abstractmethod
    def shards(self) -> list[InputShard]:
        """The input shards, in order; shard ``i`` becomes output ``part-{i:05d}``."""

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load models etc. Runs once per worker, on the worker."""

    @abstractmethod
    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any] | None:
        """Process one shard into ``out``; may return extra stats for the shard's stats file."""

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`setup` loaded."""
