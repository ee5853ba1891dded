"""Every model family's tiny model, loaded through ``from_pretrained`` like a hub id: batched
generation with left padding, per-image token counts, family image options, seeded sampling, the
out-of-memory split, and the pipeline file of the current default (Qwen2.5-VL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recaption.captioner.families import FAMILY_NAMES, build_tiny_models, family
from recaption.captioner.model import Captioner, CaptionerConfig
from recaption.errors import ConfigError
from tests.captioner.conftest import DATA

# One model type per family, as a real checkpoint's config.json names it.
MODEL_TYPES = {
    "llava": "llava",
    "llava-next": "llava_next",
    "qwen2-vl": "qwen2_vl",
    "qwen2.5-vl": "qwen2_5_vl",
    "idefics3": "idefics3",
}


@pytest.fixture(scope="module")
def tiny_families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_tiny_models(str(tmp_path_factory.mktemp("families")))


@pytest.fixture(scope="module")
def mixed_images() -> list:
    """Real SAM photos where present, and generated images of very different sizes and shapes."""
    import numpy as np
    from PIL import Image

    from recaption.images.decode import decode_image

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for h, w in ((30, 500), (900, 40), (28, 28), (240, 180))
    ]
    sam = DATA / "sam"
    photos = (
        [decode_image(p.read_bytes()).image for p in sorted(sam.glob("*.jpg"))[:3]] if sam.is_dir() else []
    )
    return photos + images


def load(path: str, **kw) -> Captioner:
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("device", "cpu")
    # Big photos are shrunk first (the pixel cap at work); keeps each family's test to seconds.
    kw.setdefault("max_image_pixels", 160 * 160)
    return Captioner(CaptionerConfig(model=path, **kw)).load()


def test_every_family_is_built_with_its_own_classes(tiny_families: dict[str, str]):
    assert set(tiny_families) == set(FAMILY_NAMES) == set(MODEL_TYPES)
    for name, path in tiny_families.items():
        config = json.loads((Path(path) / "config.json").read_text())
        assert config["model_type"] == MODEL_TYPES[name]
        assert name in (Path(path).name,)
        assert family(name).HUB_IDS, name


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_batched_captions_equal_one_at_a_time(tiny_families: dict[str, str], mixed_images: list, name: str):
    """Left padding is right for each family: a batch of very different sizes gives each image the
    caption it gets alone (greedy)."""
    cap = load(tiny_families[name], batch_size=len(mixed_images))
    prompts = ["Describe this image and its style in a very detailed manner"] * len(mixed_images)
    batched = cap.caption(mixed_images, prompts)
    assert cap.stats.batches == 1
    assert all(r.ok and r.num_tokens > 0 for r in batched), [r.error for r in batched]
    alone = [cap.caption([im], prompts[:1])[0] for im in mixed_images]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.finish_reason for r in batched] == [r.finish_reason for r in alone]


@pytest.mark.parametrize("name", ["llava-next", "qwen2-vl", "qwen2.5-vl", "idefics3"])
def test_image_token_counts_differ_per_image(tiny_families: dict[str, str], name: str):
    from PIL import Image

    cap = load(tiny_families[name])
    lengths = {
        int(cap.prepare([Image.new("RGB", size, (90, 90, 90))], ["Describe"])["input_ids"].shape[1])
        for size in ((56, 56), (300, 60), (60, 300), (1000, 800))
    }
    assert len(lengths) > 1, f"{name}: every image got the same number of tokens"


def test_llava_has_a_fixed_image_token_count(tiny_families: dict[str, str]):
    from PIL import Image

    cap = load(tiny_families["llava"])
    lengths = {
        int(cap.prepare([Image.new("RGB", size)], ["Describe"])["input_ids"].shape[1])
        for size in ((56, 56), (300, 60), (1000, 800))
    }
    assert len(lengths) == 1


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_seeded_sampling_is_reproducible_per_family(
    tiny_families: dict[str, str], mixed_images: list, name: str
):
    images = mixed_images[-4:]
    keys = [f"k{i}" for i in range(len(images))]
    prompts = ["Describe this image"] * len(images)
    a = load(tiny_families[name], do_sample=True, temperature=1.0, seed=3, batch_size=4)
    b = load(tiny_families[name], do_sample=True, temperature=1.0, seed=3, batch_size=1)
    c = load(tiny_families[name], do_sample=True, temperature=1.0, seed=4, batch_size=4)
    ta = [r.text for r in a.caption(images, prompts, keys)]
    assert ta == [r.text for r in b.caption(images, prompts, keys)]  # batching does not change samples
    assert ta != [r.text for r in c.caption(images, prompts, keys)]  # the seed does


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_out_of_memory_split_keeps_every_caption(
    tiny_families: dict[str, str], mixed_images: list, name: str, monkeypatch: pytest.MonkeyPatch
):
    """A batch that does not fit is halved until it does; each family's inputs (pixel_values of any
    shape, image_grid_thw, pixel_attention_mask) are re-prepared per half."""
    import torch

    images = mixed_images[-4:]
    prompts = ["Describe this image"] * len(images)
    cap = load(tiny_families[name], batch_size=4)
    want = [r.text for r in cap.caption(images, prompts)]
    real = cap.model.generate

    def generate(**kw):
        if kw["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(**kw)

    monkeypatch.setattr(cap.model, "generate", generate)
    got = cap.caption(images, prompts)
    assert [r.text for r in got] == want
    assert cap.stats.oom_splits == 3  # 4 -> 2+2 -> 1+1+1+1


def test_repetition_check_runs_for_every_family(tiny_families: dict[str, str], mixed_images: list):
    """Random weights loop quickly at greedy: each family's long captions get a repetition score."""
    for name, path in tiny_families.items():
        # (crop: LLaVA-1.5's square padding gives other random-weight captions; loops are the point here)
        cap = load(path, max_new_tokens=32, image_aspect="crop")
        results = cap.caption(mixed_images[-2:], ["Describe this image"] * 2)
        assert all(r.ok for r in results)
        assert any(r.repetition_score > 0 for r in results), name


def test_qwen_vision_token_budget_option(tiny_families: dict[str, str]):
    from PIL import Image

    image = [Image.new("RGB", (1000, 800), (40, 80, 120))]
    full = load(tiny_families["qwen2.5-vl"])
    small = load(tiny_families["qwen2.5-vl"], image_options={"max_pixels": 16 * 784})
    grid_full = full.prepare(image, ["x"])["image_grid_thw"].prod().item()
    grid_small = small.prepare(image, ["x"])["image_grid_thw"].prod().item()
    assert grid_small < grid_full
    assert grid_small // 4 <= 16  # at most 16 image tokens (2x2 patches merged into one)
    assert small.caption(image, ["Describe this image"])[0].ok


def test_idefics3_options(tiny_families: dict[str, str]):
    from PIL import Image

    image = [Image.new("RGB", (600, 300), (40, 80, 120))]
    split = load(tiny_families["idefics3"])
    whole = load(tiny_families["idefics3"], image_options={"do_image_splitting": False})
    smaller = load(tiny_families["idefics3"], image_options={"longest_edge": 64})
    n = [int(c.prepare(image, ["x"])["input_ids"].shape[1]) for c in (split, whole, smaller)]
    assert n[1] < n[2] < n[0]


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("qwen2-vl", {"max_pixels": 1000}, r"image_options\.max_pixels.*multiple of 784"),
        (
            "qwen2-vl",
            {"min_pixels": 64 * 784, "max_pixels": 16 * 784},
            r"image_options\.max_pixels.*min_pixels",
        ),
        (
            "idefics3",
            {"longest_edge": 50},
            r"image_options\.longest_edge.*multiple of this model's tile size \(32",
        ),
        ("idefics3", {"do_image_splitting": "yes"}, r"do_image_splitting.*true or false"),
        ("llava", {"max_pixels": 784 * 16}, r"image_options\.max_pixels.*'llava' family.*none.*qwen2-vl"),
    ],
)
def test_a_wrong_family_option_fails_at_load_naming_it(tiny_families, name, options, match):
    with pytest.raises(ConfigError, match=match):
        load(tiny_families[name], image_options=options)


def test_an_unknown_image_option_fails_before_loading():
    with pytest.raises(ConfigError, match=r"image_options.*max_pixel.*max_pixels \(qwen2-vl/qwen2.5-vl\)"):
        CaptionerConfig(model="x/y", image_options={"max_pixel": 3})


def test_qwen_pipeline_file_validates():
    from recaption.pipeline.build import captioner_config
    from recaption.pipeline.config import load_config, read_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(read_config(str(root / "pipelines" / "sam-qwen2.5-vl.yaml")))
    model = captioner_config(cfg.caption)
    assert model.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert model.image_options == {"min_pixels": 256 * 784, "max_pixels": 1280 * 784}
    assert model.model in family("qwen2.5-vl").HUB_IDS


def test_tiny_models_command_builds_the_asked_families(tmp_path: Path):
    from typer.testing import CliRunner

    from recaption.cli import app

    r = CliRunner().invoke(
        app, ["tiny-models", str(tmp_path), "--family", "qwen2-vl", "--family", "idefics3"]
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idefics3", "qwen2-vl", "t5", "vae"]
    pre = json.loads((tmp_path / "qwen2-vl" / "preprocessor_config.json").read_text())
    assert pre["processor_class"] == "Qwen2VLProcessor"  # what AutoProcessor builds where torchvision is
    assert (tmp_path / "qwen2-vl" / "chat_template.jinja").is_file()
    assert Captioner(CaptionerConfig(model=str(tmp_path / "qwen2-vl"), device="cpu")).load().loaded
    r = CliRunner().invoke(app, ["tiny-models", str(tmp_path / "x"), "--family", "qwen3"])
    assert r.exit_code != 0 and "--family" in r.output and "qwen2.5-vl" in r.output


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_an_image_with_two_prompts_goes_through_the_vision_tower_once(
    tiny_families: dict[str, str], mixed_images: list, name: str
):
    """Neighbouring rows with the same image (several prompts per image) share its features: the
    vision tower sees exactly what it sees for the distinct images alone, and each row's caption is
    the one it gets alone."""
    images = mixed_images[-3:]
    rows = [im for im in images for _ in range(2)]
    prompts = ["Describe this image", "Describe this image in one sentence."] * len(images)
    cap = load(tiny_families[name], batch_size=len(rows))
    inner = cap.model.model
    tower = next(getattr(inner, a) for a in ("vision_tower", "vision_model", "visual") if hasattr(inner, a))
    seen: list[int] = []
    tower.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(_rows(args, kwargs)), with_kwargs=True
    )
    both = cap.caption(rows, prompts)
    with_duplicates, seen[:] = sum(seen), []
    cap.caption(images, prompts[::2])
    assert with_duplicates == sum(seen) > 0
    assert cap.vision_stats.images == 9 and cap.vision_stats.encoded == 6
    assert all(r.ok for r in both)
    assert [r.text for r in both] == [
        cap.caption([im], [p])[0].text for im, p in zip(rows, prompts, strict=True)
    ]


def _rows(args: tuple, kwargs: dict) -> int:
    x = args[0] if args else next(iter(kwargs.values()))
    return int(x.shape[0])


def test_sigma_qwen_pipeline_file_builds_its_stages(tmp_path: Path):
    """Two prompts, retries and dropped flags in one pipeline file, checked by the run's planner."""
    from recaption.pipeline.config import load_config, read_config
    from recaption.pipeline.run import plan

    root = Path(__file__).resolve().parents[2]
    data = read_config(str(root / "pipelines" / "sigma-qwen2.5-vl.yaml"))
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "a.jpg")
    data["source"]["path"] = str(tmp_path / "images")
    data["output"] = str(tmp_path / "out")
    cfg = load_config(data)
    p = plan(cfg)
    caption = p.stages["caption"].stage
    assert caption.columns == ["dense_caption", "short_caption"] and caption.retry_flagged == 2
    assert p.stages["encode"].stage.drop_flagged == ("length", "repetition", "error")
    data["encode"]["fields"] = ["dense", "long_caption"]
    with pytest.raises(ConfigError, match=r"encode\.fields.*long_caption.*short_caption"):
        plan(load_config(data))


@pytest.mark.parametrize(("given", "missing"), [("min_pixels", "max_pixels"), ("max_pixels", "min_pixels")])
def test_a_qwen_bound_the_checkpoint_lacks_fails_naming_the_option(
    tiny_families: dict[str, str], tmp_path: Path, given: str, missing: str
):
    """A checkpoint whose image processor sets only one bound: giving the other option alone fails
    naming the missing one (it was a TypeError comparing None with an int)."""
    import shutil

    folder = tmp_path / "qwen2-vl"
    shutil.copytree(tiny_families["qwen2-vl"], folder)
    pre_file = folder / "preprocessor_config.json"
    pre = json.loads(pre_file.read_text())
    edge = {"min_pixels": "shortest_edge", "max_pixels": "longest_edge"}
    pre["size"] = {edge[given]: pre["size"][edge[given]]}
    pre_file.write_text(json.dumps(pre))
    with pytest.raises(ConfigError, match=rf"image_options\.{missing}.*sets no {edge[missing]}"):
        load(str(folder), image_options={given: 64 * 784})
    both = load(str(folder), image_options={"min_pixels": 16 * 784, "max_pixels": 64 * 784})
    size = both.processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (16 * 784, 64 * 784)


def test_image_aspect_recorded_is_what_the_family_does(tiny_families: dict[str, str]):
    """Only LLaVA-1.5's processor centre-crops: the other families keep the whole image, and their
    rows say ``native`` (was ``crop``: a Qwen2-VL row claimed a crop that never happened)."""
    for name, path in tiny_families.items():
        if name in ("t5", "vae"):
            continue
        for asked in ("auto", "crop"):
            cap = load(path, image_aspect=asked)
            want = {"auto": "pad", "crop": "crop"}[asked] if name == "llava" else "native"
            assert cap.image_aspect == want, (name, asked)
        assert load(path, image_aspect="pad").image_aspect == "pad"
