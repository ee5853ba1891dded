"""``--executor auto``: small jobs run in this process, without starting Ray.

Starting an embedded Ray costs 13-18 s on a small machine, more than a small job's whole work (the 5
SAM photos with a tiny model caption in about 3 s). Ray only pays where its workers run shards side
by side, so ``auto`` picks:

- ``ray`` when a Ray cluster is named (``--ray-address``, ``ray.address`` or ``RAY_ADDRESS``): the user
  asked for it, and the work is meant for the cluster's nodes;
- ``local`` when no stage has more than one shard left to do, or only one worker is asked for
  (nothing would run side by side);
- ``ray`` otherwise.

The choice is logged with the reason and the flag that overrides it.
"""

from __future__ import annotations

import os

from recaption.errors import ConfigError

EXECUTORS = ("auto", "ray", "local")


def choose_executor(
    executor: str,
    *,
    pending: list[int],
    address: str | None = None,
    workers: int | None = None,
) -> tuple[str, str]:
    """The executor to use and why.

    ``pending``: shards left to do, per stage of the run; ``address``: a Ray address given
    (``RAY_ADDRESS`` is read too); ``workers``: the workers asked for (``None``: as many as fit).
    """
    if executor not in EXECUTORS:
        raise ConfigError("--executor", executor, EXECUTORS)
    if executor != "auto":
        return executor, f"--executor {executor}"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        return "ray", f"a Ray address is given ({address})"
    most = max(pending, default=0)
    if most <= 1:
        left = "nothing" if most == 0 else "one shard per stage"
        return "local", f"{left} to do: runs in this process without starting Ray (--executor ray to force)"
    if workers == 1:
        return (
            "local",
            "one worker asked for: runs in this process without starting Ray (--executor ray to force)",
        )
    return "ray", f"{most} shards to do: Ray workers run them side by side (--executor local to stay here)"


def pending_shards(stage: object, output: str) -> int:
    """Shards of ``stage`` not finished yet in ``output`` (all of them in a new folder)."""
    from recaption import io
    from recaption.shards.layout import StageDir

    indices = {s.index for s in stage.shards()}  # type: ignore[attr-defined]
    sd = StageDir(output)
    done = sd.done_indices() if io.exists(sd.stage_file) else set()
    return len(indices - done)
