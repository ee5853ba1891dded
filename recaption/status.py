"""How far a run got, read from its output folder alone (also while it is running).

Works on one stage's folder (it has ``_stage.json``) or on a pipeline folder whose sub-folders are
stage folders.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from recaption import io
from recaption.errors import SourceError
from recaption.shards.layout import PART_RE, StageDir
from recaption.shards.lease import current_lease


def stage_status(url: str) -> dict[str, Any]:
    """Shards done, rows, errors and warnings of one stage folder."""
    sd = StageDir(url)
    record = json.loads(io.read_text(sd.stage_file))
    stats = sd.read_stats()
    reasons: Counter[str] = Counter()
    for s in stats:
        reasons.update({k: int(v) for k, v in (s.get("error_reasons") or {}).items()})
    # A shard being written has a progress marker (every filesystem) and, on local disk, temporary
    # files; both also remain after a run that was killed (until the rerun removes them): how
    # long since each was written, and whether a live run holds the folder's lease, tell the two apart.
    done = {int(s.get("shard", -1)) for s in stats}
    idle: dict[int, float] = {}
    now = time.time()
    found = [u for u in io.listdir(url) if io.is_tmp(u)] + io.listdir(io.join(url, "_progress"))
    for u in found:
        if m := PART_RE.match(io.basename(u).lstrip(".")):
            i = int(m.group(1))
            if i in done:
                continue
            written = io.modified(u)
            age = max(0.0, now - written) if written else 0.0
            idle[i] = min(idle.get(i, age), age)
    in_progress = sorted(idle)
    lease = current_lease(url)
    total = int(record.get("shards", 0))
    return {
        "stage": record.get("stage"),
        "output": url,
        "shards_total": total,
        "shards_done": len(stats),
        "shards_in_progress": in_progress,
        "in_progress_idle_seconds": {str(i): round(idle[i], 1) for i in in_progress},
        "running": bool(lease and lease["live"]),
        "lease": lease,
        "complete": total > 0 and len(stats) >= total,
        "rows": sum(int(s.get("rows", 0)) for s in stats),
        "errors": sum(int(s.get("errors", 0)) for s in stats),
        "warnings": sum(int(s.get("warnings", 0)) for s in stats),
        "error_reasons": dict(reasons.most_common(10)),
        "seconds_in_shards": round(sum(float(s.get("seconds", 0.0)) for s in stats), 1),
    }


def run_status(url: str) -> dict[str, Any]:
    """Status of a stage folder, or of every stage folder directly under a pipeline folder."""
    if io.exists(StageDir(url).stage_file):
        return {"output": url, "stages": [stage_status(url)]}
    if not io.exists(url):
        raise SourceError(url, "does not exist")
    stages = [stage_status(sub) for sub in io.listdir(url) if io.exists(StageDir(sub).stage_file)]
    if not stages:
        raise SourceError(url, "holds no recaption output", ["_stage.json in it or in its sub-folders"])
    order = {"caption": 0, "index": 0, "nouns": 1, "encode": 2}
    stages.sort(key=lambda s: (order.get(str(s["stage"]), 9), str(s["output"])))
    out: dict[str, Any] = {"output": url, "stages": stages}
    summary = io.join(url, "summary.json")
    if io.exists(summary):
        out["summary"] = json.loads(io.read_text(summary))
    return out
