"""VAE latents the way PixArt trains on them: bucketed, resized and cropped as in training, mean ‖ std.

:class:`ImageEncoder` wraps a ``diffusers`` ``AutoencoderKL`` (a hub id or a local folder). For
each image and resolution it picks PixArt's aspect-ratio bucket, resizes and centre-crops exactly
as PixArt's multi-scale training does (:mod:`recaption.encoder.buckets`), normalises to [-1, 1]
(``ToTensor`` then ``Normalize([.5], [.5])``), encodes images of one bucket together, and returns
the posterior mean and std concatenated on the channel axis, ``(2·C, H/8, W/8)``, which is what
PixArt's extractor stores (training draws ``mean + std · noise`` at every load).

Presets:

- ``sd-vae-ft-ema`` (PixArt-α): ``stabilityai/sd-vae-ft-ema``, latents scaled by 0.18215 at training time;
- ``sdxl`` (PixArt-Σ): ``stabilityai/sdxl-vae``, scale 0.13025. We take the original SDXL VAE, not
  ``madebyollin/sdxl-vae-fp16-fix``: it is the VAE PixArt-Σ was trained with, and the fp16-fix
  exists only because the original overflows in *float16*; we compute in bfloat16 (float32's
  range), where the original is fine, and the fix's latents are close to but not the same as the
  original's. Pass ``model="madebyollin/sdxl-vae-fp16-fix"`` to use it anyway.

Speed on a GPU (all options of :class:`VaeConfig`, so ``benchmarks/vae_gpu.py`` can compare them):
bfloat16, channels-last convolutions with cuDNN autotuning, GroupNorm + SiLU fused into one pass in
channels-last layout (``compile="norms"``: small ``torch.compile``'d graphs, convolutions stay
cuDNN's), or the whole encoder compiled (``compile="full"``, the default on a GPU); only the encoder
runs (the decoder is dropped at load); images of a bucket are batched together; CPU resizing runs in
threads and overlaps the GPU, which is fed from pinned memory. Measured on an H200 (SD VAE, random
weights, 1024 buckets, batch 8; plain bf16 ``encode`` at 1024x1024 = 37.3 images/s in the same run):
full compile 46.7 images/s (x1.25), fused norms 40.3 (x1.08), eager NCHW 38.5, eager channels-last
22.6 (PyTorch's GroupNorm converts layouts). The mid-block attention (16,384 tokens, one 512-wide
head: no flash or cuDNN kernel) takes 4.6 ms/image with SDPA's memory-efficient kernel;
``attention="gemm"`` computes it exactly with two GEMMs (not yet measured on a GPU).

Numerics: a VAE whose config sets ``force_upcast`` (the SDXL VAE: it overflows in float16) is
refused in float16; a latent that is not finite fails that sample with a reason (``error``), never
stored; the scale factor recorded is the loaded VAE's ``scaling_factor`` (a warning when it is not
the preset's). Batches are sized by pixels (``batch_pixels``: as many 256² crops as 16 1024²
ones), and a batch that runs out of memory is split in halves down to one image, as the captioner's.

The model wrapper knows nothing of shards or Ray: PIL images in, :class:`LatentResult` out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recaption.encoder import buckets as B
from recaption.encoder import schema as S
from recaption.errors import ConfigError, first_line

# Bump when preprocessing changes the pixels of finished shards, so a resumed run refuses to mix
# them. 2: Lanczos at 2048 (PixArt-Σ), very wide images resized inside their crop window.
PREPROCESS_RULES = 2
MAX_BATCH_IMAGES = 256

log = logging.getLogger("recaption.encoder.vae")


@dataclass(frozen=True)
class VaePreset:
    """A VAE as PixArt uses it."""

    name: str
    model_id: str
    scale_factor: float
    latent_channels: int
    pixart: str  # "alpha" or "sigma"
    max_ratio: float  # PixArt's loaders drop height/width above this


PRESETS: dict[str, VaePreset] = {
    "sd-vae-ft-ema": VaePreset(
        "sd-vae-ft-ema", "stabilityai/sd-vae-ft-ema", 0.18215, 4, "alpha", B.PIXART_ALPHA_MAX_RATIO
    ),
    "sdxl": VaePreset("sdxl", "stabilityai/sdxl-vae", 0.13025, 4, "sigma", B.PIXART_SIGMA_MAX_RATIO),
}
# "alpha"/"sigma" name the VAE of that PixArt too.
PRESET_ALIASES = {"alpha": "sd-vae-ft-ema", "sigma": "sdxl"}

# The SD VAE's architecture (stabilityai/sd-vae-ft-ema's config.json), for random-weight
# benchmarks; the SDXL VAE has the same encoder with sample_size 1024 and scaling_factor 0.13025.
SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}
SDXL_VAE_CONFIG: dict[str, Any] = {**SD_VAE_CONFIG, "sample_size": 1024, "scaling_factor": 0.13025}

COMPUTE_DTYPES = ("auto", "bfloat16", "float16", "float32")
STORE_DTYPES = ("float16", "bfloat16", "float32")
COMPILE_MODES = ("auto", "none", "norms", "full")
RESIZE_MODES = ("crop", "stretch")
# "gemm": exact attention as two matrix products around a softmax (see GemmAttnProcessor); the
# others pick an SDPA kernel. The VAE's single 512-wide head has no flash or cuDNN kernel.
ATTENTION_BACKENDS = ("auto", "gemm", "math", "efficient", "flash", "cudnn")


def resolve_preset(name: str) -> VaePreset:
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        raise ConfigError("vae preset", name, [*PRESETS, *PRESET_ALIASES])
    return PRESETS[key]


@dataclass
class VaeConfig:
    """Picklable configuration of :class:`ImageEncoder` (the model loads in :meth:`ImageEncoder.load`)."""

    preset: str = "sd-vae-ft-ema"
    model: str | None = None  # hub id or local folder; default: the preset's model id
    revision: str | None = None
    subfolder: str | None = None  # e.g. "vae" inside a full pipeline repository
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # compute dtype; "auto": bfloat16 on GPU, float32 on CPU
    store_dtype: str = "float16"  # dtype of the stored mean ‖ std
    resolutions: tuple[int, ...] = (256, 512, 1024)
    multiscale: bool = True  # False: square crops, PixArt's single-scale default_train
    # True (with multiscale): also the square crop single-scale training reads (vae_R_square)
    square: bool = False
    # "crop": cover the bucket and centre-crop, as PixArt's training transform; "stretch": resize
    # straight to the bucket, as PixArt's tools/extract_features.py --multi_scale does
    resize: str = "crop"
    batch_size: int = 8  # images per forward pass at 1024² (all of one bucket); see batch_pixels
    # Pixels per forward pass (None: batch_size x 1024²): a 256² bucket then batches 16x the images.
    batch_pixels: int | None = None
    max_ratio: float | None = None  # drop height/width above this; default: the preset's PixArt rule
    min_ratio: float | None = None  # also drop very wide images (PixArt keeps them)
    # None: channels-last whenever something is compiled. Alone it is slower on CUDA (measured 0.61x
    # of plain NCHW): PyTorch's eager GroupNorm converts channels-last tensors to NCHW and back.
    channels_last: bool | None = None
    # "auto": "full" on a GPU (fastest measured: 1.25x plain, ~50 s of compilation once per process),
    # "none" on the CPU; "norms": only GroupNorm+SiLU compiled (1.08x, ~20 s).
    compile: str = "auto"
    attention: str = "auto"  # the mid-block attention: "gemm" or an SDPA backend
    pad_input: bool = False  # feed RGB as 8 channels (5 zero channels, zero weights): exact, cuDNN-friendlier
    cudnn_benchmark: bool = True
    slicing: bool = False  # diffusers' enable_slicing (one image at a time)
    tiling: bool = False  # diffusers' enable_tiling (changes the latents: off by default)
    preprocess_threads: int = 4
    local_files_only: bool = False

    def __post_init__(self) -> None:
        resolve_preset(self.preset)
        self.resolutions = tuple(int(r) for r in self.resolutions)
        if not self.resolutions:
            raise ConfigError("vae resolutions", self.resolutions, S.RESOLUTIONS)
        for r in self.resolutions:
            S.check_resolution(r)
        if len(set(self.resolutions)) != len(self.resolutions):
            raise ConfigError("vae resolutions", self.resolutions, "each resolution once")
        if self.dtype not in COMPUTE_DTYPES:
            raise ConfigError("vae dtype", self.dtype, COMPUTE_DTYPES)
        if self.store_dtype not in STORE_DTYPES:
            raise ConfigError("vae store dtype", self.store_dtype, STORE_DTYPES)
        if self.resize not in RESIZE_MODES:
            raise ConfigError("--vae-resize", self.resize, RESIZE_MODES)
        if self.compile not in COMPILE_MODES:
            raise ConfigError("vae compile", self.compile, COMPILE_MODES)
        if self.attention not in ATTENTION_BACKENDS:
            raise ConfigError("vae attention", self.attention, ATTENTION_BACKENDS)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError("vae batch size", self.batch_size, "a positive integer")
        if self.batch_pixels is not None and self.batch_pixels < 64 * 64:
            raise ConfigError("vae batch pixels", self.batch_pixels, "an integer >= 4096, or None")
        if self.preprocess_threads < 0:
            raise ConfigError("vae preprocess threads", self.preprocess_threads, "0 or more")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError("vae device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:N'")

    @property
    def preset_info(self) -> VaePreset:
        return resolve_preset(self.preset)

    @property
    def model_id(self) -> str:
        return self.model or self.preset_info.model_id

    @property
    def drop_above(self) -> float:
        return self.max_ratio if self.max_ratio is not None else self.preset_info.max_ratio

    def images_per_batch(self, height: int, width: int) -> int:
        """Images of one bucket per forward pass: by pixels, so small buckets fill the GPU too."""
        budget = self.batch_pixels or self.batch_size * 1024 * 1024
        return max(1, min(MAX_BATCH_IMAGES, budget // max(1, height * width)))


@dataclass
class LatentResult:
    """One image encoded at one resolution.

    ``latent`` is ``(2·C, H/8, W/8)``: the posterior mean then the std, as a numpy array of the
    store dtype (float16/float32; for bfloat16 the raw bit patterns as uint16).
    """

    resolution: int
    latent: np.ndarray
    dtype: str
    bucket: B.Bucket
    crop: B.CropBox
    orig_size: tuple[int, int]  # (width, height)
    error: str | None = None  # why this image has no latent (non-finite values, out of memory)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def channels(self) -> int:
        return self.latent.shape[0] // 2

    def as_float32(self) -> np.ndarray:
        if self.dtype == "bfloat16":
            return S.bfloat16_bits_to_float32(self.latent)
        return self.latent.astype(np.float32)

    @property
    def mean(self) -> np.ndarray:
        return self.as_float32()[: self.channels]

    @property
    def std(self) -> np.ndarray:
        return self.as_float32()[self.channels :]

    def square_row(self) -> dict[str, Any]:
        """The ``vae_{R}_square*`` columns of the feature schema (for a square-crop result)."""
        return S.square_row(
            self.resolution,
            self.latent,
            crop=self.crop.as_list(),
            resized_hw=(self.crop.resized_h, self.crop.resized_w),
            dtype=self.dtype,
        )

    def row(self) -> dict[str, Any]:
        """The ``vae_{R}*`` columns of the feature schema."""
        return S.image_row(
            self.resolution,
            self.latent,
            bucket_hw=(self.bucket.height, self.bucket.width),
            ratio=self.bucket.ratio,
            crop=self.crop.as_list(),
            resized_hw=(self.crop.resized_h, self.crop.resized_w),
            dtype=self.dtype,
        )


# -- fused GroupNorm + SiLU in channels-last layout ------------------------------------------------
def group_norm_act(x: Any, weight: Any, bias: Any, num_groups: int, eps: float, act: bool) -> Any:
    """GroupNorm (float32 statistics) followed by SiLU when ``act``, keeping channels-last layout.

    Statistics are per-channel (a reduction over H·W, coalesced in NHWC) combined into groups
    exactly (equal counts per channel), so no float64 and no E[x²]−E[x]² cancellation. Eager on CPU
    this is a reference; ``torch.compile`` turns it into one reduction and one fused pointwise pass.
    """
    import torch

    b, c, h, w = x.shape
    g = num_groups
    xv = x.permute(0, 2, 3, 1).reshape(b, h * w, c).float()
    var_c, mean_c = torch.var_mean(xv, dim=1, correction=0)  # (B, C)
    mean_cg = mean_c.view(b, g, c // g)
    mean_g = mean_cg.mean(-1, keepdim=True)
    var_g = (var_c.view(b, g, c // g) + (mean_cg - mean_g) ** 2).mean(-1, keepdim=True)
    rstd = torch.rsqrt(var_g + eps)
    wg = weight.float().view(g, c // g)
    scale = (rstd * wg).reshape(b, 1, c)
    shift = (bias.float().view(g, c // g) - mean_g * rstd * wg).reshape(b, 1, c)
    y = xv * scale + shift
    if act:
        y = torch.nn.functional.silu(y)
    return y.to(x.dtype).reshape(b, h, w, c).permute(0, 3, 1, 2)


def _make_norm_act(norm: Any, act: bool, fn: Any) -> Any:
    import torch

    class GroupNormAct(torch.nn.Module):
        """``nn.GroupNorm`` (+ SiLU) computed by ``fn`` in channels-last layout."""

        def __init__(self) -> None:
            super().__init__()
            self.num_groups = norm.num_groups
            self.eps = norm.eps
            self.weight = norm.weight
            self.bias = norm.bias
            self.act = act

        def forward(self, x: Any) -> Any:
            return fn(x, self.weight, self.bias, self.num_groups, self.eps, self.act)

    return GroupNormAct()


def fuse_norms(encoder: Any, fn: Any = group_norm_act) -> int:
    """Replace each ResnetBlock2D's GroupNorm + SiLU pairs (and the encoder's final pair) by ``fn``.

    Only blocks of the plain form the SD/SDXL encoders use are touched (no time embedding, no
    resampling, SiLU); returns how many norms were replaced.
    """
    import torch
    from diffusers.models.resnet import ResnetBlock2D

    n = 0
    for module in encoder.modules():
        if not isinstance(module, ResnetBlock2D):
            continue
        plain = (
            module.time_emb_proj is None
            and module.upsample is None
            and module.downsample is None
            and module.time_embedding_norm == "default"
            and isinstance(module.nonlinearity, torch.nn.SiLU)
            and isinstance(module.norm1, torch.nn.GroupNorm)
            and isinstance(module.norm2, torch.nn.GroupNorm)
        )
        if not plain:
            continue
        # nonlinearity is applied right after norm1 and norm2 only (temb is None): fold it in.
        module.norm1 = _make_norm_act(module.norm1, True, fn)
        module.norm2 = _make_norm_act(module.norm2, True, fn)
        module.nonlinearity = torch.nn.Identity()
        n += 2
    if isinstance(getattr(encoder, "conv_norm_out", None), torch.nn.GroupNorm) and isinstance(
        getattr(encoder, "conv_act", None), torch.nn.SiLU
    ):
        encoder.conv_norm_out = _make_norm_act(encoder.conv_norm_out, True, fn)
        encoder.conv_act = torch.nn.Identity()
        n += 1
    return n


class GemmAttnProcessor:
    """The VAE's spatial self-attention as ``softmax(Q Kᵀ · scale) V`` with two batched GEMMs.

    Same mathematics as diffusers' ``AttnProcessor2_0`` (single-input self-attention, group norm,
    residual, rescale); the scale is applied inside the first GEMM (cuBLAS alpha) as SDPA scales
    ``Q``; probabilities are rounded to the compute dtype before the second GEMM, as flash kernels
    do. It materialises the (tokens x tokens) scores: 512 MiB per 1024-px image in bfloat16.
    """

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        temb: Any = None,
    ) -> Any:
        import torch

        unsupported = (encoder_hidden_states, attention_mask, attn.spatial_norm, attn.norm_q)
        if any(x is not None for x in unsupported):
            raise NotImplementedError("GemmAttnProcessor handles the VAE's plain self-attention only")
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        x = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        heads = attn.heads
        d = k.shape[-1] // heads

        def split(t: Any) -> Any:
            return t.view(b, -1, heads, d).transpose(1, 2).reshape(b * heads, -1, d)

        q, k, v = split(q), split(k), split(v)
        scores = torch.baddbmm(
            torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype, device=q.device),
            q,
            k.transpose(1, 2),
            beta=0.0,
            alpha=d**-0.5,
        )
        probs = scores.softmax(dim=-1)
        del scores
        out = torch.bmm(probs, v)
        out = out.view(b, heads, -1, d).transpose(1, 2).reshape(b, -1, heads * d)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def use_gemm_attention(encoder: Any) -> int:
    """Give every attention block of ``encoder`` the :class:`GemmAttnProcessor`; returns how many."""
    from diffusers.models.attention_processor import Attention

    n = 0
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.set_processor(GemmAttnProcessor())  # type: ignore[arg-type]
            n += 1
    return n


PADDED_INPUT_CHANNELS = 8


def pad_conv_in(encoder: Any, channels: int = PADDED_INPUT_CHANNELS) -> None:
    """Widen ``conv_in`` to ``channels`` inputs with zero weights for the extra ones.

    With zero-filled extra input channels the output is the same convolution; cuDNN has fast
    channels-last kernels for 8 input channels, not always for 3.
    """
    import torch

    old = encoder.conv_in
    new = torch.nn.Conv2d(
        channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
    ).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
    encoder.conv_in = new


# -- the encoder -----------------------------------------------------------------------------------
@dataclass
class _Prepared:
    index: int
    bucket: B.Bucket
    crop: B.CropBox
    orig_size: tuple[int, int]
    pixels: Future | np.ndarray = field(repr=False)


class ImageEncoder:
    """PixArt-ready VAE latents from PIL images. Cheap to build; :meth:`load` loads the model."""

    def __init__(self, config: VaeConfig | None = None) -> None:
        self.config = config or VaeConfig()
        self.vae: Any = None
        self.device: Any = None
        self.compute_dtype: Any = None
        self._moments_fn: Any = None
        self.compile_mode = ""
        self.channels_last = False
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.scale_factor: float | None = None  # the loaded VAE's own scaling_factor
        self.oom_splits = 0

    # -- loading ----------------------------------------------------------------------------------
    def load(self) -> ImageEncoder:
        """Load the VAE (``AutoencoderKL.from_pretrained``) and set up the fast path. Idempotent."""
        if self.vae is not None:
            return self
        import torch
        from diffusers import AutoencoderKL

        cfg = self.config
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("vae device", cfg.device, "'cpu' (no CUDA device is visible)")
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
        self.compute_dtype = getattr(torch, dtype)
        from recaption.hub import require_model

        require_model(
            cfg.model_id,
            "--vae-model",
            revision=cfg.revision,
            subfolder=cfg.subfolder,
            local_files_only=cfg.local_files_only,
        )
        # Pickled .bin/.pt weights can run code when loaded: refused, as the captioner and T5 do.
        kwargs: dict[str, Any] = {"local_files_only": cfg.local_files_only, "use_safetensors": True}
        if cfg.revision:
            kwargs["revision"] = cfg.revision
        if cfg.subfolder:
            kwargs["subfolder"] = cfg.subfolder
        try:
            vae = AutoencoderKL.from_pretrained(cfg.model_id, torch_dtype=self.compute_dtype, **kwargs)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(
                "--vae-model",
                cfg.model_id,
                "a Hugging Face hub id or a local folder holding an AutoencoderKL",
                hint=_load_hint(e, cfg.model_id, cfg.subfolder),
            ) from None
        if getattr(vae.config, "force_upcast", False) and self.compute_dtype == torch.float16:
            raise ConfigError(
                "vae dtype",
                cfg.dtype,
                ("bfloat16", "float32"),
                hint=f"{cfg.model_id} sets force_upcast: it overflows in float16 (diffusers upcasts it)",
            )
        self.scale_factor = float(getattr(vae.config, "scaling_factor", cfg.preset_info.scale_factor))
        if abs(self.scale_factor - cfg.preset_info.scale_factor) > 1e-6:
            log.warning(
                "VAE %s has scaling_factor %g, preset %r says %g: the model's is recorded",
                cfg.model_id,
                self.scale_factor,
                cfg.preset_info.name,
                cfg.preset_info.scale_factor,
            )
        want = cfg.preset_info.latent_channels
        got = int(vae.config.latent_channels)
        if got != want:
            raise ConfigError(
                "vae model",
                cfg.model_id,
                f"a VAE with {want} latent channels for preset {cfg.preset_info.name!r}",
                hint=f"this model has {got} latent channels",
            )
        vae.decoder = None  # never used here: frees its memory
        vae.post_quant_conv = None
        vae.eval().requires_grad_(False)
        if cfg.slicing:
            vae.enable_slicing()
        if cfg.tiling:
            vae.enable_tiling()
        vae.to(self.device)
        self.compile_mode = cfg.compile if cfg.compile != "auto" else ("full" if on_gpu else "none")
        self.channels_last = (
            cfg.channels_last if cfg.channels_last is not None else self.compile_mode != "none"
        )
        if self.channels_last:
            vae.to(memory_format=torch.channels_last)
        if on_gpu and cfg.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if cfg.attention == "gemm":
            use_gemm_attention(vae.encoder)
        if cfg.pad_input:
            pad_conv_in(vae.encoder)
            if self.channels_last:
                vae.encoder.conv_in.to(memory_format=torch.channels_last)
        if self.compile_mode == "norms" and self.channels_last:
            fn = torch.compile(group_norm_act, dynamic=True) if on_gpu else group_norm_act
            fuse_norms(vae.encoder, fn)
        self.vae = vae
        self._moments_fn = self._moments
        if self.compile_mode == "full":
            _raise_recompile_limit(torch)
            self._moments_fn = torch.compile(self._moments, dynamic=True)
        return self

    def _moments(self, x: Any) -> Any:
        vae = self.vae
        if vae.use_tiling or vae.use_slicing:
            return vae.encode(x).latent_dist.parameters
        h = vae.encoder(x)
        if vae.quant_conv is not None:
            h = vae.quant_conv(h)
        return h

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    @property
    def latent_channels(self) -> int:
        return self.config.preset_info.latent_channels

    def metadata(self) -> S.ImageMeta:
        """The ``image`` section of the feature-shard metadata for this configuration."""
        cfg = self.config
        return S.ImageMeta(
            model_id=cfg.model_id,
            revision=cfg.revision,
            latent_channels=self.latent_channels,
            scale_factor=self.scale_factor if self.scale_factor is not None else cfg.preset_info.scale_factor,
            dtype=cfg.store_dtype,
            resolutions=list(cfg.resolutions),
            multiscale=cfg.multiscale,
            vae_preset=cfg.preset_info.name,
            compute_dtype=str(self.compute_dtype).removeprefix("torch.") if self.compute_dtype else cfg.dtype,
            max_ratio=cfg.drop_above,
            square=cfg.square and cfg.multiscale,
            resize=cfg.resize,
        )

    # -- planning (no model needed) ----------------------------------------------------------------
    def check(self, width: int, height: int) -> str | None:
        """Why this image must be skipped (PixArt would drop it), or ``None``."""
        return B.drop_reason(height, width, self.config.drop_above, self.config.min_ratio)

    def plan(
        self, width: int, height: int, resolution: int, square: bool = False
    ) -> tuple[B.Bucket, B.CropBox]:
        """The bucket and crop box an image of this original size gets at ``resolution``
        (``square``: the single-scale centre crop, whatever the configuration)."""
        if self.config.multiscale and not square:
            bucket = B.closest_bucket(height, width, B.table_for(resolution))
            if self.config.resize == "stretch":
                return bucket, B.stretch_box(bucket)
            return bucket, B.crop_for_bucket(height, width, bucket)
        r = S.check_resolution(resolution)
        return B.Bucket(key="1.0", height=r, width=r), B.crop_for_square(height, width, r)

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The largest resized size (w, h) over the configured resolutions: the least a decoder
        must produce (e.g. ``draft_min_size`` of :func:`recaption.images.decode.decode_image`; JPEG
        draft mode changes pixels slightly, so leave it off for latents identical to PixArt's)."""
        sizes = [self.plan(width, height, r)[1] for r in self.config.resolutions]
        return max(c.resized_w for c in sizes), max(c.resized_h for c in sizes)

    def preprocess(
        self, image: Any, resolution: int, orig_size: tuple[int, int] | None = None, square: bool = False
    ) -> np.ndarray:
        """Resize and crop one PIL RGB image as PixArt's training does; ``(H, W, 3)`` uint8."""
        from PIL import Image

        w, h = orig_size if orig_size is not None else image.size
        _, box = self.plan(w, h, resolution, square)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if square or not self.config.multiscale:
            resample = Image.Resampling.BILINEAR
        elif resolution >= 2048:
            # PixArt-Σ's InternalDataMSSigma resizes with Lanczos for its 2048 (and 2880) tables
            resample = Image.Resampling.LANCZOS
        else:
            resample = Image.Resampling.BICUBIC
        out = B.apply_crop(image, box, resample)
        return np.asarray(out, dtype=np.uint8)

    def _executor(self) -> ThreadPoolExecutor | None:
        if self.config.preprocess_threads == 0:
            return None
        with self._lock:
            if self._pool is None:
                n = self.config.preprocess_threads
                self._pool = ThreadPoolExecutor(n, thread_name_prefix="vae-resize")
            return self._pool

    # -- encoding ----------------------------------------------------------------------------------
    def encode(
        self,
        images: Sequence[Any],
        resolution: int,
        orig_sizes: Sequence[tuple[int, int]] | None = None,
        square: bool = False,
    ) -> list[LatentResult]:
        """Encode PIL RGB images at one resolution; results in input order.

        ``square``: the single-scale centre crop (``R`` x ``R``) instead of the configured buckets.

        ``orig_sizes`` = each image's original (width, height) when it was decoded smaller (the
        bucket and crop are PixArt's, computed from the original size). An image that
        :meth:`check` rejects raises ``ValueError``: skip those first (and record why).
        """
        self.load()
        r = S.check_resolution(resolution)
        if r not in self.config.resolutions:
            raise ConfigError("resolution", r, self.config.resolutions)
        if orig_sizes is not None and len(orig_sizes) != len(images):
            raise ValueError(f"{len(images)} images but {len(orig_sizes)} original sizes")
        prepared = [
            self.prepare(img, r, orig_sizes[i] if orig_sizes is not None else img.size, square, index=i)
            for i, img in enumerate(images)
        ]
        groups: dict[str, list[_Prepared]] = {}
        for p in prepared:
            groups.setdefault(p.bucket.key, []).append(p)
        results: list[LatentResult | None] = [None] * len(images)
        for members in groups.values():
            bs = self.config.images_per_batch(members[0].bucket.height, members[0].bucket.width)
            for start in range(0, len(members), bs):
                chunk = members[start : start + bs]
                for p, res in zip(chunk, self.encode_prepared(chunk, r), strict=True):
                    results[p.index] = res
        return [x for x in results if x is not None]

    def prepare(
        self, image: Any, resolution: int, orig_size: tuple[int, int], square: bool = False, index: int = 0
    ) -> _Prepared:
        """Plan one image at one resolution and start its resize (in the preprocessing threads).

        The result goes to :meth:`encode_prepared` with others of the same bucket; ``index`` is the
        caller's tag. An image :meth:`check` rejects raises ``ValueError``.
        """
        w, h = orig_size
        reason = self.check(w, h)
        if reason is not None:
            raise ValueError(f"image {index} ({w}x{h}) cannot be encoded: {reason}")
        bucket, box = self.plan(w, h, resolution, square)
        pool = self._executor()
        pixels: Future | np.ndarray
        if pool is not None:
            pixels = pool.submit(self.preprocess, image, resolution, (w, h), square)
        else:
            pixels = self.preprocess(image, resolution, (w, h), square)
        return _Prepared(index, bucket, box, (w, h), pixels)

    def encode_prepared(self, chunk: Sequence[_Prepared], resolution: int) -> list[LatentResult]:
        """One forward pass (split in halves on out of memory) over prepared images of one bucket;
        results in ``chunk`` order (an image that could not be encoded has ``error`` set)."""
        chunk = list(chunk)
        arrays = [p.pixels.result() if isinstance(p.pixels, Future) else p.pixels for p in chunk]
        for p in chunk:
            p.pixels = np.empty(0, dtype=np.uint8)  # drop the reference early
        r = resolution
        store = self.config.store_dtype
        by_id: dict[int, LatentResult] = {}
        for part, out in self._encode_split(chunk, np.stack(arrays)):
            if isinstance(out, str):  # out of memory on a single image
                for p in part:
                    empty = np.empty(0, dtype=np.uint8)
                    by_id[id(p)] = LatentResult(r, empty, store, p.bucket, p.crop, p.orig_size, error=out)
                continue
            finite = _finite_rows(out)
            for p, lat, ok in zip(part, _to_numpy(out, store), finite, strict=True):
                error = (
                    None if ok else f"the VAE gave non-finite latent values at {r}px (NaN or inf): not stored"
                )
                by_id[id(p)] = LatentResult(r, lat, store, p.bucket, p.crop, p.orig_size, error=error)
        return [by_id[id(p)] for p in chunk]

    def _encode_split(self, chunk: list[_Prepared], pixels: np.ndarray) -> list[tuple[list[_Prepared], Any]]:
        """Encode one bucket batch; out of memory splits it in halves (one image alone: its reason)."""
        from recaption.captioner.model import is_oom

        try:
            return [(chunk, self.encode_arrays(pixels, to_cpu=False))]
        except Exception as e:
            if not is_oom(e):
                raise
            reason = f"{type(e).__name__}: {first_line(e)}"
        self._free_memory()
        if len(chunk) == 1:
            return [(chunk, f"out of memory on a single image (batch already split down to 1): {reason}")]
        self.oom_splits += 1
        mid = len(chunk) // 2
        return self._encode_split(chunk[:mid], pixels[:mid]) + self._encode_split(chunk[mid:], pixels[mid:])

    def _free_memory(self) -> None:
        import gc

        gc.collect()
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def encode_all(
        self, images: Sequence[Any], orig_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[dict[int, LatentResult]]:
        """Encode at every configured resolution: one ``{resolution: LatentResult}`` per image."""
        per_res = {r: self.encode(images, r, orig_sizes) for r in self.config.resolutions}
        return [{r: per_res[r][i] for r in self.config.resolutions} for i in range(len(images))]

    def encode_all_square(
        self, images: Sequence[Any], orig_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[dict[int, LatentResult]]:
        """The square latents of ``square=True`` (empty dicts otherwise, and when the buckets are
        already square): one ``{resolution: LatentResult}`` per image."""
        if not (self.config.square and self.config.multiscale):
            return [{} for _ in images]
        per_res = {r: self.encode(images, r, orig_sizes, square=True) for r in self.config.resolutions}
        return [{r: per_res[r][i] for r in self.config.resolutions} for i in range(len(images))]

    def encode_arrays(self, pixels: np.ndarray, to_cpu: bool = True) -> Any:
        """The GPU part: ``(B, H, W, 3)`` uint8 crops of one size → ``(B, 2C, H/8, W/8)`` mean ‖ std.

        Returns a tensor of the store dtype (on the CPU with ``to_cpu``, else where computed, so
        callers can queue more work before synchronising).
        """
        import torch

        self.load()
        cfg = self.config
        t = torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        # (B, H, W, 3) → (B, 3, H, W) is already channels-last in memory. Same float ops, in the
        # same order, as torchvision's ToTensor (x / 255) then Normalize(0.5, 0.5).
        x = t.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5).div_(0.5).to(self.compute_dtype)
        if cfg.pad_input:
            zeros = x.new_zeros(x.shape[0], PADDED_INPUT_CHANNELS - x.shape[1], *x.shape[2:])
            x = torch.cat([x, zeros], dim=1)
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()
        with torch.inference_mode(), _sdpa_backend(cfg.attention):
            moments = self._moments_fn(x)
        mean, logvar = moments.float().chunk(2, dim=1)
        # DiagonalGaussianDistribution's clamp, with the std computed in float32.
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        out = torch.cat([mean, std], dim=1).to(getattr(torch, cfg.store_dtype))
        return out.cpu() if to_cpu else out


def _load_hint(e: BaseException, model: str, subfolder: str | None) -> str:
    hint = f"cannot load it: {first_line(e)}"
    if "safetensors" in str(e).lower():
        where = f"{model}/{subfolder}" if subfolder else model
        hint += (
            f" (only safetensors weights are loaded: {where} has none; pickled .bin/.pt/.ckpt "
            "weights are refused because loading them can run code; convert them to safetensors)"
        )
    return hint


def _finite_rows(t: Any) -> list[bool]:
    """Per image of a batch: whether every value is finite."""
    import torch

    return torch.isfinite(t.float()).flatten(1).all(dim=1).tolist()


def _to_numpy(t: Any, store_dtype: str) -> np.ndarray:
    import torch

    t = t.detach().cpu().contiguous()
    if store_dtype == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _raise_recompile_limit(torch: Any) -> None:
    # 40 buckets x several resolutions are more shapes than dynamo's default limit of 8.
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(int(getattr(cfg, name)), 256))


class _sdpa_backend:
    """Context manager selecting the SDPA kernel of the attention block (``auto``: PyTorch's pick)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._ctx: Any = None

    def __enter__(self) -> None:
        if self.name in ("auto", "gemm"):
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {
            "math": SDPBackend.MATH,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
        }[self.name]
        self._ctx = sdpa_kernel([backend])
        self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
            self._ctx = None
