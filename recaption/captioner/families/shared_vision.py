"""Each distinct image through the vision tower once per batch, however many prompts it has.

With several prompts per image (``--prompt COLUMN=...``), the caption stage puts an image's prompts
in neighbouring rows of a batch. The processor still gives every row its own copy of the image
inputs; :func:`share_image_features` wraps the model's ``get_image_features`` so that a row whose
image inputs equal the previous row's reuses that row's image features: the vision tower and the
projector run on the distinct images only, and every row gets its features back in order.

transformers 5 models return the features as ``pooler_output``, one entry per image (the forward
concatenates them), which is what makes this generic; how the image *inputs* split per image is a
family's layout (:data:`LAYOUTS`): ``rows`` (dim 0 of each named tensor: LLaVA, LLaVA-NeXT,
Idefics3) or ``grid`` (Qwen's flattened patches, ``image_grid_thw`` rows long).
"""

from __future__ import annotations

import inspect
from typing import Any

# family layout: (kind, the image input argument names of get_image_features)
LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "llava": ("rows", ("pixel_values", "image_sizes")),
    "llava-next": ("rows", ("pixel_values", "image_sizes")),
    "idefics3": ("rows", ("pixel_values", "pixel_attention_mask")),
    "qwen2-vl": ("grid", ("pixel_values", "image_grid_thw")),
    "qwen2.5-vl": ("grid", ("pixel_values", "image_grid_thw")),
}


class VisionStats:
    """How many images the wrapped ``get_image_features`` was given, and how many it encoded."""

    def __init__(self) -> None:
        self.images = 0
        self.encoded = 0


def _split(kind: str, names: tuple[str, ...], args: dict[str, Any]) -> list[dict[str, Any]] | None:
    import torch

    pv = args.get("pixel_values")
    if not isinstance(pv, torch.Tensor):
        return None
    if kind == "rows":
        n = pv.shape[0]
        present = [k for k in names if isinstance(args.get(k), torch.Tensor) and args[k].shape[0] == n]
        return [{k: args[k][i : i + 1] for k in present} for i in range(n)]
    grid = args.get("image_grid_thw")
    if not isinstance(grid, torch.Tensor):
        return None
    sizes = grid.prod(-1).tolist()
    if sum(sizes) != pv.shape[0]:
        return None
    chunks = torch.split(pv, sizes)
    return [{"pixel_values": c, "image_grid_thw": grid[i : i + 1]} for i, c in enumerate(chunks)]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and bool(torch.equal(a[k], b[k])) for k in a)


def share_image_features(model: Any, family_name: str) -> VisionStats | None:
    """Wrap ``model.model.get_image_features`` (once); returns its counters, or None if not wrapped."""
    import torch

    layout = LAYOUTS.get(family_name)
    inner = getattr(model, "model", None)
    original = getattr(inner, "get_image_features", None)
    if layout is None or inner is None or original is None:
        return None
    existing = getattr(inner, "_recaption_vision_stats", None)
    if existing is not None:
        return existing
    kind, names = layout
    signature = inspect.signature(original)
    stats = VisionStats()

    def get_image_features(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        units = _split(kind, names, bound.arguments)
        if not units:
            return original(*args, **kwargs)
        keep: list[dict[str, Any]] = []
        index: list[int] = []
        for u in units:
            if keep and _same(u, keep[-1]):
                index.append(len(keep) - 1)
            else:
                keep.append(u)
                index.append(len(keep) - 1)
        stats.images += len(units)
        stats.encoded += len(keep)
        if len(keep) == len(units):
            return original(*args, **kwargs)
        for k in keep[0]:
            bound.arguments[k] = torch.cat([u[k] for u in keep])
        out = original(*bound.args, **bound.kwargs)
        features = list(out.pooler_output)
        out.pooler_output = [features[i] for i in index]
        return out

    # generate() reads the signature to pick the image inputs out of its kwargs: keep the original's
    get_image_features.__signature__ = signature  # type: ignore[attr-defined]
    inner.get_image_features = get_image_features
    inner._recaption_vision_stats = stats
    return stats
