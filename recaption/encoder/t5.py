"""T5 text features for PixArt: presets, a picklable config and the :class:`TextEncoder` wrapper.

PixArt stores T5's ``last_hidden_state`` for every caption. PixArt's own extractor pads each caption
to ``max_length`` (120 or 300) and stores the padding too; its training loader pads shorter
features back to ``model_max_length`` with mask 0, so only the real (unmasked) tokens need to be
stored and computed. T5's encoder output at a real token does not depend on how much padding
follows it (padded keys are masked out and the relative position bias depends only on the distance
between tokens), so this module:

1. cleans the caption (preset ``alpha``: PixArt-α's cleaner, see :mod:`recaption.encoder.cleaning`)
   or strips it (``sigma``);
2. tokenizes it exactly as PixArt does (``truncation=True, max_length=L``), and records whether it
   was longer than ``L`` tokens (``truncated``);
3. sorts the captions by token count and cuts the sorted list into batches under a token budget,
   each padded only to its own longest member (rounded up to ``pad_multiple``), so a batch of short
   LAION alt-texts holds hundreds of captions and a batch of dense captions about a hundred;
4. runs the encoder and returns, in input order, one (length, hidden) array per caption.

Two forward implementations compute the same function (tests check they agree):
``kernel="transformers"`` calls ``T5EncoderModel`` (``attention="sdpa"`` or ``"eager"``);
``kernel="fused"`` runs the same weights through :class:`FusedT5Encoder`, which does q/k/v in one
matrix product and the two gated-GELU input projections in another, adds the position bias and the
padding mask once per batch instead of once per layer, and on GPU is ``torch.compile``d per layer
(one compiled block reused by all 24 layers, dynamic batch and length; uncompiled if that fails).

Numerics: T5 v1.1 overflows in float16, so the compute dtype is bfloat16 on GPU (same exponent range
as float32) and float32 on CPU. Everything runs in bfloat16, as PixArt-α's ``T5Embedder`` does
(``transformers`` keeps the feed-forward output projections ``wo`` in float32 only when loading in
float16, which is what PixArt-Σ's extractor did). ``keep_fp32_wo=True`` keeps them in float32 (the
residual stream then becomes float32 too), at the price of 22% of the FLOPs off the bfloat16 tensor
cores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from recaption.encoder.cleaning import clean_caption
from recaption.errors import ConfigError, first_line

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "PRESETS",
    "FusedT5Encoder",
    "T5Preset",
    "TextEncodeStats",
    "TextEncoder",
    "TextEncoderConfig",
    "TextFeature",
    "plan_batches",
]


@dataclass(frozen=True)
class T5Preset:
    """What a PixArt version expects of its text features."""

    name: str
    model: str
    max_length: int
    clean: bool
    hidden_size: int
    description: str


PRESETS: dict[str, T5Preset] = {
    "alpha": T5Preset(
        name="alpha",
        model="DeepFloyd/t5-v1_1-xxl",
        max_length=120,
        clean=True,
        hidden_size=4096,
        description="PixArt-α: T5 v1.1 XXL, 120 tokens, captions cleaned twice (DeepFloyd IF's rules)",
    ),
    # PixArt-Σ's extractor loads the T5 from a PixArt diffusers repo's `text_encoder` subfolder
    # (e.g. PixArt-alpha/PixArt-XL-2-1024-MS): the same t5-v1_1-xxl weights, 300 tokens, and the
    # caption only stripped.
    "sigma": T5Preset(
        name="sigma",
        model="DeepFloyd/t5-v1_1-xxl",
        max_length=300,
        clean=False,
        hidden_size=4096,
        description="PixArt-Σ: the same T5 v1.1 XXL, 300 tokens, no cleaning (caption stripped)",
    ),
}

COMPUTE_DTYPES = ("auto", "bfloat16", "float32")
STORE_DTYPES = ("float16", "bfloat16")
KERNELS = ("auto", "transformers", "fused")
ATTENTIONS = ("sdpa", "eager")


@dataclass
class TextEncoderConfig:
    """How to load and run the T5 encoder. Cheap and picklable: the model loads in :meth:`TextEncoder.load`.

    ``model=None`` takes the preset's model; a local folder works wherever a hub id does.
    ``expected_hidden_size`` overrides the preset's hidden size check (for tiny test models).
    """

    preset: str = "alpha"
    model: str | None = None
    revision: str | None = None
    model_subfolder: str | None = None  # "text_encoder" in a PixArt diffusers repo
    tokenizer_subfolder: str | None = None  # "tokenizer" in a PixArt diffusers repo
    max_length: int | None = None  # None: the preset's
    clean: bool | None = None  # None: the preset's
    expected_hidden_size: int | None = None  # None: the preset's
    device: str = "auto"  # auto: cuda if available, else cpu
    compute_dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    store_dtype: str = "float16"
    token_budget: int = 32768  # padded tokens per forward batch (measured on H200; ~1.3 GB of activations)
    max_batch_size: int = 2048
    pad_multiple: int = 8  # batch lengths rounded up to this (tensor-core friendly, fewer shapes)
    batch_cost_tokens: int = 512  # what one more forward call costs, in padded tokens (plan_batches)
    kernel: str = "auto"  # auto: fused on cuda, transformers on cpu
    attention: str = "sdpa"  # for kernel="transformers"
    compile: bool | None = None  # torch.compile the fused block; None: on cuda (falls back if it fails)
    keep_fp32_wo: bool = False
    # Pickled .bin/.pt weights can run code when loaded: refused, as the captioner and VAE do.
    use_safetensors: bool | None = True
    local_files_only: bool = False

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError("preset", self.preset, sorted(PRESETS))
        if self.compute_dtype not in COMPUTE_DTYPES:
            hint = "T5 v1.1 overflows in float16; use bfloat16" if self.compute_dtype == "float16" else ""
            raise ConfigError("compute_dtype", self.compute_dtype, COMPUTE_DTYPES, hint)
        if self.store_dtype not in STORE_DTYPES:
            raise ConfigError("store_dtype", self.store_dtype, STORE_DTYPES)
        if self.kernel not in KERNELS:
            raise ConfigError("kernel", self.kernel, KERNELS)
        if self.attention not in ATTENTIONS:
            raise ConfigError("attention", self.attention, ATTENTIONS)
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError("max_length", self.max_length, "an integer >= 2 (a token and </s>)")
        if self.pad_multiple < 1:
            raise ConfigError("pad_multiple", self.pad_multiple, "an integer >= 1")
        if self.batch_cost_tokens < 0:
            raise ConfigError("batch_cost_tokens", self.batch_cost_tokens, "an integer >= 0")
        if self.max_batch_size < 1:
            raise ConfigError("max_batch_size", self.max_batch_size, "an integer >= 1")
        if self.token_budget < _round_up(self.resolved_max_length, self.pad_multiple):
            raise ConfigError(
                "token_budget",
                self.token_budget,
                f"at least max_length rounded up to pad_multiple "
                f"({_round_up(self.resolved_max_length, self.pad_multiple)})",
            )
        if self.expected_hidden_size is not None and self.expected_hidden_size < 1:
            raise ConfigError("expected_hidden_size", self.expected_hidden_size, "a positive integer")

    @property
    def preset_info(self) -> T5Preset:
        return PRESETS[self.preset]

    @property
    def resolved_model(self) -> str:
        return self.model or self.preset_info.model

    @property
    def resolved_max_length(self) -> int:
        return self.max_length or self.preset_info.max_length

    @property
    def resolved_clean(self) -> bool:
        return self.preset_info.clean if self.clean is None else self.clean

    @property
    def resolved_hidden_size(self) -> int:
        return self.expected_hidden_size or self.preset_info.hidden_size


@dataclass
class TextFeature:
    """One caption's T5 features.

    ``features`` is (``length``, hidden) at the real tokens only, ``</s>`` included, in the store
    dtype: ``float16`` as numpy float16; ``bfloat16`` as its raw bit patterns in numpy ``uint16``
    (numpy has no bfloat16; the schema's ``pack_tensor(x, "bfloat16")`` takes them as they are).
    """

    features: np.ndarray
    length: int
    dtype: str
    text: str  # exactly what was tokenized (after cleaning or stripping)
    token_count: int  # tokens before truncation, </s> included
    truncated: bool  # token_count > max_length: the encoded tokens are the first max_length - 1 + </s>
    empty: bool  # nothing left to encode (missing, blank, or cleaned away): only </s> was encoded

    def to_float32(self) -> np.ndarray:
        """The features as float32 (exact for both store dtypes)."""
        if self.dtype == "bfloat16":
            return (self.features.astype(np.uint32) << 16).view(np.float32)
        return self.features.astype(np.float32)


@dataclass
class TextEncodeStats:
    """Running counts over every :meth:`TextEncoder.encode` call of one encoder."""

    captions: int = 0
    truncated: int = 0
    empty: int = 0
    tokens: int = 0  # real tokens encoded
    padded_tokens: int = 0  # tokens the encoder ran, padding included
    batches: int = 0


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def plan_batches(
    lengths: Sequence[int],
    token_budget: int,
    max_batch_size: int,
    pad_multiple: int = 1,
    batch_cost_tokens: int = 0,
) -> list[list[int]]:
    """Group caption indices into batches of similar length under a padded-token budget.

    Captions are sorted by length, longest first (a batch that does not fit in memory then fails
    at once rather than at the end), and the sorted list is cut into consecutive batches. A batch
    is padded to its longest member rounded up to ``pad_multiple``; it may hold at most
    ``max_batch_size`` captions and ``token_budget`` padded tokens. Among all such cuts, the one
    with the least ``padded tokens + batch_cost_tokens × batches`` is chosen (dynamic programming):
    ``batch_cost_tokens`` is what one more forward call costs, in tokens (launch overhead, a
    smaller matrix product), so a wide spread of lengths is split only where the padding saved is
    worth a call. ``batch_cost_tokens=0`` pads least; a huge value gives the fewest, fullest
    batches. Every index appears in exactly one batch.
    """
    n = len(lengths)
    if n == 0:
        return []
    order = np.array(sorted(range(n), key=lambda i: (-int(lengths[i]), i)), dtype=np.int64)
    widths = np.array([_round_up(max(int(lengths[i]), 1), pad_multiple) for i in order], dtype=np.float64)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    start_of = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        lo = max(0, end - max_batch_size)
        starts = np.arange(lo, end)
        counts = end - starts
        padded = counts * widths[lo:end]
        cost = best[lo:end] + padded + batch_cost_tokens
        feasible = padded <= token_budget
        feasible[-1] = True  # a caption alone always fits, whatever the budget
        cost[~feasible] = np.inf
        k = int(np.argmin(cost))  # the earliest start on ties: fewer, larger batches
        best[end] = cost[k]
        start_of[end] = lo + k
    batches: list[list[int]] = []
    end = n
    while end > 0:
        begin = int(start_of[end])
        batches.append([int(i) for i in order[begin:end]])
        end = begin
    batches.reverse()
    return batches


class FusedT5Encoder:
    """A T5 encoder forward over the weights of a loaded ``T5EncoderModel``, built for throughput.

    Same function as the transformers forward (eval mode): RMS norms with float32 variance,
    unscaled attention with the relative position bias of layer 0 shared by every layer, gated
    GELU (tanh approximation, as ``gelu_new``), residual adds, a final norm. Differences are in
    how, not what: q/k/v and the two input projections of the feed-forward are one matrix product
    each (the model's own weights become views into the concatenated ones, so memory is not
    doubled and the transformers forward still works), the bias and padding mask are combined once
    per batch, and attention runs through ``scaled_dot_product_attention``.
    """

    def __init__(self, model: Any, *, compile: bool = False) -> None:
        import torch

        cfg = model.config
        if not getattr(cfg, "is_gated_act", False):
            raise ConfigError(
                "kernel", "fused", ("transformers",), "the fused kernel implements T5 v1.1's gated FFN"
            )
        self.n_heads = int(cfg.num_heads)
        self.d_kv = int(cfg.d_kv)
        self.eps = float(cfg.layer_norm_epsilon)
        self.num_buckets = int(cfg.relative_attention_num_buckets)
        self.max_distance = int(cfg.relative_attention_max_distance)
        self.embed = model.get_input_embeddings()
        stack = model.encoder
        attn0 = stack.block[0].layer[0].SelfAttention
        self._bucket_fn = attn0._relative_position_bucket
        self.relative_bias = attn0.relative_attention_bias
        self.final_norm = stack.final_layer_norm.weight
        self.layers: list[tuple[torch.Tensor, ...]] = []
        with torch.no_grad():
            for block in stack.block:
                sa = block.layer[0].SelfAttention
                ff = block.layer[1].DenseReluDense
                wqkv = _concat_as_views([sa.q, sa.k, sa.v])
                wi = _concat_as_views([ff.wi_0, ff.wi_1])
                self.layers.append(
                    (
                        block.layer[0].layer_norm.weight,
                        wqkv,
                        sa.o.weight,
                        block.layer[1].layer_norm.weight,
                        wi,
                        ff.wo.weight,
                    )
                )
        self._rms_norm, self._eager_block = _kernels()
        self._block = self._eager_block
        if compile:
            # One graph for all layers (weights are arguments), shapes symbolic in batch and length.
            self._block = torch.compile(self._eager_block, dynamic=True, fullgraph=True)
        self._bias_cache: torch.Tensor | None = None

    @property
    def compiled(self) -> bool:
        """Whether the compiled block is in use (false after a compilation failure fell back)."""
        return self._block is not self._eager_block

    def position_bias(self, length: int) -> torch.Tensor:
        """(1, heads, length, length) relative position bias; cached, since the bias of a shorter
        sequence is the top-left corner of a longer one's (it depends only on key − query)."""
        import torch

        cached = self._bias_cache
        if cached is None or cached.shape[-1] < length:
            weight = self.relative_bias.weight
            pos = torch.arange(length, dtype=torch.long, device=weight.device)
            buckets = self._bucket_fn(
                pos[None, :] - pos[:, None],
                bidirectional=True,
                num_buckets=self.num_buckets,
                max_distance=self.max_distance,
            )
            cached = self.relative_bias(buckets).permute(2, 0, 1).unsqueeze(0).contiguous()
            self._bias_cache = cached
        return cached[:, :, :length, :length]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``last_hidden_state`` (batch, length, hidden) for ids and a 0/1 mask of the same shape."""
        import torch

        length = input_ids.shape[1]
        h = self.embed(input_ids)
        bias = self.position_bias(length).to(h.dtype)
        keep = attention_mask.bool()[:, None, None, :]
        bias = torch.where(keep, bias, torch.finfo(h.dtype).min)
        try:
            out = self._layers(h, bias)
        except Exception as exc:
            if not self.compiled or not is_compiler_error(exc):
                # Out of memory and accelerator faults are not the compiler's: falling back would
                # hide them and run the rest of the job slowly on a broken or full device.
                raise
            # A compiler that fails on this machine (no C compiler for Triton, an unsupported GPU)
            # costs speed, not the job: the same block runs uncompiled.
            logger.warning(
                "T5 fused block: torch.compile failed (%s: %s); running uncompiled", type(exc).__name__, exc
            )
            self._block = self._eager_block
            out = self._layers(h, bias)
        return self._rms_norm(out, self.final_norm, self.eps)

    def _layers(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for weights in self.layers:
            h = self._block(h, bias, *weights, self.n_heads, self.d_kv, self.eps)
        return h


def _concat_as_views(linears: Sequence[Any]) -> torch.Tensor:
    """Concatenate nn.Linear weights along the output axis and re-point each weight at its slice."""
    import torch

    fused = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = fused[start : start + rows]
        start += rows
    return fused


@cache
def _kernels() -> tuple[Any, Any]:
    """The RMS norm and the encoder block as closures over torch (so torch.compile sees no imports)."""
    import torch
    import torch.nn.functional as F

    def rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # T5LayerNorm: variance in float32, no mean subtraction, no bias; cast back before the scale.
        variance = h.to(torch.float32).pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + eps)
        if weight.dtype in (torch.float16, torch.bfloat16):
            h = h.to(weight.dtype)
        return weight * h

    def block(
        h: torch.Tensor,
        bias: torch.Tensor,
        ln_attn: torch.Tensor,
        wqkv: torch.Tensor,
        wo_attn: torch.Tensor,
        ln_ff: torch.Tensor,
        wi: torch.Tensor,
        wo_ff: torch.Tensor,
        n_heads: int,
        d_kv: int,
        eps: float,
    ) -> torch.Tensor:
        batch, length, _ = h.shape
        x = rms_norm(h, ln_attn, eps)
        qkv = F.linear(x, wqkv).view(batch, length, 3, n_heads, d_kv).permute(2, 0, 3, 1, 4)
        # T5 does not scale q·k (its initialisation absorbs 1/sqrt(d)): scale=1.
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias, scale=1.0)
        a = a.transpose(1, 2).reshape(batch, length, n_heads * d_kv)
        h = h + F.linear(a, wo_attn)
        x = rms_norm(h, ln_ff, eps)
        gate, up = F.linear(x, wi).chunk(2, dim=-1)
        x = F.gelu(gate, approximate="tanh") * up
        if x.dtype != wo_ff.dtype:  # keep_fp32_wo: transformers casts the input up, as here
            x = x.to(wo_ff.dtype)
        return h + F.linear(x, wo_ff)

    return rms_norm, block


class TextEncoder:
    """Captions in, T5 features of their real tokens out. Knows nothing of shards or Ray.

    >>> enc = TextEncoder(TextEncoderConfig(preset="alpha"))
    >>> enc.load()                                   # on the worker
    >>> feats = enc.encode(["A cat on a mat.", ""])  # list[TextFeature], input order
    """

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        self.config = config or TextEncoderConfig()
        self.tokenizer: Any = None
        self.model: Any = None
        self.fused: FusedT5Encoder | None = None
        self.stats = TextEncodeStats()
        self._device: Any = None
        self._dtype: Any = None

    # -- loading -------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def kernel(self) -> str:
        """The forward in use once loaded (``fused`` or ``transformers``); the configured one before."""
        if not self.loaded:
            return self.config.kernel
        return "fused" if self.fused is not None else "transformers"

    @property
    def max_length(self) -> int:
        return self.config.resolved_max_length

    @property
    def hidden_size(self) -> int:
        return self.config.resolved_hidden_size

    def load(self) -> TextEncoder:
        """Load tokenizer and encoder (``from_pretrained``: a hub id or a local folder).

        Fails at once, before moving weights to the device, if the model's hidden size is not the
        preset's (PixArt's caption projection takes exactly that width).
        """
        if self.loaded:
            return self
        import torch
        from transformers import AutoConfig, AutoTokenizer, T5EncoderModel

        cfg = self.config
        source = cfg.resolved_model
        common: dict[str, Any] = {"revision": cfg.revision, "local_files_only": cfg.local_files_only}
        from recaption.hub import require_model

        require_model(
            source,
            "--t5-model",
            revision=cfg.revision,
            subfolder=cfg.model_subfolder,
            local_files_only=cfg.local_files_only,
        )
        try:
            model_config = AutoConfig.from_pretrained(source, subfolder=cfg.model_subfolder or "", **common)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(
                "--t5-model",
                source,
                "a Hugging Face hub id or a local folder holding a T5 encoder and its tokenizer",
                hint=f"cannot load its configuration: {first_line(e)}",
            ) from None
        self.check_hidden_size(model_config)

        device = torch.device(_resolve_device(cfg.device))
        dtype = _resolve_dtype(cfg.compute_dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder=cfg.tokenizer_subfolder or "", **common)
        load_kwargs: dict[str, Any] = {
            # keep_fp32_wo: load in float32 so `wo` keeps its checkpoint precision; attach() casts the rest.
            "dtype": torch.float32 if cfg.keep_fp32_wo else dtype,
            "attn_implementation": cfg.attention,
            "subfolder": cfg.model_subfolder or "",
            **common,
        }
        if cfg.use_safetensors is not None:
            load_kwargs["use_safetensors"] = cfg.use_safetensors
        if device.type == "cuda":
            load_kwargs["device_map"] = {"": device}
        try:
            model = T5EncoderModel.from_pretrained(source, **load_kwargs)
        except (OSError, ValueError) as e:
            raise ConfigError(
                "--t5-model",
                source,
                "a T5 encoder with safetensors weights" if cfg.use_safetensors else "a T5 encoder",
                hint=_weights_hint(e, bool(cfg.use_safetensors), source, cfg.model_subfolder),
            ) from None
        self.attach(model, tokenizer)
        return self

    def attach(self, model: Any, tokenizer: Any) -> TextEncoder:
        """Use an already built ``T5EncoderModel`` and tokenizer (benchmarks, tests).

        Applies the config as :meth:`load` does: hidden size check, device, dtype, kernel.
        """
        import torch

        cfg = self.config
        self.check_hidden_size(model.config)
        device = torch.device(_resolve_device(cfg.device))
        dtype = _resolve_dtype(cfg.compute_dtype, device)
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ConfigError(
                "model", cfg.resolved_model, "a T5 tokenizer with <pad> and </s>", "its tokenizer lacks one"
            )
        model = model.to(device=device)
        if not cfg.keep_fp32_wo or dtype == torch.float32:
            model = model.to(dtype=dtype)
        else:  # the feed-forward output projections in float32, everything else in `dtype`
            for name, param in model.named_parameters():
                is_ffn_out = name.endswith("DenseReluDense.wo.weight")
                param.data = param.data.to(torch.float32 if is_ffn_out else dtype)
        model.eval()
        model.requires_grad_(False)
        self.model, self.tokenizer = model, tokenizer
        self._device, self._dtype = device, dtype
        kernel = cfg.kernel
        if kernel == "auto":
            kernel = "fused" if device.type == "cuda" else "transformers"
        compile_ = device.type == "cuda" if cfg.compile is None else cfg.compile
        self.fused = FusedT5Encoder(model, compile=compile_) if kernel == "fused" else None
        return self

    def check_hidden_size(self, model_config: Any) -> None:
        """Raise :class:`ConfigError`, naming the model and both sizes, unless ``d_model`` is as expected."""
        actual = int(getattr(model_config, "d_model", getattr(model_config, "hidden_size", -1)))
        expected = self.hidden_size
        if actual != expected:
            where = (
                "expected_hidden_size"
                if self.config.expected_hidden_size is not None
                else f"preset {self.config.preset!r}"
            )
            raise ConfigError(
                "model",
                self.config.resolved_model,
                f"a T5 encoder of hidden size {expected} ({where})",
                f"this model's hidden size is {actual}. PixArt's caption projection takes {expected}-wide "
                f"features; to use a different model on purpose, set expected_hidden_size={actual}",
            )

    # -- text -----------------------------------------------------------------------------------
    def prepare_text(self, caption: str | None) -> str:
        """The exact text that is tokenized: PixArt-α's cleaning (twice) or a strip (PixArt-Σ)."""
        if caption is None:
            return ""
        text = str(caption)
        return clean_caption(text) if self.config.resolved_clean else text.strip()

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids as PixArt gets them (``truncation=True, max_length``) and the untruncated counts.

        The untruncated encoding is computed first; only captions longer than ``max_length`` are
        tokenized again with the tokenizer's own truncation, so the ids are exactly PixArt's.
        """
        self._require_loaded()
        tok = self.tokenizer
        full = tok(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        counts = [len(ids) for ids in full]
        long_idx = [i for i, n in enumerate(counts) if n > self.max_length]
        if long_idx:
            cut = tok(
                [texts[i] for i in long_idx],
                add_special_tokens=True,
                truncation=True,
                max_length=self.max_length,
            )["input_ids"]
            for i, ids in zip(long_idx, cut, strict=True):
                full[i] = ids
        return [list(ids) for ids in full], counts

    def encode(self, captions: Sequence[str | None]) -> list[TextFeature]:
        """Encode captions; one :class:`TextFeature` per caption, in input order.

        A missing or blank caption, or one that cleaning empties, is encoded as PixArt would encode
        it (``</s>`` alone, length 1) and flagged ``empty``; a caption over ``max_length`` tokens is
        cut as PixArt cuts it and flagged ``truncated``. Both are counted in :attr:`stats`.
        """
        texts = [self.prepare_text(c) for c in captions]
        ids, counts = self.tokenize(texts)
        arrays = self.encode_ids(ids)
        out = []
        for text, token_ids, count, arr in zip(texts, ids, counts, arrays, strict=True):
            empty = not text.strip()
            truncated = count > self.max_length
            out.append(
                TextFeature(
                    features=arr,
                    length=len(token_ids),
                    dtype=self.config.store_dtype,
                    text=text,
                    token_count=count,
                    truncated=truncated,
                    empty=empty,
                )
            )
            self.stats.empty += int(empty)
            self.stats.truncated += int(truncated)
        self.stats.captions += len(out)
        return out

    # -- tensors --------------------------------------------------------------------------------
    def encode_ids(self, ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Encoder features of already tokenized captions (each ending in ``</s>``), input order.

        Batches by :func:`plan_batches`; each array is (len(ids[i]), hidden) in the store dtype
        (bfloat16 as ``uint16`` bit patterns).
        """
        import torch

        self._require_loaded()
        cfg = self.config
        lengths = [len(x) for x in ids]
        if any(n == 0 for n in lengths):
            raise ValueError("encode_ids: every caption needs at least one token (</s>)")
        if any(n > self.max_length for n in lengths):
            raise ValueError(f"encode_ids: a caption has more than max_length={self.max_length} tokens")
        results: list[np.ndarray | None] = [None] * len(ids)
        store = getattr(torch, cfg.store_dtype)
        device = self._device
        cuda = device.type == "cuda"
        pad_id = int(self.tokenizer.pad_token_id)
        pending = None
        with torch.inference_mode():
            plan = plan_batches(
                lengths, cfg.token_budget, cfg.max_batch_size, cfg.pad_multiple, cfg.batch_cost_tokens
            )
            for batch in plan:
                blen = [lengths[i] for i in batch]
                width = _round_up(max(blen), cfg.pad_multiple)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : lengths[i]] = torch.as_tensor(ids[i], dtype=torch.long)
                    mask[row, : lengths[i]] = 1
                # Flat positions of the real tokens: selecting them needs no device sync, unlike a
                # boolean mask, so the host can prepare the next batch while the device computes.
                index = torch.nonzero(mask.view(-1), as_tuple=True)[0]
                if cuda:  # pinned host memory: the copies are asynchronous and overlap the previous batch
                    input_ids, mask = input_ids.pin_memory(), mask.pin_memory()
                hidden = self.forward(
                    input_ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
                )
                real = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index.to(device)).to(store)
                if cuda:  # only the real tokens leave the device, asynchronously, into pinned memory
                    host = torch.empty(real.shape, dtype=store, pin_memory=True)
                    host.copy_(real, non_blocking=True)
                    done = torch.cuda.Event()
                    done.record()
                else:
                    host, done = real, None
                if pending is not None:  # split the previous batch while this one runs
                    _split_batch(*pending, results)
                pending = (batch, blen, host, done)
                self.stats.batches += 1
                self.stats.tokens += sum(blen)
                self.stats.padded_tokens += len(batch) * width
            if pending is not None:
                _split_batch(*pending, results)
        return results  # type: ignore[return-value]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``last_hidden_state`` of a padded batch on the device (the configured kernel)."""
        self._require_loaded()
        if self.fused is not None:
            return self.fused(input_ids, attention_mask)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def text_meta(self) -> dict[str, Any]:
        """What the feature shard's metadata records about the text features (schema ``TextMeta`` fields)."""
        cfg = self.config
        return {
            "model_id": cfg.resolved_model,
            "revision": cfg.revision,
            "hidden_size": self.hidden_size,
            "dtype": cfg.store_dtype,
            "max_length": self.max_length,
            "cleaning": cfg.resolved_clean,
        }

    def describe(self) -> dict[str, Any]:
        """The configuration with resolved defaults, for logs and reports."""
        d = asdict(self.config)
        d.update(
            model=self.config.resolved_model,
            max_length=self.max_length,
            clean=self.config.resolved_clean,
            expected_hidden_size=self.hidden_size,
            kernel=self.kernel,
        )
        return d

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise RuntimeError("TextEncoder: call load() (or attach()) before encoding")


def _split_batch(
    batch: list[int], lengths: list[int], host: torch.Tensor, done: Any, results: list[np.ndarray | None]
) -> None:
    """Cut a batch's real-token rows into one array per caption (copies out of pinned memory)."""
    import torch

    if done is not None:
        done.synchronize()
    for i, chunk in zip(batch, torch.split(host, lengths), strict=True):
        arr = _to_numpy(chunk)
        # Own memory per caption: the pinned buffer goes back to the allocator's cache.
        results[i] = arr.copy() if done is not None else arr


def is_compiler_error(e: BaseException) -> bool:
    """Whether an exception comes from ``torch.compile`` itself (Dynamo, Inductor, Triton, a C compiler).

    Out-of-memory errors and CUDA faults raised while running compiled code are not: they propagate.
    """
    from recaption.captioner.model import is_accelerator_fault, is_oom

    if is_oom(e) or is_accelerator_fault(e):
        return False
    try:
        from torch._dynamo.exc import BackendCompilerFailed, TorchRuntimeError, Unsupported

        if isinstance(e, BackendCompilerFailed | Unsupported | TorchRuntimeError):
            return True
    except ImportError:  # a torch without dynamo: the names below decide
        pass
    if any(c.__module__.startswith(("torch._dynamo", "torch._inductor", "triton")) for c in type(e).__mro__):
        return True
    text = f"{type(e).__name__}: {e}".lower()
    return any(k in text for k in ("inductor", "triton", "dynamo", "c compiler", "gcc", "cc1"))


def _weights_hint(e: BaseException, safetensors_only: bool, source: str, subfolder: str | None) -> str:
    """Why weights did not load; names the folder and the safetensors rule where that is the cause."""
    hint = f"cannot load its weights: {first_line(e)}"
    if safetensors_only and "safetensors" in str(e).lower():
        where = f"{source}/{subfolder}" if subfolder else source
        hint += (
            f" (only safetensors weights are loaded: {where} has none; pickled .bin/.pt/.ckpt "
            "weights are refused because loading them can run code; convert them to safetensors)"
        )
    return hint


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(name: str, device: Any) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)
