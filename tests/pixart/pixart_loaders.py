# PixArt's statements are kept on their own lines, as PixArt writes them, to be compared side by side.
# ruff: noqa: E501, SIM401
"""Replicas of PixArt's dataset classes: their file lookups, array reads, padding and transforms.

Transcribed from PixArt's source (read through the project's ``search`` tool), with only the
registry, logger and torchvision replaced (torchvision cannot be installed next to this project's
torch; its ``Resize``/``CenterCrop``/``ToTensor``/``Normalize`` on a PIL image are written out below):

- PixArt-alpha/PixArt-alpha @57b1f3c ``diffusion/data/datasets/InternalData.py`` (``InternalData``)
  and ``diffusion/data/datasets/InternalData_ms.py`` (``InternalDataMS``);
- PixArt-alpha/PixArt-sigma @2b08ce5 ``diffusion/data/datasets/InternalData.py``
  (``replace_img_ext``, ``InternalDataSigma``) and @6b48b3b ``diffusion/data/datasets/InternalData_ms.py``
  (``InternalDataMSSigma``); ``diffusion/data/builder.py`` @207537a (``get_data_path``: an absolute
  ``root`` is used as it is; ``build_dataset`` passes the ``default_train`` transform);
- ``default_train`` (α ``diffusion/data/transforms.py``): ``T.Resize(resolution)`` (bilinear),
  ``T.CenterCrop(resolution)``, ``T.ToTensor()``, ``T.Normalize([.5], [.5])``.

Each class keeps PixArt's attribute names and the order of its statements, so a reader can hold the
two side by side. ``getdata`` is the method under test (``__getitem__`` only retries it on errors,
which would hide them).
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import numpy as np
import torch
from PIL import Image

# the names PixArt's eval(aspect_ratio_type) resolves
from recaption.encoder.buckets import (  # noqa: F401
    ASPECT_RATIO_256,
    ASPECT_RATIO_512,
    ASPECT_RATIO_1024,
    ASPECT_RATIO_2048,
    ASPECT_RATIO_2880,
)

BICUBIC = Image.Resampling.BICUBIC
BILINEAR = Image.Resampling.BILINEAR
LANCZOS = Image.Resampling.LANCZOS


# -- torchvision, as it acts on a PIL image ---------------------------------------------------------
def default_loader(path: str) -> Image.Image:
    """``torchvision.datasets.folder.pil_loader``."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def resize(img: Image.Image, size: Any, interpolation: Any = BILINEAR) -> Image.Image:
    """``T.Resize(size)``: a (h, w) pair exactly; an int sets the shorter side (longer truncated)."""
    w, h = img.size
    if isinstance(size, int):
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = size
    return img.resize((new_w, new_h), interpolation)


def center_crop(img: Image.Image, size: Any) -> Image.Image:
    """``T.CenterCrop(size)`` for a crop no larger than the image."""
    crop_h, crop_w = (size, size) if isinstance(size, int) else size
    w, h = img.size
    assert crop_h <= h and crop_w <= w, "the replica does not pad"
    top = int(round((h - crop_h) / 2.0))  # noqa: RUF046
    left = int(round((w - crop_w) / 2.0))  # noqa: RUF046
    return img.crop((left, top, left + crop_w, top + crop_h))


def to_tensor_normalize(img: Image.Image) -> torch.Tensor:
    """``T.ToTensor()`` then ``T.Normalize([.5], [.5])``."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return (x - 0.5) / 0.5


def default_train(resolution: int) -> Any:
    return lambda img: to_tensor_normalize(center_crop(resize(img.convert("RGB"), resolution), resolution))


def get_closest_ratio(height: float, width: float, ratios: dict) -> tuple[Any, float]:
    aspect_ratio = height / width
    closest_ratio = min(ratios.keys(), key=lambda ratio: abs(float(ratio) - aspect_ratio))
    return ratios[closest_ratio], float(closest_ratio)


def replace_img_ext(path: str, dst_ext: str) -> str:
    return (
        path.replace(".png", dst_ext)
        .replace(".jpg", dst_ext)
        .replace(".webp", dst_ext)
        .replace(".jpeg", dst_ext)
        .replace(".JPEG", dst_ext)
        .replace(".JPG", dst_ext)
    )


def vae_feat_loader(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``vae_feat_loader`` returns ``mean + std * randn``; the tests check ``mean`` and ``std``."""
    mean, std = torch.from_numpy(np.load(path)).chunk(2)
    return mean, std


def load_json(file_path: str) -> list[dict]:
    with open(file_path) as f:
        return json.load(f)


# -- PixArt-α -----------------------------------------------------------------------------------------
class InternalData:
    """α ``InternalData`` (single scale): ``partition/``, ``ratio <= 4``, ``noflip`` latents, pads T5."""

    def __init__(self, root, image_list_json="data_info.json", transform=None, resolution=256,
                 load_vae_feat=False, max_length=120, **kwargs):  # fmt: skip
        self.root = root
        self.transform = transform
        self.load_vae_feat = load_vae_feat
        self.resolution = resolution
        self.max_lenth = max_length
        self.meta_data_clean, self.img_samples, self.txt_feat_samples, self.vae_feat_samples = [], [], [], []
        image_list_json = image_list_json if isinstance(image_list_json, list) else [image_list_json]
        for json_file in image_list_json:
            meta_data = load_json(os.path.join(self.root, "partition", json_file))
            meta_data_clean = [item for item in meta_data if item["ratio"] <= 4]
            self.meta_data_clean.extend(meta_data_clean)
            self.img_samples.extend([os.path.join(self.root.replace("InternData", "InternImgs"), item["path"]) for item in meta_data_clean])  # fmt: skip
            self.txt_feat_samples.extend([os.path.join(self.root, "caption_feature_wmask", "_".join(item["path"].rsplit("/", 1)).replace(".png", ".npz")) for item in meta_data_clean])  # fmt: skip
            self.vae_feat_samples.extend([os.path.join(self.root, f"img_vae_features_{resolution}resolution/noflip", "_".join(item["path"].rsplit("/", 1)).replace(".png", ".npy")) for item in meta_data_clean])  # fmt: skip
        if load_vae_feat:
            self.transform = None
            self.loader = vae_feat_loader
        else:
            self.loader = default_loader

    def getdata(self, index):
        img = (
            self.loader(self.vae_feat_samples[index])
            if self.load_vae_feat
            else self.loader(self.img_samples[index])
        )
        txt_info = np.load(self.txt_feat_samples[index])
        txt_fea = torch.from_numpy(txt_info["caption_feature"])  # 1xTx4096
        attention_mask = torch.ones(1, 1, txt_fea.shape[1])  # 1x1xT
        if "attention_mask" in txt_info:
            attention_mask = torch.from_numpy(txt_info["attention_mask"])[None]
        if txt_fea.shape[1] != self.max_lenth:
            txt_fea = torch.cat(
                [txt_fea, txt_fea[:, -1:].repeat(1, self.max_lenth - txt_fea.shape[1], 1)], dim=1
            )
            attention_mask = torch.cat([attention_mask, torch.zeros(1, 1, self.max_lenth - attention_mask.shape[-1])], dim=-1)  # fmt: skip
        if self.transform:
            img = self.transform(img)
        return img, txt_fea, attention_mask, {"aspect_ratio": torch.tensor(1.0)}

    def __len__(self):
        return len(self.img_samples)


class InternalDataMS(InternalData):
    """α ``InternalDataMS``: ``partition_filter/``, ``img_vae_fatures_{R}_multiscale/ms``; no T5 padding."""

    def __init__(self, root, image_list_json="data_info.json", transform=None, resolution=256,
                 load_vae_feat=False, max_length=120, **kwargs):  # fmt: skip
        self.root = root
        self.transform = transform
        self.load_vae_feat = load_vae_feat
        self.resolution = resolution
        self.max_lenth = max_length
        self.aspect_ratio = eval(kwargs.pop("aspect_ratio_type"))
        self.meta_data_clean, self.img_samples, self.txt_feat_samples, self.vae_feat_samples = [], [], [], []
        image_list_json = image_list_json if isinstance(image_list_json, list) else [image_list_json]
        for json_file in image_list_json:
            meta_data = load_json(os.path.join(self.root, "partition_filter", json_file))
            meta_data_clean = [item for item in meta_data if item["ratio"] <= 4]
            self.meta_data_clean.extend(meta_data_clean)
            self.img_samples.extend([os.path.join(self.root.replace("InternData", "InternImgs"), item["path"]) for item in meta_data_clean])  # fmt: skip
            self.txt_feat_samples.extend([os.path.join(self.root, "caption_feature_wmask", "_".join(item["path"].rsplit("/", 1)).replace(".png", ".npz")) for item in meta_data_clean])  # fmt: skip
            self.vae_feat_samples.extend([os.path.join(self.root, f"img_vae_fatures_{resolution}_multiscale/ms", "_".join(item["path"].rsplit("/", 1)).replace(".png", ".npy")) for item in meta_data_clean])  # fmt: skip
        if load_vae_feat:
            self.transform = None
            self.loader = vae_feat_loader
        else:
            self.loader = default_loader

    def getdata(self, index):
        ori_h, ori_w = self.meta_data_clean[index]["height"], self.meta_data_clean[index]["width"]
        closest_size, closest_ratio = get_closest_ratio(ori_h, ori_w, self.aspect_ratio)
        closest_size = [int(x) for x in closest_size]
        img = (
            self.loader(self.vae_feat_samples[index])
            if self.load_vae_feat
            else self.loader(self.img_samples[index])
        )
        txt_info = np.load(self.txt_feat_samples[index])
        txt_fea = torch.from_numpy(txt_info["caption_feature"])
        attention_mask = torch.ones(1, 1, txt_fea.shape[1])
        if "attention_mask" in txt_info:
            attention_mask = torch.from_numpy(txt_info["attention_mask"])[None]
        if not self.load_vae_feat:
            img = ms_transform(img, ori_h, ori_w, closest_size, BICUBIC)
        return img, txt_fea, attention_mask, {"aspect_ratio": closest_ratio, "closest_size": closest_size}


def ms_transform(img, ori_h, ori_w, closest_size, interpolation):
    """The multi-scale ``getdata`` transform (``load_vae_feat=False``)."""
    if closest_size[0] / ori_h > closest_size[1] / ori_w:
        resize_size = closest_size[0], int(ori_w * closest_size[0] / ori_h)
    else:
        resize_size = int(ori_h * closest_size[1] / ori_w), closest_size[1]
    img = img.convert("RGB")
    return to_tensor_normalize(center_crop(resize(img, resize_size, interpolation), closest_size))


# -- PixArt-Σ -----------------------------------------------------------------------------------------
class InternalDataSigma:
    """Σ ``InternalDataSigma`` (single scale): JSON in ``root``, ``ratio <= 4.5``, base-name files."""

    def __init__(self, root, image_list_json="data_info.json", transform=None, resolution=256,
                 load_vae_feat=False, load_t5_feat=False, real_prompt_ratio=1.0, max_length=300, **kwargs):  # fmt: skip
        self.root = root
        self.transform = transform
        self.load_vae_feat = load_vae_feat
        self.load_t5_feat = load_t5_feat
        self.resolution = resolution
        self.real_prompt_ratio = real_prompt_ratio
        self.max_lenth = max_length
        self.meta_data_clean, self.img_samples, self.txt_samples, self.sharegpt4v_txt_samples = [], [], [], []
        self.txt_feat_samples, self.vae_feat_samples, self.gpt4v_txt_feat_samples = [], [], []
        self.weight_dtype = torch.float16 if self.real_prompt_ratio > 0 else torch.float32
        image_list_json = image_list_json if isinstance(image_list_json, list) else [image_list_json]
        for json_file in image_list_json:
            meta_data = load_json(os.path.join(self.root, json_file))
            meta_data_clean = [item for item in meta_data if item["ratio"] <= 4.5]
            self.meta_data_clean.extend(meta_data_clean)
            self.img_samples.extend([os.path.join(self.root.replace("InternData", "InternImgs"), item["path"]) for item in meta_data_clean])  # fmt: skip
            self.txt_samples.extend([item["prompt"] for item in meta_data_clean])
            self.sharegpt4v_txt_samples.extend([item["sharegpt4v"] if "sharegpt4v" in item else "" for item in meta_data_clean])  # fmt: skip
            self.txt_feat_samples.extend([os.path.join(self.root, "caption_features_new", item["path"].rsplit("/", 1)[-1].replace(".png", ".npz")) for item in meta_data_clean])  # fmt: skip
            self.gpt4v_txt_feat_samples.extend([os.path.join(self.root, "sharegpt4v_caption_features_new", item["path"].rsplit("/", 1)[-1].replace(".png", ".npz")) for item in meta_data_clean])  # fmt: skip
            self.vae_feat_samples.extend([os.path.join(self.root, f"img_sdxl_vae_features_{resolution}resolution_new", item["path"].rsplit("/", 1)[-1].replace(".png", ".npy")) for item in meta_data_clean])  # fmt: skip
        if load_vae_feat:
            self.transform = None
            self.loader = vae_feat_loader
        else:
            self.loader = default_loader

    def text(self, index, real_prompt):
        npz_path = self.txt_feat_samples[index] if real_prompt else self.gpt4v_txt_feat_samples[index]
        txt = self.txt_samples[index] if real_prompt else self.sharegpt4v_txt_samples[index]
        attention_mask = torch.ones(1, 1, self.max_lenth)  # 1x1xT
        if self.load_t5_feat:
            txt_info = np.load(npz_path)
            txt_fea = torch.from_numpy(txt_info["caption_feature"])  # 1xTx4096
            if "attention_mask" in txt_info:
                attention_mask = torch.from_numpy(txt_info["attention_mask"])[None]
            if txt_fea.shape[1] != self.max_lenth:
                txt_fea = torch.cat(
                    [txt_fea, txt_fea[:, -1:].repeat(1, self.max_lenth - txt_fea.shape[1], 1)], dim=1
                )
                attention_mask = torch.cat([attention_mask, torch.zeros(1, 1, self.max_lenth - attention_mask.shape[-1])], dim=-1)  # fmt: skip
        else:
            txt_fea = txt
        return txt_fea, attention_mask

    def getdata(self, index, real_prompt=None):
        if real_prompt is None:
            real_prompt = random.random() < self.real_prompt_ratio
        img = (
            self.loader(self.vae_feat_samples[index])
            if self.load_vae_feat
            else self.loader(self.img_samples[index])
        )
        txt_fea, attention_mask = self.text(index, real_prompt)
        if self.transform:
            img = self.transform(img)
        return img, txt_fea, attention_mask.to(torch.int16), {"aspect_ratio": torch.tensor(1.0)}

    def __len__(self):
        return len(self.img_samples)


class InternalDataMSSigma(InternalDataSigma):
    """Σ ``InternalDataMSSigma``: JSON in ``root``, ``replace_img_ext`` names, ``..._ms_new`` latents,
    T5 padded then cast to ``weight_dtype``, Lanczos for the 2048/2880 tables."""

    def __init__(self, root, image_list_json="data_info.json", transform=None, resolution=256,
                 load_vae_feat=False, load_t5_feat=False, real_prompt_ratio=1.0, max_length=300, **kwargs):  # fmt: skip
        self.root = root
        self.transform = transform
        self.load_vae_feat = load_vae_feat
        self.load_t5_feat = load_t5_feat
        self.resolution = resolution
        self.real_prompt_ratio = real_prompt_ratio
        self.max_lenth = max_length
        self.aspect_ratio = eval(kwargs.pop("aspect_ratio_type"))
        self.meta_data_clean, self.img_samples, self.txt_samples, self.sharegpt4v_txt_samples = [], [], [], []
        self.txt_feat_samples, self.vae_feat_samples, self.gpt4v_txt_feat_samples = [], [], []
        self.weight_dtype = torch.float16 if self.real_prompt_ratio > 0 else torch.float32
        self.interpolate_model = BICUBIC
        if self.aspect_ratio in [ASPECT_RATIO_2048, ASPECT_RATIO_2880]:
            self.interpolate_model = LANCZOS
        suffix = ""
        image_list_json = image_list_json if isinstance(image_list_json, list) else [image_list_json]
        for json_file in image_list_json:
            meta_data = load_json(os.path.join(self.root, json_file))
            meta_data_clean = [item for item in meta_data if item["ratio"] <= 4.5]
            self.meta_data_clean.extend(meta_data_clean)
            self.img_samples.extend([os.path.join(self.root.replace("InternData" + suffix, "InternImgs"), item["path"]) for item in meta_data_clean])  # fmt: skip
            self.txt_samples.extend([item["prompt"] for item in meta_data_clean])
            self.sharegpt4v_txt_samples.extend([item["sharegpt4v"] if "sharegpt4v" in item else "" for item in meta_data_clean])  # fmt: skip
            self.txt_feat_samples.extend([os.path.join(self.root, "caption_features_new", replace_img_ext("_".join(item["path"].rsplit("/", 1)), ".npz")) for item in meta_data_clean])  # fmt: skip
            self.gpt4v_txt_feat_samples.extend([os.path.join(self.root, "sharegpt4v_caption_features_new", replace_img_ext("_".join(item["path"].rsplit("/", 1)), ".npz")) for item in meta_data_clean])  # fmt: skip
            self.vae_feat_samples.extend([os.path.join(self.root + suffix, f"img_sdxl_vae_features_{resolution}resolution_ms_new", replace_img_ext("_".join(item["path"].rsplit("/", 1)), ".npy")) for item in meta_data_clean])  # fmt: skip
        if self.real_prompt_ratio < 1:
            assert len(self.sharegpt4v_txt_samples[0]) != 0
        if load_vae_feat:
            self.transform = None
            self.loader = vae_feat_loader
        else:
            self.loader = default_loader

    def getdata(self, index, real_prompt=None):
        if real_prompt is None:
            real_prompt = random.random() < self.real_prompt_ratio
        ori_h, ori_w = self.meta_data_clean[index]["height"], self.meta_data_clean[index]["width"]
        closest_size, closest_ratio = get_closest_ratio(ori_h, ori_w, self.aspect_ratio)
        closest_size = [int(x) for x in closest_size]
        img = (
            self.loader(self.vae_feat_samples[index])
            if self.load_vae_feat
            else self.loader(self.img_samples[index])
        )
        npz_path = self.txt_feat_samples[index] if real_prompt else self.gpt4v_txt_feat_samples[index]
        txt = self.txt_samples[index] if real_prompt else self.sharegpt4v_txt_samples[index]
        attention_mask = torch.ones(1, 1, self.max_lenth)
        if self.load_t5_feat:
            txt_info = np.load(npz_path)
            txt_fea = torch.from_numpy(txt_info["caption_feature"])
            if "attention_mask" in txt_info:
                attention_mask = torch.from_numpy(txt_info["attention_mask"])[None]
            if txt_fea.shape[1] != self.max_lenth:
                txt_fea = torch.cat([txt_fea, txt_fea[:, -1:].repeat(1, self.max_lenth - txt_fea.shape[1], 1)], dim=1).to(self.weight_dtype)  # fmt: skip
                attention_mask = torch.cat([attention_mask, torch.zeros(1, 1, self.max_lenth - attention_mask.shape[-1])], dim=-1)  # fmt: skip
        else:
            txt_fea = txt
        if not self.load_vae_feat:
            img = ms_transform(img, ori_h, ori_w, closest_size, self.interpolate_model)
        info = {"aspect_ratio": closest_ratio, "closest_size": closest_size}
        return img, txt_fea, attention_mask.to(torch.int16), info
