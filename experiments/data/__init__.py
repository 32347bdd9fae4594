"""CIFAR-10 for the degradation suite, from the source on disk to normalised, augmented batches on the device.

    sources.py   the three sources (official archive, image folder or its .tar.gz, fake), each decoded
                 to uint8 images (N, 32, 32, 3) and int64 labels
    cache.py     the one-time decoding cache: one file per source and split, keyed by the input
    dataset.py   the `data` config group's checks, the train / val / test split, normalisation
                 statistics, and `load_data`, which puts them together
    batches.py   DeviceBatches: uint8 on the device, batched crop / flip, every batch a pure function
                 of (seed, iteration), as in cifar10-airbench's CifarLoader
    __main__.py  `python -m experiments.data [hydra overrides]` (`make data`): describe the loaded data

The names other modules use are importable from here.
"""
from experiments.data.batches import DeviceBatches, augment_batch, crop_flip
from experiments.data.dataset import (AUGMENTATIONS, DEFAULT_AUGMENT, CifarData, channel_stats, check_data_option,
                                      load_data, validate_data_config)
from experiments.data.sources import CLASSES, SOURCES, DataError, DataUnavailable, prepare_source

__all__ = ["AUGMENTATIONS", "CLASSES", "DEFAULT_AUGMENT", "SOURCES", "CifarData", "DataError", "DataUnavailable",
           "DeviceBatches", "augment_batch", "channel_stats", "check_data_option", "crop_flip", "load_data",
           "prepare_source", "validate_data_config"]
