"""A PyTorch ``Dataset`` over feature shards that yields what PixArt's training loop expects.

It mirrors PixArt-α's ``InternalDataMS.__getitem__`` with ``load_vae_feat=True``
(``diffusion/data/datasets/InternalData_ms.py``), so PixArt's ``train.py`` can take it in place of
its own dataset::

    latent, txt_fea, attention_mask, data_info = dataset[i]

- ``latent``: ``mean + std * randn`` of the stored posterior, ``(C, H/8, W/8)`` float32 (PixArt's
  ``vae_feat_loader``: ``mean, std = np.load(path).chunk(2)``; a new draw at every load). The scale
  factor (0.18215 / 0.13025) is *not* applied: PixArt's ``train.py`` multiplies by
  ``config.scale_factor`` itself;
- ``txt_fea``: ``(1, L, hidden)`` float32, the stored tokens padded to ``L`` = the training length
  (``model_max_length``) by repeating the last token, as ``InternalData.getdata`` pads;
- ``attention_mask``: ``(1, 1, L)`` int64 (the dtype PixArt's extractor stores), 1 on real tokens,
  0 on padding;
- ``data_info``: ``{'img_hw': tensor([orig_h, orig_w], float32), 'aspect_ratio': float(bucket key),
  'mask_type': 'null'}``: the *original* size, as InternalDataMS reads it from ``data_info.json``.
  Single-scale features (square crops) follow ``InternalData`` instead: ``img_hw`` = (R, R),
  ``aspect_ratio`` = ``tensor(1.)``, plus ``'prompt'``.

It also has what PixArt's ``train.py`` and ``AspectRatioBatchSampler`` read from a dataset:
``aspect_ratio`` (the bucket table), ``ratio_nums`` (images per bucket; PixArt counts only the first
third of its list, we count all), ``get_data_info(i)``, ``load_vae_feat``, ``ori_imgs_nums``,
``set_epoch``. :class:`AspectRatioBatchSampler` here is the deterministic, seeded equivalent.

Rows are read a parquet row group at a time and the last few row groups are cached per worker, so
keep row groups modest (``ShardSizePolicy``) for shuffled access, or use the sampler's
``locality`` option, which shuffles row groups and rows within a window of them.

Importing this module imports torch (the Dataset subclasses torch's): it is for training code;
the CLI's ``export-pixart`` needs only :mod:`recaption.pixart.export`, which does not.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recaption.encoder import schema as S
from recaption.encoder.buckets import table_for
from recaption.errors import ConfigError
from recaption.pixart.features import FeatureSet, open_parquet, ratio_key_for

TORCH_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int16", "bool")


@dataclass(frozen=True)
class _Row:
    file: int
    group: int
    offset: int  # row within the row group


def _import_torch_dataset() -> Any:
    import torch.utils.data

    return torch.utils.data.Dataset


class FeatureDataset(_import_torch_dataset()):  # type: ignore[misc]
    """PixArt's ``InternalDataMS`` contract over feature shards (see the module docstring).

    ``features``: a folder, file, glob or list of them. ``resolution``: which ``vae_R`` to load
    (default: the largest every file has). ``caption_field``: which ``t5_F`` (default: the first
    encoded). ``max_length``: the training length (default: the one the features were made for;
    a shorter one truncates). ``seed``: ``None`` draws noise from torch's global generator as
    PixArt does; an int makes each (epoch, index) draw reproducible.
    """

    load_vae_feat = True

    def __init__(
        self,
        features: str | Sequence[str],
        *,
        resolution: int | None = None,
        caption_field: str | None = None,
        max_length: int | None = None,
        seed: int | None = None,
        mask_type: str = "null",
        text_dtype: str = "float32",
        mask_dtype: str = "int64",
        cache_row_groups: int = 4,
    ) -> None:
        fs = FeatureSet.open(features)
        meta = fs.metadata
        self.files = fs.files
        self.metadata = meta
        self.resolution = fs.require_resolution(resolution)
        self.caption_field = fs.require_text(caption_field)
        # require_text/require_resolution raised already if either section were missing.
        assert meta.text is not None
        assert meta.image is not None
        self.max_length = int(max_length if max_length is not None else meta.text.max_length)
        if self.max_length < 1:
            raise ConfigError("max_length", max_length, "a positive number of tokens")
        for name, value in (("text dtype", text_dtype), ("mask dtype", mask_dtype)):
            if value not in TORCH_DTYPES:
                raise ConfigError(name, value, TORCH_DTYPES)
        self.hidden_size = meta.text.hidden_size
        self.text_store_dtype = meta.text.dtype
        self.latent_store_dtype = meta.image.dtype
        self.latent_channels = meta.image.latent_channels
        self.multiscale = meta.image.multiscale
        self.scale_factor = meta.image.scale_factor
        self.seed = seed
        self.mask_type = mask_type
        self.text_dtype = text_dtype
        self.mask_dtype = mask_dtype
        self.cache_row_groups = max(1, cache_row_groups)
        self.epoch = 0
        self.aspect_ratio = table_for(self.resolution)  # PixArt's name for the bucket table
        self._index(fs)
        self._files: dict[int, Any] = {}
        self._cache: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()

    # -- index ---------------------------------------------------------------------------------
    def _index(self, fs: FeatureSet) -> None:
        import pyarrow.compute as pc

        r, f = self.resolution, self.caption_field
        small = [
            "key",
            "width",
            "height",
            S.vae_column(r, "_h"),
            S.vae_column(r, "_ratio"),
            S.t5_column(f, "_len"),
        ]
        rows: list[_Row] = []
        keys: list[str] = []
        sizes: list[tuple[int, int]] = []
        bucket_keys: list[str] = []
        total = 0
        for fi, url in enumerate(self.files):
            pf = open_parquet(url)
            table = pf.read(columns=small)
            total += table.num_rows
            valid = pc.and_(
                pc.is_valid(table.column(S.vae_column(r, "_h"))), pc.is_valid(table.column(small[-1]))
            )
            ok = valid.to_numpy(zero_copy_only=False)
            cols = {c: table.column(c).to_pylist() for c in ("key", "width", "height", small[4])}
            starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
            for i in np.flatnonzero(ok):
                g = int(np.searchsorted(starts, i, side="right") - 1)
                rows.append(_Row(fi, g, int(i - starts[g])))
                keys.append(cols["key"][i])
                sizes.append((int(cols["height"][i]), int(cols["width"][i])))
                bucket_keys.append(ratio_key_for(cols[small[4]][i], r))
        self._rows = rows
        self.keys = keys
        self._sizes = sizes
        self.bucket_keys = bucket_keys  # PixArt's string key of each item's bucket
        self.ori_imgs_nums = total
        self.ratio_nums = {float(k): 0 for k in self.aspect_ratio}
        for k in bucket_keys:
            self.ratio_nums[float(k)] += 1
        self.ratio_index: dict[float, list[int]] = {float(k): [] for k in self.aspect_ratio}
        for j, k in enumerate(bucket_keys):
            self.ratio_index[float(k)].append(j)

    def __len__(self) -> int:
        return len(self._rows)

    def get_data_info(self, idx: int) -> dict[str, int]:
        """The original size, as PixArt's ``get_data_info`` returns it (its batch sampler reads it)."""
        h, w = self._sizes[idx]
        return {"height": h, "width": w}

    def row_group_of(self, idx: int) -> tuple[int, int]:
        """(file, row group) holding item ``idx``: what :class:`AspectRatioBatchSampler` groups by."""
        row = self._rows[idx]
        return row.file, row.group

    def set_epoch(self, epoch: int) -> None:
        """Makes the noise draws of a seeded dataset differ between epochs."""
        self.epoch = int(epoch)

    # -- reading -------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}  # open files do not cross process boundaries; workers reopen
        state["_cache"] = OrderedDict()
        return state

    def _group(self, fi: int, g: int) -> dict[str, Any]:
        key = (fi, g)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        pf = self._files.get(fi)
        if pf is None:
            pf = self._files[fi] = open_parquet(self.files[fi])
        r, f = self.resolution, self.caption_field
        cols = [
            S.vae_column(r),
            S.vae_column(r, "_h"),
            S.vae_column(r, "_w"),
            S.t5_column(f),
            S.t5_column(f, "_len"),
        ]
        if not self.multiscale:
            cols.append(S.t5_column(f, "_text"))
        table = pf.read_row_group(g, columns=cols)
        data = {c: table.column(c) for c in cols}
        self._cache[key] = data
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return data

    def _generator(self, idx: int) -> Any:
        import torch

        if self.seed is None:
            return None
        digest = hashlib.blake2b(f"{self.seed}:{self.epoch}:{idx}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))

    def latent_parts(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored (mean, std) of item ``idx`` as float32 arrays ``(C, H/8, W/8)`` each."""
        row = self._rows[idx]
        data = self._group(row.file, row.group)
        r = self.resolution
        h = data[S.vae_column(r, "_h")][row.offset].as_py()
        w = data[S.vae_column(r, "_w")][row.offset].as_py()
        blob = data[S.vae_column(r)][row.offset].as_buffer()
        c2 = 2 * self.latent_channels
        arr = S.unpack_tensor(memoryview(blob), (c2, h // 8, w // 8), self.latent_store_dtype)
        arr = arr.astype(np.float32, copy=False)
        return arr[: c2 // 2], arr[c2 // 2 :]

    def text_features(self, idx: int) -> np.ndarray:
        """The stored T5 features of item ``idx``: ``(len, hidden)`` float32."""
        row = self._rows[idx]
        data = self._group(row.file, row.group)
        f = self.caption_field
        n = data[S.t5_column(f, "_len")][row.offset].as_py()
        blob = data[S.t5_column(f)][row.offset].as_buffer()
        arr = S.unpack_tensor(memoryview(blob), (n, self.hidden_size), self.text_store_dtype)
        return arr.astype(np.float32, copy=False)

    def __getitem__(self, idx: int) -> tuple[Any, Any, Any, dict[str, Any]]:
        import torch

        if idx < 0:
            idx += len(self)
        mean_np, std_np = self.latent_parts(idx)
        mean, std = torch.from_numpy(mean_np.copy()), torch.from_numpy(std_np.copy())
        noise = torch.randn(mean.shape, generator=self._generator(idx), dtype=mean.dtype)
        latent = mean + std * noise

        feats = torch.from_numpy(self.text_features(idx).copy())
        n = min(feats.shape[0], self.max_length)
        feats = feats[:n]
        if n == 0:
            feats = torch.zeros(self.max_length, self.hidden_size)
        elif n < self.max_length:
            # InternalData.getdata: torch.cat([txt_fea, txt_fea[:, -1:].repeat(...)]) with mask 0.
            feats = torch.cat([feats, feats[-1:].repeat(self.max_length - n, 1)], dim=0)
        txt_fea = feats[None].to(getattr(torch, self.text_dtype))
        mask = torch.zeros(1, 1, self.max_length, dtype=getattr(torch, self.mask_dtype))
        mask[..., :n] = 1

        if self.multiscale:
            h, w = self._sizes[idx]
            data_info: dict[str, Any] = {
                "img_hw": torch.tensor([h, w], dtype=torch.float32),
                "aspect_ratio": float(self.bucket_keys[idx]),
                "mask_type": self.mask_type,
            }
        else:
            row = self._rows[idx]
            text = self._group(row.file, row.group)[S.t5_column(self.caption_field, "_text")][
                row.offset
            ].as_py()
            data_info = {
                "img_hw": torch.tensor([self.resolution, self.resolution], dtype=torch.float32),
                "aspect_ratio": torch.tensor(1.0),
                "prompt": text,
            }
        return latent, txt_fea, mask, data_info


class AspectRatioBatchSampler:
    """Batches of indices that share one aspect-ratio bucket, deterministic for a (seed, epoch).

    The same procedure as PixArt's ``AspectRatioBatchSampler`` (``diffusion/utils/data_sampler.py``):
    walk a shuffled order, append each index to its bucket, yield a bucket when it holds
    ``batch_size``; at the end yield the remainders (whole batches, then a last partial one unless
    ``drop_last``), bucket by bucket. Buckets with fewer than ``valid_num`` items are skipped, as
    PixArt does. The shuffle comes from a seeded generator instead of the global one.

    ``num_replicas``/``rank``: every replica builds the same batches (they share the seed) and takes
    every ``num_replicas``-th batch, so all replicas take the same number of steps (a rank with one
    step more would wait forever for the others' gradients). The batches are made equal in number
    as ``DistributedSampler`` does: with ``drop_last`` the last few are dropped, without it the first
    few are repeated. ``locality``: 0 shuffles all indices; ``k > 0`` shuffles row groups, then
    indices within windows of ``k`` row groups, so a worker's row-group cache hits.
    """

    def __init__(
        self,
        dataset: FeatureDataset,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        valid_num: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        locality: int = 0,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError("batch size", batch_size, "a positive integer")
        if not 0 <= rank < num_replicas:
            raise ConfigError("rank", rank, f"0 to {num_replicas - 1}")
        self.keys = list(dataset.bucket_keys)
        self.groups = [dataset.row_group_of(i) for i in range(len(dataset))]
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.locality = locality
        counts: dict[str, int] = {}
        for k in self.keys:
            counts[k] = counts.get(k, 0) + 1
        self.available = {k for k, n in counts.items() if n >= valid_num}
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self) -> list[int]:
        n = len(self.keys)
        if not self.shuffle:
            order = list(range(n))
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            if self.locality <= 0:
                order = rng.permutation(n).tolist()
            else:
                by_group: dict[tuple[int, int], list[int]] = {}
                for i, g in enumerate(self.groups):
                    by_group.setdefault(g, []).append(i)
                group_keys = list(by_group)
                order = []
                perm = rng.permutation(len(group_keys))
                for start in range(0, len(perm), self.locality):
                    window = [i for j in perm[start : start + self.locality] for i in by_group[group_keys[j]]]
                    order += [window[j] for j in rng.permutation(len(window))]
        return order

    def _all_batches(self) -> list[list[int]]:
        """Every replica's batches, in PixArt's order (see the class docstring)."""
        out: list[list[int]] = []
        buckets: dict[str, list[int]] = {}
        for idx in self._order():
            key = self.keys[idx]
            if key not in self.available:
                continue
            bucket = buckets.setdefault(key, [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                out.append(bucket[:])
                bucket.clear()
        for bucket in buckets.values():
            for start in range(0, len(bucket), self.batch_size):
                chunk = bucket[start : start + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    out.append(chunk)
        return out

    def _batches(self) -> list[list[int]]:
        batches = self._all_batches()
        n = self.num_replicas
        if n > 1 and batches:
            if self.drop_last:
                batches = batches[: len(batches) // n * n]
            else:
                per_rank = -(-len(batches) // n)
                batches = (batches * (1 + per_rank * n // len(batches)))[: per_rank * n]
        return batches[self.rank :: n]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())
