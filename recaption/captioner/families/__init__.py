"""Model families the captioner runs: one module per family, its knowledge kept there.

Each family module defines ``NAME`` (the folder name under ``recaption tiny-models DIR``),
``MODEL_TYPES`` (the ``model_type`` values of its checkpoints' ``config.json``), ``HUB_IDS`` (real
checkpoints), ``OPTIONS`` (its own image options and what each accepts), ``apply_options``
(set them on a loaded processor, validating values), ``build_tiny`` (a tiny random-weight model
saved like a hub checkpoint) and, where ``AutoProcessor`` is not enough, ``load_processor``.

:class:`recaption.captioner.model.Captioner` stays generic: it asks :func:`family_for` for the
checkpoint's family only to load its processor and apply ``image_options``. A model type no family
claims still runs through ``AutoProcessor`` (any chat-template VLM), without image options.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from recaption.errors import ConfigError

# name -> module (imported on first use: family modules import nothing heavy at import time)
_MODULES = {
    "llava": "llava",
    "llava-next": "llava_next",
    "qwen2-vl": "qwen2_vl",
    "qwen2.5-vl": "qwen2_5_vl",
    "idefics3": "idefics3",
}
FAMILY_NAMES: tuple[str, ...] = tuple(_MODULES)


def family(name: str) -> ModuleType:
    """The family module called ``name`` (``llava``, ``llava-next``, ``qwen2-vl``, ...)."""
    if name not in _MODULES:
        raise ConfigError("family", name, FAMILY_NAMES)
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")


def families() -> list[ModuleType]:
    """Every family module, in :data:`FAMILY_NAMES` order."""
    return [family(n) for n in FAMILY_NAMES]


def family_for(model_type: str) -> ModuleType | None:
    """The family whose checkpoints have this ``model_type``, or None."""
    for mod in families():
        if model_type in mod.MODEL_TYPES:
            return mod
    return None


def all_option_names() -> dict[str, list[str]]:
    """Every family image option, with the families that accept it."""
    names: dict[str, list[str]] = {}
    for mod in families():
        for opt in mod.OPTIONS:
            names.setdefault(opt, []).append(mod.NAME)
    return names


def check_option_names(options: dict[str, Any]) -> None:
    """Fail at once for an image option no family knows (before any model loads)."""
    known = all_option_names()
    for key in options:
        if key not in known:
            accepted = ", ".join(f"{k} ({'/'.join(v)})" for k, v in sorted(known.items()))
            raise ConfigError("image_options", key, f"one of: {accepted}")


def apply_image_options(model_type: str, processor: Any, options: dict[str, Any]) -> None:
    """Apply ``options`` for the family of ``model_type``; an option that family lacks fails, naming it."""
    if not options:
        return
    mod = family_for(model_type)
    accepted = dict(mod.OPTIONS) if mod is not None else {}
    for key, value in options.items():
        if key not in accepted:
            what = f"the {mod.NAME!r} family" if mod is not None else f"model type {model_type!r}"
            raise ConfigError(
                f"image_options.{key}",
                value,
                f"options of {what}: {', '.join(accepted) or 'none'}",
                hint=f"{key!r} belongs to: {', '.join(all_option_names().get(key, []))}",
            )
    assert mod is not None
    mod.apply_options(processor, options)


def load_processor(model_type: str, source: str, **common: Any) -> Any:
    """The family's own processor loader where it has one, else ``AutoProcessor``."""
    mod = family_for(model_type)
    loader = getattr(mod, "load_processor", None) if mod is not None else None
    if loader is not None:
        return loader(source, **common)
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(source, **common)


def share_image_features(model_type: str, model: Any) -> Any:
    """Encode each distinct image of a batch once (see :mod:`.shared_vision`); its counters, or None."""
    from recaption.captioner.families.shared_vision import share_image_features as share

    mod = family_for(model_type)
    return share(model, mod.NAME) if mod is not None else None


def build_tiny_models(folder: str, names: list[str] | None = None, *, seed: int = 0) -> dict[str, str]:
    """Build each family's tiny model into ``folder/<family>``; returns ``{family: path}``."""
    from pathlib import Path

    root = Path(folder)
    return {n: family(n).build_tiny(root / n, seed=seed) for n in (names or FAMILY_NAMES)}
