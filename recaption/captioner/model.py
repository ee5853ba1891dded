"""The captioning model: a chat-template vision-language model loaded with ``transformers``.

:class:`CaptionerConfig` is cheap, picklable configuration; :class:`Captioner` loads the model in
:meth:`Captioner.load` (on the worker) and turns PIL images plus prompt texts into
:class:`CaptionResult` s. It knows nothing of shards, stages or Ray.

What it guarantees:

- **Any image-text-to-text model** that ``AutoModelForImageTextToText`` loads (LLaVA-1.5,
  LLaVA-NeXT, ...), from a hub id or a local folder; safetensors only, remote code off unless
  asked. A model that does not exist, or is not a vision-language model, fails at once in
  :meth:`Captioner.load` with a :class:`~recaption.errors.ConfigError` naming it.
- **Explicit generation settings.** The checkpoint's ``generation_config.json`` is *not*
  inherited (some ship ``temperature``, ``top_k`` or a ``repetition_penalty``): every setting comes
  from :class:`CaptionerConfig`, and the checkpoint's values are kept in
  :attr:`Captioner.checkpoint_generation_config` for the record. Only its end-of-sequence ids are used.
- **Greedy by default; sampling reproducible per sample** (see :mod:`recaption.captioner.sampling`).
- **Batched, left-padded generation** through the processor's chat template.
- **Out-of-memory never loses a batch**: it is split in halves and retried, down to one image; a
  single image that still does not fit fails alone, with the reason. The size that fitted is kept
  for the batches after it (no wasted vision pass and prefill per batch, no recompilation).
- **A broken worker is not bad data.** An accelerator fault (illegal memory access, device-side
  assert, ECC error, any "CUDA error") or ``max_failed_batches`` failed batches in a row raise
  :class:`~recaption.errors.WorkerFault`: the shard is not committed and is retried elsewhere.
  Another generation error splits its batch like an out-of-memory error, so a sample that breaks
  generate fails alone; only failed single-image batches count towards ``max_failed_batches``.
  :meth:`Captioner.load` captions a probe image, so a model or processor that cannot generate fails
  at load naming the cause, not as a shard of error rows.
- **One prompt-length limit per worker** (:mod:`recaption.captioner.budget`): the worst case an
  image under ``max_image_pixels`` becomes for this model family, plus ``max_prompt_text_tokens``.
  The static cache and the automatic batch size are computed from that one number; a longer prompt
  fails alone with the reason.
- **LLaVA-1.5 sees the whole image**: padded to a square with the image mean, as the original
  LLaVA-1.5 (``image_aspect_ratio: pad``) and PixArt's captions did (``image_aspect="crop"``: the
  processor's centre crop).
- **What is reproducible**: greedy and seeded captions do not depend on the batch in float32 (a
  test pins it). In bfloat16/float16 a sample's logits move in the last bits with its batch-mates
  and padding (~2e-3), which can flip a near-tie: the same batch size on the same hardware and
  software gives identical captions; another batch size or card gives bf16-close ones.
- **Finish reason** ``"stop"`` (end of sequence) or ``"length"`` (hit ``max_new_tokens``: kept,
  flagged), and a **repetition flag** with a score.
"""

from __future__ import annotations

import gc
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from recaption.captioner.budget import round_cache_len
from recaption.captioner.repetition import detect_caption_repetition
from recaption.errors import ConfigError, WorkerFault, first_line
from recaption.prefetch import describe_error, prefetch_batches

if TYPE_CHECKING:
    from PIL import Image

    from recaption.images.decode import DecodedImage

T = TypeVar("T")

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
# PixArt's script allowed 1024 new tokens. LLaVA-1.5's dense captions end well before 512 (about
# 100-300 tokens); a caption that reaches 512 is almost always a loop, and PixArt-Σ reads at most
# 300 T5 tokens of it anyway. A lower cap also bounds the KV cache, so batches can be larger.
DEFAULT_MAX_NEW_TOKENS = 512
# Large images are shrunk to this many pixels before preprocessing: LLaVA-1.5 sees 336 px,
# LLaVA-NeXT at most 672x672 or 1344x336, so 1 MP loses nothing and saves the resize of a 10 MP photo.
DEFAULT_MAX_IMAGE_PIXELS = 1024 * 1024
CPU_BATCH_SIZE = 8
MAX_AUTO_BATCH_SIZE = 256

# Text tokens a prompt may take beyond its image tokens: the chat template and the instruction with a
# 300-character raw-caption hint in Latin script (~110 tokens) fit with room; a prompt over the
# worker's limit fails alone (raise it for long non-Latin hints: the cache and batch follow).
DEFAULT_MAX_PROMPT_TEXT_TOKENS = 192  # at least; see Captioner._longest_hint_tokens
# Failed batches in a row (not images: whole batches) after which the worker is taken as broken.
DEFAULT_MAX_FAILED_BATCHES = 3

DTYPES = ("auto", "bfloat16", "float16", "float32")
IMAGE_ASPECTS = ("auto", "pad", "crop")
# Substrings of accelerator errors after which the CUDA context is unusable (out of memory is not one).
ACCELERATOR_FAULTS = (
    "cuda error",
    "illegal memory access",
    "device-side assert",
    "ecc error",
    "uncorrectable ecc",
    "cublas_status_execution_failed",
    "cublas_status_internal_error",
    "cudnn_status_execution_failed",
    "misaligned address",
    "unspecified launch failure",
    "nccl error",
    "hip error",
    "acceleratorerror",
)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
CACHE_IMPLEMENTATIONS = ("auto", "dynamic", "static")

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ERROR = "error"
FINISH_REPETITION = "repetition"  # ended early in a long loop (LoopStopper), flagged as repetitive


@dataclass
class CaptionerConfig:
    """Everything that decides which model runs and how it generates. Cheap and picklable.

    ``dtype="auto"`` is :func:`auto_dtype` (the checkpoint's half dtype on CUDA, float32 on CPU).
    ``batch_size=0`` picks a batch size after loading, from free GPU memory and the KV cache a
    sequence needs (8 on CPU).
    ``cache="auto"`` is ``"static"`` on CUDA (a preallocated KV cache: ``"dynamic"`` re-copies the
    whole cache at every token) and ``"dynamic"`` on CPU. ``compile`` adds ``torch.compile`` with
    CUDA graphs on top of the static cache; it costs ~30 s of compilation per process and pads a
    short last batch to ``batch_size``. Measured with ``benchmarks/caption_gpu.py`` (LLaVA-1.5-7B
    architecture, 128 tokens per image, one H200): static cache 1.9x the dynamic one at batch 128;
    the automatic batch size (192 there) +9 %; compile +8-10 % on top, hence opt-in.
    ``min_new_tokens`` exists for benchmarks (fixed work per image); leave it at 0 for captions.

    ``image_aspect``: ``"pad"`` pads each image to a square with the processor's image mean first
    (LLaVA-1.5's own ``expand2square``); ``"crop"`` leaves it to the processor (LLaVA-1.5's llava-hf
    processor centre-crops, losing the sides); ``"auto"`` is ``"pad"`` for LLaVA-1.5 (model type
    ``llava``) and the processor's own handling for every other family, whose processors keep the
    whole image: resolved (and recorded per row) as ``"native"``, also when ``"crop"`` was asked.
    ``max_prompt_tokens`` (0: automatic) is the longest prompt this worker accepts, in tokens; the
    automatic value is the worst-case image tokens plus ``max_prompt_text_tokens``.
    ``gpu_share`` is this worker's fraction of its GPU (``gpus_per_worker`` < 1 shares a card).
    ``max_failed_batches`` failed batches in a row stop the shard (see :class:`Captioner`).
    ``stop_loops`` ends a row whose tokens end in a long loop (:class:`~recaption.captioner.
    repetition.LoopStopper`) instead of letting it, and its whole batch, run to ``max_new_tokens``.
    """

    model: str = DEFAULT_MODEL
    revision: str | None = None
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    device: str = "auto"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 0.2  # PixArt's value, used only when do_sample is True
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut (transformers would otherwise apply its default of 50)
    seed: int = 0
    batch_size: int = 0
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    cache: str = "auto"
    compile: bool = False
    image_aspect: str = "auto"
    max_prompt_tokens: int = 0
    max_prompt_text_tokens: int = DEFAULT_MAX_PROMPT_TEXT_TOKENS
    gpu_share: float = 1.0
    max_failed_batches: int = DEFAULT_MAX_FAILED_BATCHES
    stop_loops: bool = True
    probe: bool = True
    trust_remote_code: bool = False
    use_safetensors: bool = True
    local_files_only: bool = False
    prefetch_workers: int = 4
    prefetch_depth: int = 2
    # Family-specific image options (Qwen's min/max_pixels, Idefics3's longest_edge, ...): see
    # recaption.captioner.families; names checked here, values when the model's family is known.
    image_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first wrong option."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model", self.model, "a Hugging Face hub id or a local folder")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", self.dtype, DTYPES)
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        if self.cache not in CACHE_IMPLEMENTATIONS:
            raise ConfigError("cache", self.cache, CACHE_IMPLEMENTATIONS)
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError("device", dev, "'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens", self.max_new_tokens, "an integer >= 1")
        if not isinstance(self.min_new_tokens, int) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(
                "min_new_tokens",
                self.min_new_tokens,
                f"an integer from 0 to max_new_tokens ({self.max_new_tokens})",
            )
        if self.do_sample and not self.temperature > 0:
            raise ConfigError(
                "temperature", self.temperature, "a number > 0 (use do_sample=False for greedy)"
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", self.top_p, "a number in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError("top_k", self.top_k, "an integer >= 0 (0: off)")
        if not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise ConfigError("batch_size", self.batch_size, "an integer >= 1, or 0 for automatic")
        if self.max_image_pixels is not None and self.max_image_pixels < 64 * 64:
            raise ConfigError(
                "max_image_pixels", self.max_image_pixels, "an integer >= 4096, or None (no cap)"
            )
        if self.image_aspect not in IMAGE_ASPECTS:
            raise ConfigError("image_aspect", self.image_aspect, IMAGE_ASPECTS)
        if not isinstance(self.max_prompt_tokens, int) or self.max_prompt_tokens < 0:
            raise ConfigError(
                "max_prompt_tokens", self.max_prompt_tokens, "an integer >= 1, or 0 for automatic"
            )
        if not isinstance(self.max_prompt_text_tokens, int) or self.max_prompt_text_tokens < 1:
            raise ConfigError("max_prompt_text_tokens", self.max_prompt_text_tokens, "an integer >= 1")
        if not 0 < self.gpu_share <= 1:
            raise ConfigError("gpu_share", self.gpu_share, "a fraction of one GPU in (0, 1]")
        if not isinstance(self.max_failed_batches, int) or self.max_failed_batches < 1:
            raise ConfigError("max_failed_batches", self.max_failed_batches, "an integer >= 1")
        if self.prefetch_workers < 1:
            raise ConfigError("prefetch_workers", self.prefetch_workers, "an integer >= 1")
        if self.prefetch_depth < 1:
            raise ConfigError("prefetch_depth", self.prefetch_depth, "an integer >= 1")
        from recaption.captioner.families import check_option_names

        check_option_names(self.image_options)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CaptionResult:
    """One generated caption and what is known about how it ended.

    ``num_tokens`` counts the generated tokens, the end-of-sequence token included.
    ``finish_reason`` is ``"stop"`` (the model ended it), ``"length"`` (``max_new_tokens`` reached:
    the text is kept) or ``"error"`` (``error`` says why; ``text`` is empty).
    """

    text: str
    num_tokens: int
    finish_reason: str
    repetition: bool
    repetition_score: float
    model_id: str
    revision: str
    prompt: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class CaptionerStats:
    """Counters a stage can log."""

    images: int = 0
    failed: int = 0
    batches: int = 0
    oom_splits: int = 0
    failed_batches_in_a_row: int = 0
    generate_s: float = 0.0
    generated_tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)


def is_oom(e: BaseException) -> bool:
    """Whether an exception is an accelerator out-of-memory error."""
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "cublas_status_alloc_failed" in msg)


def is_accelerator_fault(e: BaseException) -> bool:
    """Whether an exception means the accelerator (its context) is broken, not the batch.

    After an illegal memory access, a device-side assert or an ECC error every later CUDA call
    fails too; such a worker must stop, not turn its remaining samples into error rows.
    """
    if is_oom(e):
        return False
    if type(e).__name__ in ("AcceleratorError", "CudaError"):
        return True
    msg = f"{type(e).__name__}: {e}".lower()
    return any(s in msg for s in ACCELERATOR_FAULTS)


def auto_dtype(checkpoint_dtype: str | None, device: str, bf16_supported: bool) -> str:
    """``dtype="auto"``: float32 on CPU; on an accelerator the checkpoint's own half dtype.

    A float16 checkpoint (llava-1.5-7b-hf ships one) stays float16; bfloat16 stays bfloat16 where
    the card supports it and becomes float16 where it does not; float32 or unknown becomes bfloat16
    (float16 where bfloat16 is unsupported): full precision does not fit the batch sizes wanted.
    """
    if not device.startswith(("cuda", "mps")):
        return "float32"
    half = str(checkpoint_dtype or "").replace("torch.", "")
    if half == "float16":
        return "float16"
    return "bfloat16" if bf16_supported else "float16"


def finish_sequences(
    new_ids: list[list[int]], eos_ids: Iterable[int], max_new_tokens: int
) -> list[tuple[list[int], int, str]]:
    """Cut generated ids at the first end-of-sequence token.

    Returns, per row, ``(ids before EOS, number of generated tokens with EOS, finish reason)``.
    Rows without EOS ran out of tokens: ``"length"`` (what generate pads after EOS is ignored).
    """
    eos = set(eos_ids)
    out = []
    for row in new_ids:
        for i, t in enumerate(row):
            if t in eos:
                out.append((row[:i], i + 1, FINISH_STOP))
                break
        else:
            out.append((list(row), len(row), FINISH_LENGTH))
    # A row shorter than max_new_tokens without EOS can only come from a model-level length cap.
    del max_new_tokens
    return out


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~"))
        or model.count("/") > 1
        or (os.sep != "/" and os.sep in model)
    )


def _snapshot_revision(path: Path) -> str:
    """The commit hash of a hub cache snapshot folder (``.../snapshots/<hash>``), else ``"local"``."""
    parts = path.resolve().parts
    if len(parts) >= 2 and parts[-2] == "snapshots" and len(parts[-1]) == 40:
        return parts[-1]
    return "local"


class Captioner:
    """Loads a vision-language model and captions batches of images.

    >>> cap = Captioner(CaptionerConfig(model="llava-hf/llava-1.5-7b-hf")).load()
    >>> results = cap.caption([image], ["Describe this image and its style in a very detailed manner"])
    """

    def __init__(self, config: CaptionerConfig | None = None) -> None:
        self.config = config or CaptionerConfig()
        self.model: Any = None
        self.processor: Any = None
        self.model_id = self.config.model
        self.revision = self.config.revision or ""
        self.device = ""
        self.batch_size = self.config.batch_size
        self.checkpoint_generation_config: dict[str, Any] = {}
        self.stats = CaptionerStats()
        self._eos_ids: list[int] = []
        self._pad_id: int | None = None
        self._tokenizer_lock = threading.Lock()
        self._chat_cache: dict[str, str] = {}
        self._min_side = 0
        self._stream_counter = itertools.count()
        self.image_aspect = ""  # resolved in _attach: "pad" or "crop"
        self._pad_color: tuple[int, int, int] = (0, 0, 0)
        self.max_prompt_tokens = 0  # resolved in _attach: the longest prompt this worker accepts
        self.max_cache_len = 0  # the static cache length, fixed per worker
        self._fault: str | None = None  # set once the accelerator is known broken
        self._loop_stopped: set[int] = set()  # rows of the last generate call ended in a loop
        self.vision_stats: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Ship configuration, not weights: a worker unpickles and calls load() itself.
        if self.loaded:
            raise TypeError("a loaded Captioner cannot be pickled; send its config and load() on the worker")
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]

    # ------------------------------------------------------------------ loading
    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> Captioner:
        """Load processor and model onto the configured device. Fails at once for a wrong model."""
        if self.loaded:
            return self
        from transformers import AutoConfig, AutoModelForImageTextToText

        from recaption.captioner.families import apply_image_options, load_processor

        cfg = self.config
        source = self._resolve_source()
        common = {
            "revision": cfg.revision,
            "trust_remote_code": cfg.trust_remote_code,
            "local_files_only": cfg.local_files_only,
        }
        try:
            hf_config = AutoConfig.from_pretrained(source, **common)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(
                "model",
                cfg.model,
                "a Hugging Face hub id or a local folder holding a vision-language model",
                hint=f"cannot load its configuration: {first_line(e)}",
            ) from None
        self._check_vlm(hf_config)
        try:
            # The family's loader where it has one (Qwen without torchvision), else AutoProcessor.
            processor = load_processor(getattr(hf_config, "model_type", ""), source, **common)
        except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
            raise ConfigError(
                "model",
                cfg.model,
                "a model folder with a processor",
                hint=f"cannot load its processor: {first_line(e)}",
            ) from None
        apply_image_options(getattr(hf_config, "model_type", ""), processor, cfg.image_options)
        device = cfg.resolved_device()
        dtype = self._torch_dtype(device, hf_config)
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                source,
                dtype=dtype,
                attn_implementation=cfg.attn_implementation,
                use_safetensors=cfg.use_safetensors,
                device_map={"": device},
                **common,
            )
        except (OSError, ValueError) as e:
            hint = f"cannot load its weights: {first_line(e)}"
            if cfg.use_safetensors and "safetensors" in str(e).lower():
                hint += " (only safetensors weights are loaded; pickled .bin weights are refused)"
            raise ConfigError(
                "model", cfg.model, "a vision-language model with safetensors weights", hint=hint
            ) from None
        revision = getattr(hf_config, "_commit_hash", None) or cfg.revision
        if not revision and Path(source).is_dir():
            revision = _snapshot_revision(Path(source))
        self._attach(model.eval(), processor, model_id=cfg.model, revision=revision or "")
        if cfg.probe:
            self._probe()
        return self

    def _probe(self) -> None:
        """Caption one blank image: a model or processor that cannot generate fails here, named."""
        from PIL import Image

        try:
            inputs = self.prepare([Image.new("RGB", (64, 48), (127, 127, 127))], ["Describe this image."])
            ids = self._generate_ids(inputs, [0], max_new_tokens=2)
        except Exception as e:
            self.unload()
            if is_accelerator_fault(e) or is_oom(e):
                raise WorkerFault(f"the accelerator failed on a probe caption: {describe_error(e)}") from e
            raise ConfigError(
                "model",
                self.config.model,
                "a vision-language model whose processor and weights work together",
                hint=f"captioning a blank probe image failed: {describe_error(e)}",
            ) from None
        if self.vision_stats is not None:  # the probe is not one of the images captioned
            self.vision_stats.images = self.vision_stats.encoded = 0
        if not ids or len(ids[0]) < 1:
            self.unload()
            raise ConfigError(
                "model",
                self.config.model,
                "a model that generates text",
                hint="a probe caption gave no tokens",
            )

    @classmethod
    def from_model(
        cls,
        model: Any,
        processor: Any,
        config: CaptionerConfig | None = None,
        *,
        model_id: str = "",
        revision: str = "",
    ) -> Captioner:
        """Wrap a model and processor already in memory (benchmarks build random-weight models this way)."""
        cap = cls(config)
        cap._attach(model.eval(), processor, model_id=model_id or cap.config.model, revision=revision)
        return cap

    def _resolve_source(self) -> str:
        model = self.config.model
        path = Path(model).expanduser()
        if path.is_dir():
            return str(path)
        if path.exists():
            raise ConfigError(
                "model", model, "a Hugging Face hub id or a model folder", hint="that path is a file"
            )
        if _looks_like_path(model):
            raise ConfigError(
                "model", model, "a Hugging Face hub id or a local folder", hint="no such folder"
            )
        from recaption.hub import require_model

        require_model(
            model, "model", revision=self.config.revision, local_files_only=self.config.local_files_only
        )
        return model

    def _check_vlm(self, hf_config: Any) -> None:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        model_type = getattr(hf_config, "model_type", "")
        if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            return
        auto_map = getattr(hf_config, "auto_map", None) or {}
        if self.config.trust_remote_code and any(
            k in auto_map for k in ("AutoModelForImageTextToText", "AutoModelForVision2Seq")
        ):
            return
        arch = ", ".join(getattr(hf_config, "architectures", None) or []) or "unknown architecture"
        raise ConfigError(
            "model",
            self.config.model,
            "a vision-language model that transformers' AutoModelForImageTextToText loads "
            "(e.g. llava, llava_next, qwen2_vl, idefics3, ...)",
            hint=f"it is a {model_type!r} model ({arch}), not a vision-language model",
        )

    def _torch_dtype(self, device: str, hf_config: Any = None) -> Any:
        import torch

        name = self.config.dtype
        if name == "auto":
            ckpt = None
            for c in (hf_config, _text_config(hf_config)):
                ckpt = ckpt or getattr(c, "dtype", None) or getattr(c, "torch_dtype", None)
            bf16 = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            name = auto_dtype(str(ckpt) if ckpt is not None else None, device, bf16)
        return getattr(torch, name)

    def _attach(self, model: Any, processor: Any, *, model_id: str, revision: str) -> None:
        """Check the processor, fix padding, replace the checkpoint's generation defaults, size batches."""
        tokenizer = getattr(processor, "tokenizer", None)
        image_processor = getattr(processor, "image_processor", None)
        missing = [
            name
            for name, part in (("tokenizer", tokenizer), ("image processor", image_processor))
            if part is None
        ]
        chat_template = getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
        if not chat_template:
            missing.append("chat template")
        if missing:
            raise ConfigError(
                "model",
                self.config.model,
                "a vision-language model whose processor has a tokenizer, an image processor "
                "and a chat template",
                hint=f"its processor ({type(processor).__name__}) lacks: {', '.join(missing)}",
            )
        assert tokenizer is not None  # checked above
        tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
        from transformers import GenerationConfig

        hub_gc = getattr(model, "generation_config", None)
        self.checkpoint_generation_config = hub_gc.to_diff_dict() if hub_gc is not None else {}
        eos: list[int] = []
        for source in (getattr(hub_gc, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
            for t in source if isinstance(source, list | tuple) else [source]:
                if t is not None and int(t) not in eos:
                    eos.append(int(t))
        if not eos:
            raise ConfigError(
                "model", self.config.model, "a model with an end-of-sequence token", hint="none is defined"
            )
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(hub_gc, "pad_token_id", None)
        if pad is None:
            pad = eos[0]
            tokenizer.pad_token_id = pad
        self._eos_ids, self._pad_id = eos, int(pad)
        # Only the token ids survive from the checkpoint's generation config; see the module docstring.
        model.generation_config = GenerationConfig(
            eos_token_id=eos, pad_token_id=self._pad_id, bos_token_id=getattr(hub_gc, "bos_token_id", None)
        )
        self.model, self.processor = model, processor
        self.model_id, self.revision = model_id, revision
        from recaption.captioner.families import share_image_features

        # neighbouring rows with the same image (several prompts per image) share its vision features
        self.vision_stats = share_image_features(getattr(model.config, "model_type", ""), model)
        self.device = str(next(model.parameters()).device)
        self._min_side = _min_side_needed(image_processor)
        self._resolve_image_aspect(getattr(model.config, "model_type", ""), image_processor)
        self.max_prompt_tokens = self.config.max_prompt_tokens or self.estimate_prompt_tokens()
        self.max_cache_len = round_cache_len(self.max_prompt_tokens + self.config.max_new_tokens)
        if self.batch_size <= 0:
            self.batch_size = self._auto_batch_size()

    def _resolve_image_aspect(self, model_type: str, image_processor: Any) -> None:
        aspect = self.config.image_aspect
        if aspect == "auto":
            # LLaVA-1.5 was trained (and PixArt captioned) on images padded to a square; other
            # families have their own any-resolution handling.
            aspect = "pad" if model_type == "llava" else "native"
        elif aspect == "crop" and model_type != "llava":
            # only LLaVA-1.5's processor centre-crops; the others (LLaVA-NeXT's tiles and resized
            # base image, Qwen2-VL's own resolution, Idefics3's tiles and global view) keep the
            # whole image, so the row must not claim a crop that never happened
            aspect = "native"
        self.image_aspect = aspect
        mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        if isinstance(mean, int | float):
            mean = (mean,) * 3
        # LLaVA's expand2square: background = tuple(int(x * 255) for x in image_processor.image_mean)
        self._pad_color = tuple(int(float(x) * 255) for x in list(mean)[:3])  # type: ignore[assignment]

    # ------------------------------------------------------------------ sizing
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes in the language model."""
        text = self.model.config.get_text_config(decoder=True)
        heads = getattr(text, "num_attention_heads", 1)
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return 2 * text.num_hidden_layers * kv_heads * head_dim * self.model.dtype.itemsize

    def estimate_prompt_tokens(self) -> int:
        """The longest prompt this worker accepts: worst-case image tokens + the text allowance.

        The image part is computed from the processor's published settings at ``max_image_pixels``
        (:mod:`recaption.captioner.budget`); the template's own tokens are measured on a small probe.
        A processor of no known family is measured on images of every aspect ratio at the cap.
        """
        from PIL import Image

        from recaption.captioner.budget import (
            candidate_sizes,
            image_tokens,
            settings_from_processor,
            worst_case_image_tokens,
        )

        text = max(self.config.max_prompt_text_tokens, self._longest_hint_tokens())
        settings = settings_from_processor(self.processor)
        probe = (48, 64)  # (height, width)
        try:
            base = self._prompt_length(Image.new("RGB", probe[::-1], (127, 127, 127)))
        except Exception:
            base = 0
        if settings is not None and base:
            template = max(0, base - image_tokens(settings, *probe))
            return worst_case_image_tokens(settings, self.config.max_image_pixels) + template + text
        # Unknown family: measure (slow, but once per worker).
        lengths = [base]
        for h, w in candidate_sizes(self.config.max_image_pixels)[::8]:
            try:
                lengths.append(self._prompt_length(Image.new("RGB", (w, h), (127, 127, 127))))
            except Exception:  # a processor that refuses an aspect ratio: the others decide
                continue
        return (max(lengths) or 1024) + text

    def _longest_hint_tokens(self) -> int:
        """Tokens of the LAION prompt with the longest raw-caption hint it keeps, in unfamiliar words.

        So every Latin-script hint fits whatever the tokenizer (a small-vocabulary one spends more
        tokens per character); longer non-Latin hints can still exceed the limit and fail alone.
        """
        import random

        from recaption.captioner.prompts import DEFAULT_MAX_HINT_CHARS, LAION_PROMPT

        rng = random.Random(0)
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < DEFAULT_MAX_HINT_CHARS:
            words.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))))
        hint = " ".join(words)[:DEFAULT_MAX_HINT_CHARS]
        text = self.chat_text(LAION_PROMPT.format(raw_caption=hint))  # takes the lock itself
        with self._tokenizer_lock:
            ids = self.processor.tokenizer(text)["input_ids"]
        return len(ids)

    def _prompt_length(self, image: Image.Image) -> int:
        inputs = self.prepare([image], [""])
        return int(inputs["input_ids"].shape[1])

    def _auto_batch_size(self) -> int:
        if not self.device.startswith("cuda"):
            return CPU_BATCH_SIZE
        import torch

        from recaption.captioner.budget import batch_for_memory, share_of_free_memory

        free, total = torch.cuda.mem_get_info(torch.device(self.device))
        free = share_of_free_memory(free, total, self.config.gpu_share)
        text = self.model.config.get_text_config(decoder=True)
        # A dynamic cache grows to the prompt + new tokens; the static one is allocated at max_cache_len.
        cache_len = (
            self.max_cache_len
            if self.cache_implementation == "static"
            else self.max_prompt_tokens + self.config.max_new_tokens
        )
        return batch_for_memory(
            free * 0.9 - 2 * 1024**3,
            self.kv_bytes_per_token(),
            cache_len,
            self.max_prompt_tokens,
            text.hidden_size,
            getattr(text, "intermediate_size", 4 * text.hidden_size),
            self.model.dtype.itemsize,
            MAX_AUTO_BATCH_SIZE,
        )

    # ------------------------------------------------------------------ preparing (CPU, thread-safe)
    def chat_text(self, prompt: str) -> str:
        """The full model input text for one instruction: the processor's chat template, image first."""
        text = self._chat_cache.get(prompt)
        if text is None:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            with self._tokenizer_lock:
                text = self.processor.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            if len(self._chat_cache) < 4096:
                self._chat_cache[prompt] = text
        return text

    def cap_image(self, image: Image.Image) -> Image.Image:
        """RGB, shrunk to ``max_image_pixels`` (never enlarged)."""
        from recaption.images.decode import resize_max_pixels

        if image.mode != "RGB":
            image = image.convert("RGB")
        return resize_max_pixels(image, self.config.max_image_pixels)

    def model_image(self, image: Image.Image) -> Image.Image:
        """The image the processor gets: capped, and padded to a square where ``image_aspect`` is pad.

        The padded square is capped again, so the pixel cap (and the prompt-length worst case
        computed from it) holds for every family.
        """
        image = self.cap_image(image)
        if self.image_aspect == "pad" and image.width != image.height:
            image = self.cap_image(expand2square(image, self._pad_color))
        return image

    def decode(self, data: bytes) -> DecodedImage:
        """Decode image bytes for this model: JPEG draft mode down to what the processor needs, then the cap.

        Raises :class:`recaption.images.decode.DecodeError` with a reason for unusable bytes.
        """
        from recaption.images.decode import decode_image, probe_image

        draft = None
        if self._min_side > 0:
            info = probe_image(data, max_pixels=None)
            scale = self._min_side / max(1, min(info.width, info.height))
            if scale < 1:
                draft = (info.width * scale, info.height * scale)
        decoded = decode_image(data, draft_min_size=draft)  # type: ignore[arg-type]
        decoded.image = self.cap_image(decoded.image)
        return decoded

    def prepare(self, images: list[Image.Image], prompts: list[str]) -> Any:
        """Processor outputs (CPU tensors; pinned when the model is on CUDA) for one batch."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        texts = [self.chat_text(p) for p in prompts]
        capped = [self.model_image(im) for im in images]
        with self._tokenizer_lock:
            inputs = self.processor(images=capped, text=texts, return_tensors="pt", padding=True)
        if self.device.startswith("cuda"):
            for k, v in list(inputs.items()):
                if hasattr(v, "pin_memory"):
                    inputs[k] = v.pin_memory()
        return inputs

    # ------------------------------------------------------------------ generating
    def generation_config(self, input_length: int, max_new_tokens: int | None = None) -> Any:
        """The explicit generation settings for one batch (nothing inherited from the checkpoint)."""
        from transformers import CompileConfig, GenerationConfig

        cfg = self.config
        new_tokens = max_new_tokens or cfg.max_new_tokens
        gc_ = GenerationConfig(
            max_new_tokens=new_tokens,
            min_new_tokens=min(cfg.min_new_tokens, new_tokens) or None,
            do_sample=False,  # sampling, when asked, is SeededSampler on top of greedy
            num_beams=1,
            num_return_sequences=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            use_cache=True,
            eos_token_id=self._eos_ids,
            pad_token_id=self._pad_id,
            return_dict_in_generate=False,
        )
        if self.cache_implementation == "static":
            gc_.cache_implementation = "static"
            # One cache length for the worker's life, from the longest prompt it accepts: no
            # reallocation, no recompilation, and the batch budget counted exactly this length.
            gc_.max_cache_len = max(self.max_cache_len, round_cache_len(input_length + new_tokens))
            if cfg.compile and max_new_tokens is None:  # (the probe in load() is not worth a compile)
                gc_.compile_config = CompileConfig(fullgraph=False, mode="reduce-overhead", dynamic=False)
                if not self.device.startswith("cuda"):
                    gc_.compile_config._compile_all_devices = True
            else:
                gc_.disable_compile = True
        return gc_

    @property
    def cache_implementation(self) -> str:
        if self.config.cache != "auto":
            return self.config.cache
        return "static" if self.device.startswith("cuda") else "dynamic"

    def _generate_ids(
        self, inputs: Any, seeds: list[int], max_new_tokens: int | None = None
    ) -> list[list[int]]:
        """Run ``generate`` on prepared inputs; the new token ids per row (host lists)."""
        import torch
        from transformers import LogitsProcessorList

        cfg = self.config
        length = int(inputs["input_ids"].shape[1])
        processors = None
        if cfg.do_sample:
            from recaption.captioner.sampling import SeededSampler

            processors = LogitsProcessorList(
                [SeededSampler(seeds, length, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)]
            )
        stopping = None
        self._loop_stopped = set()
        stopper = None
        if cfg.stop_loops and max_new_tokens is None:
            from transformers import StoppingCriteriaList

            from recaption.captioner.repetition import LoopStopper

            stopper = LoopStopper(length, finished_ids=self._eos_ids)
            stopping = StoppingCriteriaList([stopper])
        with torch.inference_mode():
            # A new dict: BatchFeature.to() would move the caller's tensors in place, and a batch kept
            # for an out-of-memory retry must not pin GPU memory. Float inputs take the model's dtype.
            on_device = {
                k: (
                    v.to(self.device, dtype=self.model.dtype, non_blocking=True)
                    if torch.is_floating_point(v)
                    else v.to(self.device, non_blocking=True)
                )
                if isinstance(v, torch.Tensor)
                else v
                for k, v in inputs.items()
            }
            out = self.model.generate(
                **on_device,
                generation_config=self.generation_config(length, max_new_tokens),
                logits_processor=processors,
                stopping_criteria=stopping,
            )
            new = out[:, length:].to("cpu")
        if stopper is not None:
            self._loop_stopped = set(stopper.stopped)
        return new.tolist()

    def caption(
        self, images: list[Image.Image], prompts: list[str], keys: list[str] | None = None
    ) -> list[CaptionResult]:
        """Caption images (any number: batched by ``batch_size``). One result per image, in order.

        ``keys`` (sample keys) make sampling reproducible per sample; they default to positions.
        """
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if keys is not None and len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        self._require_loaded()
        keys = keys if keys is not None else [str(i) for i in range(len(images))]
        results: list[CaptionResult] = []
        start = 0
        while start < len(images):  # batch_size may drop after an out-of-memory split
            stop = start + self.batch_size
            results.extend(self._caption_batch(images[start:stop], prompts[start:stop], keys[start:stop]))
            start = stop
        return results

    def caption_stream(
        self,
        items: Iterable[T],
        load_item: Callable[[T], tuple[Image.Image, str]],
        *,
        key: Callable[[T], str] | None = None,
    ) -> Iterator[tuple[T, CaptionResult]]:
        """Caption a stream, preparing the next batch on CPU threads while the current one generates.

        ``load_item(item)`` returns ``(image, prompt)``; it runs on worker threads (decode there,
        e.g. with :meth:`decode`). An item whose ``load_item`` raises gets an error result; the
        others go on. Yields ``(item, result)`` in input order.
        """
        self._require_loaded()

        def prepare_item(item: T) -> tuple[Image.Image, str]:
            image, prompt = load_item(item)
            return self.cap_image(image), prompt

        def collate(values: list[tuple[Image.Image, str]]) -> Any:
            return self.prepare([v[0] for v in values], [v[1] for v in values])

        batches = prefetch_batches(
            items,
            prepare_item,
            self.batch_size,
            collate=collate,
            workers=self.config.prefetch_workers,
            depth=self.config.prefetch_depth,
        )
        for batch in batches:
            keys = [key(it) if key else str(next(self._stream_counter)) for it in batch.items]
            results: list[CaptionResult | None] = [None] * len(batch.items)
            for i, err in enumerate(batch.errors):
                if err is not None:
                    results[i] = self._error_result(f"cannot load the image: {err}", "")
                    self.stats.failed += 1
                    self.stats.images += 1
            ok = batch.ok_positions
            if ok:
                values = [batch.values[i] for i in ok]
                outs = self._caption_batch(
                    [v[0] for v in values],  # type: ignore[index]
                    [v[1] for v in values],  # type: ignore[index]
                    [keys[i] for i in ok],
                    prepared=batch.collated if batch.collate_error is None else None,
                )
                for i, r in zip(ok, outs, strict=True):
                    results[i] = r
            for item, res in zip(batch.items, results, strict=True):
                assert res is not None
                yield item, res

    def _caption_batch(
        self, images: list[Image.Image], prompts: list[str], keys: list[str], prepared: Any = None
    ) -> list[CaptionResult]:
        n = len(images)
        if n > self.batch_size:
            # The batch size dropped after an out-of-memory split (batches prepared before it are
            # larger): run them at the size that fitted instead of running out of memory again.
            out: list[CaptionResult] = []
            for i in range(0, n, self.batch_size):
                j = i + self.batch_size
                out.extend(self._caption_batch(images[i:j], prompts[i:j], keys[i:j]))
            return out
        if self.config.compile and 0 < n < self.batch_size:
            # A compiled decode step (CUDA graphs) is specialised to the batch size: a short last
            # batch would recompile (~30 s for a 7B model) for every new size. Padding it with copies
            # of its last sample costs a fraction of one batch instead; the copies' results are dropped.
            pad = self.batch_size - n
            images = images + [images[-1]] * pad
            prompts = prompts + [prompts[-1]] * pad
            keys = keys + [f"{keys[-1]}\x00pad{i}" for i in range(pad)]
            prepared = None
        results = self._run_split(images, prompts, keys, prepared)[:n]
        self.stats.images += len(results)
        self.stats.failed += sum(1 for r in results if not r.ok)
        return results

    def _run_split(
        self, images: list[Image.Image], prompts: list[str], keys: list[str], prepared: Any = None
    ) -> list[CaptionResult]:
        """Generate for a batch; on out-of-memory, a preparation error or a generation error (not an
        accelerator fault) split it in halves and retry, down to the single image that fails."""
        from recaption.captioner.sampling import row_seed

        if self._fault is not None:
            raise WorkerFault(self._fault)
        n = len(images)
        failure: str | None = None
        split_reason = ""
        try:
            inputs = prepared if prepared is not None else self.prepare(images, prompts)
        except Exception as e:  # one bad image must not fail the others: isolate it by splitting
            failure, split_reason = describe_error(e), "prepare"
        if failure is None:
            too_long = self._over_limit(inputs)
            if too_long:
                return self._without_long_prompts(images, prompts, keys, too_long)
            seeds = [row_seed(self.config.seed, k) for k in keys]
            t0 = time.perf_counter()
            try:
                new_ids = self._generate_ids(inputs, seeds)
            except Exception as e:
                if not is_oom(e):
                    if n == 1 or is_accelerator_fault(e):
                        return self._failed_batch(e, prompts)
                    # One sample can break generate for its whole batch: split to isolate it, so
                    # its batch-mates get captions, not its error. A broken model still fails every
                    # single-image batch, and those count towards max_failed_batches.
                    failure, split_reason = describe_error(e), "error"
                else:
                    failure, split_reason = describe_error(e), "oom"
            else:
                self.stats.generate_s += time.perf_counter() - t0
                self.stats.batches += 1
                self.stats.batch_sizes.append(n)
                self.stats.failed_batches_in_a_row = 0
                return self._results(new_ids, prompts, stopped=self._loop_stopped)
        # Reached only after a failure; the exception (and the tensors its frames hold) is gone now.
        inputs = prepared = None
        if split_reason == "oom":
            self._free_memory()
        if n == 1:
            if split_reason == "oom":
                reason = f"out of memory on a single image (batch already split down to 1): {failure}"
            else:
                reason = f"cannot prepare the image: {failure}"
            return [self._error_result(reason, prompts[0])]
        if split_reason == "oom":
            self.stats.oom_splits += 1
            # Keep the size that fits for the batches after this one (see _caption_batch).
            self.batch_size = min(self.batch_size, max(1, -(-n // 2)))
        mid = n // 2
        return self._run_split(images[:mid], prompts[:mid], keys[:mid]) + self._run_split(
            images[mid:], prompts[mid:], keys[mid:]
        )

    def _failed_batch(self, e: Exception, prompts: list[str]) -> list[CaptionResult]:
        """A batch that raised (not out of memory): error rows, unless the worker itself is broken."""
        reason = f"generation failed: {describe_error(e)}"
        if is_accelerator_fault(e):
            # The CUDA context is gone: every later batch would fail too. Stop the shard.
            self._fault = f"accelerator fault, the worker cannot go on: {describe_error(e)}"
            raise WorkerFault(self._fault) from e
        self.stats.failed_batches_in_a_row += 1
        if self.stats.failed_batches_in_a_row >= self.config.max_failed_batches:
            self._fault = (
                f"{self.stats.failed_batches_in_a_row} batches in a row failed "
                f"(max_failed_batches); last: {reason}"
            )
            raise WorkerFault(self._fault) from e
        return [self._error_result(reason, p) for p in prompts]

    def _over_limit(self, inputs: Any) -> list[int]:
        """Rows whose prompt is longer than this worker's limit (``max_prompt_tokens``)."""
        if not self.max_prompt_tokens:
            return []
        mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
        if mask is None:
            length = int(inputs["input_ids"].shape[1])
            return list(range(int(inputs["input_ids"].shape[0]))) if length > self.max_prompt_tokens else []
        lengths = mask.sum(dim=1).tolist()
        return [i for i, n in enumerate(lengths) if int(n) > self.max_prompt_tokens]

    def _without_long_prompts(
        self, images: list[Image.Image], prompts: list[str], keys: list[str], too_long: list[int]
    ) -> list[CaptionResult]:
        """Fail the over-long prompts alone, with the reason; caption the others."""
        long = set(too_long)
        keep = [i for i in range(len(images)) if i not in long]
        done = (
            self._run_split([images[i] for i in keep], [prompts[i] for i in keep], [keys[i] for i in keep])
            if keep
            else []
        )
        results: list[CaptionResult] = []
        it = iter(done)
        for i, p in enumerate(prompts):
            if i in long:
                reason = (
                    f"prompt too long: more than this worker's limit of {self.max_prompt_tokens} tokens "
                    "(the static cache and batch size are sized from it): raise --max-prompt-text-tokens "
                    "(caption.max_prompt_text_tokens), or shorten the raw-caption hint"
                )
                results.append(self._error_result(reason, p))
            else:
                results.append(next(it))
        return results

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _results(
        self, new_ids: list[list[int]], prompts: list[str], stopped: set[int] | frozenset[int] = frozenset()
    ) -> list[CaptionResult]:
        finished = finish_sequences(new_ids, self._eos_ids, self.config.max_new_tokens)
        for i in stopped:
            # Ended by the loop stopper, not by EOS (the stopper skips rows that have one): what
            # follows is padding (cut at the first pad already where the pad token is EOS).
            ids = finished[i][0]
            while ids and ids[-1] == self._pad_id:
                ids = ids[:-1]
            finished[i] = (ids, len(ids), FINISH_REPETITION)
        with self._tokenizer_lock:
            texts = self.processor.tokenizer.batch_decode([f[0] for f in finished], skip_special_tokens=True)
        out = []
        for (ids, count, reason), raw_text, prompt in zip(finished, texts, prompts, strict=True):
            text = raw_text.strip()
            rep = detect_caption_repetition(text, ids)
            self.stats.generated_tokens += count
            out.append(
                CaptionResult(
                    text=text,
                    num_tokens=count,
                    finish_reason=reason,
                    repetition=rep.repetitive,
                    repetition_score=rep.score,
                    model_id=self.model_id,
                    revision=self.revision,
                    prompt=prompt,
                )
            )
        return out

    def _error_result(self, reason: str, prompt: str) -> CaptionResult:
        return CaptionResult(
            text="",
            num_tokens=0,
            finish_reason=FINISH_ERROR,
            repetition=False,
            repetition_score=0.0,
            model_id=self.model_id,
            revision=self.revision,
            prompt=prompt,
            error=reason,
        )

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise RuntimeError("Captioner.load() must be called before captioning")

    def unload(self) -> None:
        """Drop the model and free accelerator memory."""
        self.model = None
        self.processor = None
        self._free_memory()


def expand2square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """LLaVA's ``expand2square``: the image centred on a square of ``color`` (its long side)."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), color)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def _text_config(hf_config: Any) -> Any:
    get = getattr(hf_config, "get_text_config", None)
    try:
        return get(decoder=True) if get is not None else None
    except Exception:  # a config without a text part
        return None


def _min_side_needed(image_processor: Any) -> int:
    """The shorter side an input must keep for the image processor to lose nothing (0: unknown)."""
    sides: list[int] = []
    for attr in ("size", "crop_size"):
        value = getattr(image_processor, attr, None)
        if isinstance(value, int):
            sides.append(value)
            continue
        for k in ("shortest_edge", "height", "width"):
            # a dict in older processors, a SizeDict (attributes and keys) in newer ones
            v = value.get(k) if isinstance(value, Mapping) else getattr(value, k, None)
            if isinstance(v, int) and v > 0:
                sides.append(v)
    pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
    if pinpoints:
        sides.append(max(max(int(a), int(b)) for a, b in pinpoints))
    return max(sides, default=0)
