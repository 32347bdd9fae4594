"""The data of one run: the `data` config group's checks, the train / val / test split and the
normalisation statistics, put together by `load_data` from the cached sources. split=val holds out
10% of each training class and never loads the test set; train_subset draws nested, stratified
subsets from the rest."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import OmegaConf

from experiments import CONF
from experiments.data.cache import discard, load_split
from experiments.data.sources import CLASSES, SOURCES, DataError

SPLITS = ("test", "val")
NORMALIZE = ("pixel_mean", "channel")
# Training augmentation (data.augment), applied by DeviceBatches. crop_flip is the paper's (Sec. 4.2: pad 4,
# random 32x32 crop, random horizontal flip) and the default; a config.yaml recorded before the key existed
# means crop_flip.
AUGMENTATIONS = ("crop_flip", "crop", "flip", "none")
DEFAULT_AUGMENT = "crop_flip"
SPLIT_SEED = 2016   # val hold-out and train_subset draws: fixed, independent of the run seed
VAL_FRACTION = 0.1  # 500 of 5,000 per class -> the 45k/5k split the paper tuned its schedule on


@dataclass
class CifarData:
    train_images: torch.Tensor   # uint8 (N, 32, 32, 3), CPU
    train_labels: torch.Tensor   # int64 (N,)
    eval_images: torch.Tensor    # uint8 (M, 32, 32, 3): the test set (split=test) or the held-out 5k (split=val)
    eval_labels: torch.Tensor
    mean: torch.Tensor           # float32 broadcastable to (3, 32, 32), [0,1] pixel units, training portion only
    std: torch.Tensor            # float32 broadcastable to (3, 32, 32); ones for pixel_mean
    source: str
    split: str                   # what the eval images are: "test" or "val"
    cache_files: tuple[str, ...] = ()  # every cache file this load used: train first, then test (none for fake)


def data_options() -> list[str]:
    """The `data` config group's options (DATA=): conf/data/*.yaml."""
    return sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


def check_data_option(name: str) -> None:
    """DataError unless `name` is one of data_options(). Hydra takes a path into another group
    (DATA=../experiment/smoke) as a data file and fails later in many lines, or not at all."""
    if name not in data_options():
        raise DataError(f"unknown DATA {name!r}; choose one of {', '.join(data_options())}")


def validate_data_config(cfg) -> None:
    """Cheap checks of the `data` node; raises DataError. Touches the disk only through os.path.exists
    and creates nothing: the trainer calls it before making any folder."""
    source = cfg.get("source")
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)} (data=<name>)")
    if cfg.get("split") not in SPLITS:
        raise DataError(f"data.split must be 'test' or 'val', got {cfg.get('split')!r}")
    if cfg.get("normalize") not in NORMALIZE:
        raise DataError(f"data.normalize must be one of {', '.join(NORMALIZE)}, got {cfg.get('normalize')!r}")
    check_augment(cfg.get("augment", DEFAULT_AUGMENT))
    subset = cfg.get("train_subset")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset <= 0):
        raise DataError(f"data.train_subset must be a positive integer or null, got {subset!r}")
    if source == "cifar10_folder":
        root = None if _is_missing(cfg, "root") else cfg.get("root")
        if not root:
            raise DataError("data.root is required for data=cifar10_folder: data.root=<folder or .tar.gz>")
        if not os.path.exists(root):
            raise DataError(f"data.root {root} does not exist; point data.root at a CIFAR-10 image folder or .tar.gz")
    if source == "cifar10" and not cfg.get("root"):
        raise DataError("data.root is required for data=cifar10 (the folder holding cifar-10-python.tar.gz)")
    if source == "fake":
        for key in ("num_train", "num_eval"):
            n = cfg.get(key)
            if isinstance(n, bool) or not isinstance(n, int) or n < 10:
                raise DataError(f"data.{key} must be an integer >= 10 (one image per class) for data=fake, got {n!r}")


def check_augment(mode) -> None:
    if mode not in AUGMENTATIONS:
        raise DataError(f"data.augment must be one of {', '.join(AUGMENTATIONS)}, got {mode!r}")


def _is_missing(cfg, key: str) -> bool:
    return OmegaConf.is_config(cfg) and key in cfg and OmegaConf.is_missing(cfg, key)


# ----------------------------------------------------------------------------- splits and statistics

def _class_orders(labels: torch.Tensor) -> list[torch.Tensor]:
    """Per class, its indices in a fixed shuffled order; val takes the head, train_subset the next ones,
    so subsets are nested and never overlap the held-out images."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    orders = []
    for c in range(10):
        idx = (labels == c).nonzero()[:, 0]
        orders.append(idx[torch.randperm(len(idx), generator=g)])
    return orders


def split_indices(labels: torch.Tensor, split: str, subset: int | None):
    """(train indices, held-out indices or None), both ascending."""
    orders = _class_orders(labels)
    held = [o[:round(VAL_FRACTION * len(o))] for o in orders] if split == "val" else [o[:0] for o in orders]
    rest = [o[len(h):] for o, h in zip(orders, held)]
    if subset is not None:
        available = sum(len(r) for r in rest)
        if subset > available:
            raise DataError(f"data.train_subset={subset} exceeds the {available} training images available; lower it")
        want = [subset // 10 + (c < subset % 10) for c in range(10)]  # remainder to the first classes
        short = [c for c in range(10) if want[c] > len(rest[c])]
        if short:
            c = short[0]
            raise DataError(f"data.train_subset={subset} needs {want[c]} images of class {CLASSES[c]} but only "
                            f"{len(rest[c])} are available; lower it")
        rest = [r[:w] for r, w in zip(rest, want)]
    train = torch.cat(rest).sort().values
    return train, (torch.cat(held).sort().values if split == "val" else None)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and std of uint8 NHWC images in [0,1] units, from 256-bin histograms."""
    hist = torch.stack([torch.bincount(images[..., c].reshape(-1), minlength=256) for c in range(3)]).double()
    v = torch.arange(256, dtype=torch.float64) / 255
    mean = (hist * v).sum(1) / hist.sum(1)
    var = (hist * (v - mean[:, None]) ** 2).sum(1) / hist.sum(1)
    return mean.float(), var.sqrt().float()


def _normalisation(images: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    if mode == "channel":
        mean, std = channel_stats(images)
        return mean.view(3, 1, 1), std.view(3, 1, 1)
    total = torch.from_numpy(images.numpy().sum(0, dtype=np.int64))  # exact; numpy: 0.07 s vs torch's 1.8 s
    mean = (total.double() / (255 * len(images))).permute(2, 0, 1).float().contiguous()
    return mean, torch.ones(3, 1, 1)


def load_data(cfg) -> CifarData:
    """cfg is the `data` node (keys as in conf/data/*.yaml). Raises DataError on user-fixable problems."""
    validate_data_config(cfg)
    built: list[tuple[str, bool]] = []
    try:
        images, labels, train_cache = load_split(cfg, "train", built)
        train_idx, held_idx = split_indices(labels, cfg.split, cfg.get("train_subset"))
        cache_files = (train_cache,) if train_cache else ()
        if cfg.split == "val":  # the test set is never loaded
            eval_images, eval_labels = images[held_idx], labels[held_idx]
        else:
            eval_images, eval_labels, test_cache = load_split(cfg, "test", built)
            cache_files += (test_cache,) if test_cache else ()
    except DataError:  # e.g. an empty test class: no half cache (a train file without its test file) stays
        discard(built)
        raise
    train_images, train_labels = images, labels
    if len(train_idx) < len(labels):  # indexing copies 150 MB: only when the split or subset needs it
        train_images, train_labels = images[train_idx], labels[train_idx]
    mean, std = _normalisation(train_images, cfg.normalize)  # training portion only, never evaluation images
    return CifarData(train_images, train_labels, eval_images, eval_labels, mean, std, cfg.source, cfg.split,
                     cache_files)
