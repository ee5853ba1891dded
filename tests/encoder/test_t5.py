"""T5 text features: tiny model round trip, trimmed = padded computation, truncation, empty captions,
hidden-size check, presets, batching."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from recaption.encoder.t5 import (  # noqa: E402
    PRESETS,
    TextEncoder,
    TextEncoderConfig,
    plan_batches,
)
from recaption.encoder.tiny_t5 import build_tiny_t5  # noqa: E402
from recaption.errors import ConfigError  # noqa: E402

TINY_HIDDEN = 32

CAPTIONS = [
    "A close-up photograph of a small orange cat sleeping on a blue wool blanket near a sunny window.",
    "Hogsmeade Station",
    "",
    "two dogs",
    "The photo depicts an old red-brick house with a black door, white windows and a garden of roses, "
    "with tall trees behind it and a gravel path that leads from the gate to the steps of the porch.",
    "A",
    "Fresh vegetables, including tomatoes, carrots, peppers and lettuce, are arranged in a basket.",
    "Sunlight streams through the leaves",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny_t5"))


def make(tiny_model: str, **overrides) -> TextEncoder:
    cfg: dict[str, Any] = {
        "preset": "alpha",
        "model": tiny_model,
        "expected_hidden_size": TINY_HIDDEN,
        "device": "cpu",
    }
    cfg.update(overrides)
    return TextEncoder(TextEncoderConfig(**cfg)).load()


def padded_reference(enc: TextEncoder, texts: list[str]) -> Any:
    """PixArt's computation: pad every caption to max_length, one batch, transformers' forward."""
    tok = enc.tokenizer(
        texts, max_length=enc.max_length, padding="max_length", truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return enc.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state


# -- the tiny model --------------------------------------------------------------------------------
def test_tiny_t5_loads_through_from_pretrained(tiny_model):
    from transformers import AutoTokenizer, T5EncoderModel

    assert (Path(tiny_model) / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = T5EncoderModel.from_pretrained(tiny_model)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok(["a cat on a mat", ""])["input_ids"]
    assert ids[0][-1] == tok.eos_token_id
    assert len(ids[0]) > 2
    assert ids[1] == [tok.eos_token_id]  # an empty caption is just </s>, as with T5
    assert tok.unk_token_id not in ids[0]
    assert tok.convert_ids_to_tokens(ids[0])[0].startswith("▁")  # SentencePiece word-start marker
    assert model.config.d_model == TINY_HIDDEN
    assert model.config.is_gated_act  # T5 v1.1's gated-GELU
    out = model(**tok(["a cat"], return_tensors="pt")).last_hidden_state
    assert out.shape == (1, len(tok("a cat")["input_ids"]), TINY_HIDDEN)


def test_tiny_t5_is_deterministic(tiny_model, tmp_path):
    again = build_tiny_t5(tmp_path / "again")
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (Path(again) / name).read_bytes() == (Path(tiny_model) / name).read_bytes(), name


# -- trimmed = padded ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {"kernel": "transformers", "attention": "sdpa"},
        {"kernel": "transformers", "attention": "eager"},
        {"kernel": "fused"},
    ],
    ids=["transformers-sdpa", "transformers-eager", "fused"],
)
def test_trimmed_features_equal_padded_computation(tiny_model, options):
    # A small budget forces several batches of different widths; shuffled input checks the
    # order is restored.
    enc = make(tiny_model, token_budget=128, pad_multiple=8, store_dtype="float16", **options)
    captions = CAPTIONS[:]
    random.Random(3).shuffle(captions)
    feats = enc.encode(captions)
    assert enc.stats.batches > 2
    texts = [enc.prepare_text(t) for t in captions]
    ref = padded_reference(enc, texts)
    assert len(feats) == len(captions)
    for row, (text, f) in enumerate(zip(texts, feats, strict=True)):
        assert f.text == text
        n = int(
            enc.tokenizer(text, truncation=True, max_length=enc.max_length, return_length=True)["length"][0]
        )
        assert f.length == n
        assert f.features.shape == (n, TINY_HIDDEN)
        assert f.features.dtype == np.float16
        expected = ref[row, :n].numpy()
        # float16 storage: 2^-11 relative, plus float32 noise from different batch shapes.
        np.testing.assert_allclose(f.to_float32(), expected, rtol=2e-3, atol=2e-3)


def test_fused_forward_equals_transformers_in_float32(tiny_model):
    enc = make(tiny_model, kernel="fused")
    plain = make(tiny_model, kernel="transformers", attention="eager")
    tok = enc.tokenizer(CAPTIONS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        got = enc.forward(tok.input_ids, tok.attention_mask)
        ref = plain.forward(tok.input_ids, tok.attention_mask)
    mask = tok.attention_mask.bool()
    torch.testing.assert_close(got[mask], ref[mask], rtol=1e-5, atol=1e-5)
    # The fused projections are views of the model's own weights: nothing copied, model intact.
    q = enc.model.encoder.block[0].layer[0].SelfAttention.q.weight
    assert enc.fused is not None
    assert q.untyped_storage().data_ptr() == enc.fused.layers[0][1].untyped_storage().data_ptr()


def test_features_do_not_depend_on_padding(tiny_model):
    enc = make(tiny_model, kernel="fused")
    ids = enc.tokenizer(["a cat on a mat"])["input_ids"][0]
    n = len(ids)
    outs = []
    for width in (n, n + 3, 64):
        input_ids = torch.zeros((1, width), dtype=torch.long)
        mask = torch.zeros((1, width), dtype=torch.long)
        input_ids[0, :n] = torch.tensor(ids)
        mask[0, :n] = 1
        with torch.no_grad():
            outs.append(enc.forward(input_ids, mask)[0, :n])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-5, atol=1e-5)


def test_bfloat16_store_and_compute(tiny_model):
    enc = make(tiny_model, compute_dtype="bfloat16", store_dtype="bfloat16", kernel="fused")
    feats = enc.encode(CAPTIONS[:3])
    assert feats[0].features.dtype == np.uint16  # bfloat16 bit patterns
    assert feats[0].dtype == "bfloat16"
    ref = make(tiny_model).encode(CAPTIONS[:3])
    for got, want in zip(feats, ref, strict=True):
        np.testing.assert_allclose(got.to_float32(), want.to_float32(), rtol=0.1, atol=0.1)
        # exact bfloat16 → float32 decoding
        assert np.array_equal(
            got.to_float32(),
            torch.from_numpy(got.features.view(np.int16)).view(torch.bfloat16).float().numpy(),
        )


def test_keep_fp32_wo(tiny_model):
    enc = make(tiny_model, compute_dtype="bfloat16", keep_fp32_wo=True, kernel="fused")
    ff = enc.model.encoder.block[0].layer[1].DenseReluDense
    assert ff.wo.weight.dtype == torch.float32
    assert ff.wi_0.weight.dtype == torch.bfloat16
    plain = make(tiny_model, compute_dtype="bfloat16", keep_fp32_wo=True, kernel="transformers")
    tok = enc.tokenizer(CAPTIONS[:4], padding="longest", return_tensors="pt")
    with torch.no_grad():
        got = enc.forward(tok.input_ids, tok.attention_mask)
        ref = plain.forward(tok.input_ids, tok.attention_mask)
    mask = tok.attention_mask.bool()
    torch.testing.assert_close(got[mask].float(), ref[mask].float(), rtol=0.05, atol=0.05)


def test_compile_is_off_on_cpu_by_default(tiny_model):
    enc = make(tiny_model, kernel="fused")
    assert enc.config.compile is None
    assert enc.fused is not None
    assert not enc.fused.compiled


def test_a_failing_compiler_falls_back_to_the_uncompiled_block(tiny_model, monkeypatch, caplog):
    from torch._dynamo.exc import BackendCompilerFailed

    def inductor():  # named like the backend that failed
        pass

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise BackendCompilerFailed(inductor, RuntimeError("no compiler here"), None)

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    enc = make(tiny_model, kernel="fused", compile=True)
    assert enc.fused is not None
    assert enc.fused.compiled
    with caplog.at_level("WARNING"):
        feats = enc.encode(CAPTIONS)
    assert not enc.fused.compiled
    assert "no compiler here" in caplog.text
    want = make(tiny_model, kernel="fused", compile=False).encode(CAPTIONS)
    for got, ref in zip(feats, want, strict=True):
        np.testing.assert_array_equal(got.features, ref.features)


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
    ],
)
def test_oom_and_cuda_faults_in_the_compiled_block_are_not_taken_for_compiler_errors(
    tiny_model, monkeypatch, error
):
    def compiled_but_failing(fn, **kwargs):
        def compiled(*args):
            raise error

        return compiled

    monkeypatch.setattr(torch, "compile", compiled_but_failing)
    enc = make(tiny_model, kernel="fused", compile=True)
    with pytest.raises(type(error)):
        enc.encode(CAPTIONS)
    assert enc.fused.compiled  # still the compiled path: nothing silently switched to the slow one


# -- bad input -------------------------------------------------------------------------------------
def test_truncation_is_flagged_and_counted(tiny_model):
    enc = make(tiny_model, max_length=16)
    long_caption = "a small orange cat sleeping on a blue wool blanket near a sunny window " * 3
    feats = enc.encode([long_caption, "two dogs", long_caption])
    full = enc.tokenizer(enc.prepare_text(long_caption))["input_ids"]
    assert len(full) > 16
    cut = enc.tokenizer(enc.prepare_text(long_caption), truncation=True, max_length=16)["input_ids"]
    for f in (feats[0], feats[2]):
        assert f.truncated
        assert f.length == 16
        assert f.token_count == len(full)
    assert not feats[1].truncated
    assert cut[-1] == enc.tokenizer.eos_token_id  # PixArt's truncation keeps </s>
    assert enc.stats.truncated == 2
    assert enc.stats.captions == 3
    ref = padded_reference(enc, [enc.prepare_text(long_caption)])
    np.testing.assert_allclose(feats[0].to_float32(), ref[0].numpy(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("caption", ["", None, "   ", "https://example.com/photo", "@someone 東京"])
def test_empty_caption_encodes_eos_and_is_flagged(tiny_model, caption):
    enc = make(tiny_model)
    feats = enc.encode([caption, "two dogs"])
    f = feats[0]
    assert f.empty
    assert f.text == ""
    assert f.length == 1
    assert f.features.shape == (1, TINY_HIDDEN)
    assert not feats[1].empty
    assert enc.stats.empty == 1
    ref = padded_reference(enc, [""])
    np.testing.assert_allclose(f.to_float32(), ref[0, :1].numpy(), rtol=2e-3, atol=2e-3)


def test_hidden_size_mismatch_fails_at_once_naming_both_sizes(tiny_model, monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("weights must not be loaded when the hidden size is wrong")

    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", no_weights)
    with pytest.raises(ConfigError) as err:
        TextEncoder(TextEncoderConfig(preset="alpha", model=tiny_model, device="cpu")).load()
    msg = str(err.value)
    assert "4096" in msg
    assert "32" in msg
    assert tiny_model in msg
    assert "expected_hidden_size" in msg
    with pytest.raises(ConfigError, match="hidden size 64"):
        TextEncoder(TextEncoderConfig(model=tiny_model, expected_hidden_size=64, device="cpu")).load()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("preset", "gamma"),
        ("compute_dtype", "float16"),
        ("store_dtype", "float32"),
        ("kernel", "triton"),
        ("attention", "flash"),
        ("max_length", 1),
        ("token_budget", 64),
        ("pad_multiple", 0),
        ("batch_cost_tokens", -1),
    ],
)
def test_wrong_options_fail_naming_the_option(option, value):
    with pytest.raises(ConfigError) as err:
        TextEncoderConfig(**{option: value})
    assert option in str(err.value)
    assert repr(value) in str(err.value)


def test_float16_compute_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="overflows in float16"):
        TextEncoderConfig(compute_dtype="float16")


def test_encode_before_load_is_an_error():
    with pytest.raises(RuntimeError, match="load"):
        TextEncoder().encode(["a cat"])


# -- presets ---------------------------------------------------------------------------------------
def test_presets():
    alpha, sigma = PRESETS["alpha"], PRESETS["sigma"]
    assert (alpha.max_length, alpha.clean, alpha.hidden_size) == (120, True, 4096)
    assert (sigma.max_length, sigma.clean, sigma.hidden_size) == (300, False, 4096)
    assert alpha.model == sigma.model == "DeepFloyd/t5-v1_1-xxl"
    assert TextEncoderConfig(preset="sigma").resolved_max_length == 300
    assert TextEncoderConfig(preset="sigma", max_length=200).resolved_max_length == 200
    assert TextEncoderConfig(preset="sigma", clean=True).resolved_clean


def test_preset_text_and_length_differences(tiny_model):
    caption = "  Photo by @Jane: A CAT on https://example.com/x  " + "with a long tail " * 20
    alpha = make(tiny_model, preset="alpha")
    sigma = make(tiny_model, preset="sigma")
    a, s = alpha.encode([caption])[0], sigma.encode([caption])[0]
    assert a.text.startswith("photo by: a cat on with a long tail")
    assert s.text == caption.strip()  # Σ: no cleaning, no lowercasing
    assert a.truncated
    assert a.length == 120
    assert not s.truncated
    assert s.length == s.token_count > 120
    assert sigma.text_meta()["max_length"] == 300
    assert sigma.text_meta()["cleaning"] is False
    assert alpha.text_meta() == {
        "model_id": tiny_model,
        "revision": None,
        "hidden_size": TINY_HIDDEN,
        "dtype": "float16",
        "max_length": 120,
        "cleaning": True,
    }


def test_config_is_picklable_and_cheap():
    cfg = TextEncoderConfig(preset="sigma", token_budget=4096)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    enc = TextEncoder(cfg)
    assert not enc.loaded
    assert pickle.loads(pickle.dumps(enc)).config == cfg


# -- batching --------------------------------------------------------------------------------------
def _padded(lengths, batch, multiple):
    return len(batch) * (-(-max(lengths[i] for i in batch) // multiple) * multiple)


@pytest.mark.parametrize("cost", [0, 512, 10**9])
def test_plan_batches_covers_everything_within_limits(cost):
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(1, 20), rng.randint(1, 120)]) for _ in range(700)]
    batches = plan_batches(
        lengths, token_budget=2048, max_batch_size=100, pad_multiple=8, batch_cost_tokens=cost
    )
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 100
        assert _padded(lengths, b, 8) <= 2048
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    # batches go from long to short captions
    assert max(lengths[i] for i in batches[0]) == max(lengths)


def test_plan_batches_trades_padding_against_calls():
    rng = random.Random(1)
    lengths = [rng.randint(1, 120) for _ in range(500)]
    cheap = plan_batches(lengths, 8192, 1000, 8, batch_cost_tokens=0)
    dear = plan_batches(lengths, 8192, 1000, 8, batch_cost_tokens=10**9)
    padded_cheap = sum(_padded(lengths, b, 8) for b in cheap)
    padded_dear = sum(_padded(lengths, b, 8) for b in dear)
    # no padding beyond rounding to 8 when calls are free
    assert padded_cheap == sum(-(-n // 8) * 8 for n in lengths)
    assert padded_dear > padded_cheap
    assert len(dear) < len(cheap)
    # the fewest calls the budget allows: every batch but the last is full
    assert len(dear) == len(plan_batches(lengths, 8192, 1000, 8, batch_cost_tokens=10**12))


def test_plan_batches_edge_cases():
    assert plan_batches([], 100, 10) == []
    assert plan_batches([500], 100, 10) == [[0]]  # one caption always fits alone
    assert sorted(map(len, plan_batches([3, 3, 3], 100, 2, 1))) == [1, 2]  # at most 2 per batch


# -- GPU -------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile_", [False, True], ids=["fused", "fused-compiled"])
def test_gpu_bfloat16_fused_matches_transformers(tiny_model, compile_):
    enc = make(tiny_model, device="cuda", kernel="fused", compile=compile_, token_budget=256)
    ref = make(tiny_model, device="cuda", kernel="transformers")
    got = enc.encode(CAPTIONS * 4)
    want = ref.encode(CAPTIONS * 4)
    for g, w in zip(got, want, strict=True):
        assert g.length == w.length
        np.testing.assert_allclose(g.to_float32(), w.to_float32(), rtol=0.05, atol=0.05)


# ---------------------------------------------------------------- unsafe weights, missing models
def test_pickled_t5_weights_are_refused_naming_the_folder_and_the_rule(tmp_path):
    from safetensors.torch import load_file

    # transformers 5 saves only safetensors (no safe_serialization=False): write the pickle by hand
    folder = Path(build_tiny_t5(tmp_path / "pickled"))
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    assert (folder / "pytorch_model.bin").exists()
    assert not (folder / "model.safetensors").exists()
    with pytest.raises(ConfigError) as info:
        make(str(folder))
    msg = str(info.value)
    assert str(folder) in msg
    assert "only safetensors weights are loaded" in msg
    assert "pickled" in msg


def test_offline_unknown_t5_fails_fast_with_one_clear_message(monkeypatch):
    import time

    from recaption.errors import ModelUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as info:
        TextEncoder(TextEncoderConfig(model="no-such-org/no-such-t5", device="cpu")).load()
    assert time.perf_counter() - t0 < 3
    msg = str(info.value)
    assert msg.startswith("--t5-model 'no-such-org/no-such-t5': the model could not be fetched")
    assert "HF_HUB_OFFLINE=1" in msg and "local folder" in msg
    assert "invalid value" not in msg
