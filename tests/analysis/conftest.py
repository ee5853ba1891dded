"""One small real run (tiny LLaVA, spaCy nouns) for the analysis functions and the notebook."""

from __future__ import annotations

from pathlib import Path

import pytest

from recaption.pipeline.config import load_config
from recaption.pipeline.run import run_pipeline
from tests.builders import truncated_jpeg, wds_sample, write_tar
from tests.pipeline.conftest import make_webdataset, tiny_config

#: The sample whose image is corrupt: it has a raw caption but no dense caption.
BROKEN_KEY = "broken000"
BROKEN_CAPTION = "a truncated photo of a lighthouse on a cliff"


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llava_dir: str) -> Path:
    """``recaption run`` over 8 good images in 2 shards and a third shard holding 2 more good
    images and one truncated JPEG; caption and nouns stages only (the analysis never reads the
    features, and the encoder's tiny models would only cost time)."""
    root = tmp_path_factory.mktemp("analysis")
    src = make_webdataset(root / "wds", n=8, per_shard=4)
    write_tar(
        src / "00002.tar",
        wds_sample("extra0000", "a bowl of fruit and a bowl of soup on a table", seed=3)
        + wds_sample(BROKEN_KEY, BROKEN_CAPTION, img=truncated_jpeg())
        + wds_sample("extra0001", "two dogs and a cat in the snow", seed=4),
    )
    out = root / "run"
    cfg = tiny_config(src, out, {"llava": tiny_llava_dir, "t5": "", "vae": ""})
    cfg["encode"] = {"enabled": False}
    result = run_pipeline(load_config(cfg), progress=False)
    assert result.ok()
    return out
