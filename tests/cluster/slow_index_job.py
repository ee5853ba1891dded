"""A Ray job for the cluster tests: the index stage, slowed down so a node can be killed mid-run.

python tests/cluster/slow_index_job.py SOURCE OUTPUT SECONDS_PER_SAMPLE
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from recaption.index import IndexStage
from recaption.readers import open_source
from recaption.readers.base import InputShard
from recaption.runner import RayOptions, run_ray
from recaption.shards.writer import ShardOutput


@dataclass
class SlowIndexStage(IndexStage):
    delay: float = 0.0

    def process_shard(self, shard: InputShard, out: ShardOutput) -> dict[str, Any]:
        time.sleep(self.delay * len(shard.files))
        return super().process_shard(shard, out)


if __name__ == "__main__":
    src, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    stage = SlowIndexStage(source=open_source(src, shard_size=2), delay=delay)
    summary = run_ray(stage, out, RayOptions(num_workers=2, max_retries=5), progress=False)
    print("SUMMARY", json.dumps(summary.to_dict()))
    sys.exit(0 if summary.ok else 1)
