"""Training and evaluation batches resident on the device (cifar10-airbench's CifarLoader): the images
live there as uint8 and each batch is normalised and augmented there in one batched gather. No
DataLoader, no workers, and every training batch is a pure function of (seed, iteration), so a resumed
run sees exactly the batches it would have seen."""
from __future__ import annotations

import hashlib

import torch

from experiments.data.dataset import DEFAULT_AUGMENT, SPLIT_SEED, CifarData, check_augment
from experiments.data.sources import DataError


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4):
    """Per example b: the 32x32 window shifted by (dy[b], dx[b]) in -pad..pad of the image zero-padded by
    `pad`, mirrored left-right where flip[b]. One batched gather, no loop over examples; (0, 0, False) is
    the identity. The padding is 0.0 in NORMALISED space: for pixel_mean normalisation that is exactly the
    training mean pixel, not black (the paper only says "4 pixels are padded on each side"; padding the
    mean-subtracted input with zeros is the reading of Sec. 4.2 used by airbench and most reproductions)."""
    n, c, h, w = images.shape
    dev = images.device
    rows = torch.arange(h, device=dev)[None] + dy.to(dev)[:, None]    # (n, h) source rows
    cols = torch.arange(w, device=dev)[None] + dx.to(dev)[:, None]    # (n, w) source cols
    cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)     # flip after cropping
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    out = images[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                 rows.clamp(0, h - 1)[:, None, :, None], cols.clamp(0, w - 1)[:, None, None, :]]
    return out * inside[:, None].to(out.dtype)


def augment_batch(images: torch.Tensor, generator: torch.Generator, pad: int = 4, mode: str = DEFAULT_AUGMENT):
    """Batched pad-crop-flip of normalised NCHW float images (the paper's augmentation, Sec. 4.2): offsets
    uniform in -pad..pad on each axis, horizontal flip with probability 0.5; padded pixels are 0.0.
    mode crop or flip drops the other half; every mode draws the same numbers, so the crops of `crop`
    are those of `crop_flip`; none returns the images as they are."""
    if mode == "none":
        return images
    n, dev = len(images), images.device
    dy = torch.randint(-pad, pad + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(-pad, pad + 1, (n,), generator=generator, device=dev)
    flip = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
    if mode == "flip":
        dy, dx = dy.zero_(), dx.zero_()
    elif mode == "crop":
        flip = flip.zero_()
    return crop_flip(images, dy, dx, flip, pad)


def _seed(tag: str, *numbers: int) -> int:
    """A 63-bit seed from (tag, numbers): distinct streams for permutations and augmentation, no overlaps
    between (seed, epoch) pairs as there would be with seed * K + epoch."""
    text = f"{tag}:" + ",".join(str(int(n)) for n in numbers)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class DeviceBatches:
    """The training and evaluation batches of one run, resident on `device` as uint8."""

    def __init__(self, data: CifarData, device: torch.device | str, batch_size: int, seed: int,
                 augment: str = DEFAULT_AUGMENT, channels_last: bool = False):
        self.device = torch.device(device)
        self.train_images = data.train_images.to(self.device)
        self.train_labels = data.train_labels.to(self.device)
        self.eval_images = data.eval_images.to(self.device)
        self.eval_labels = data.eval_labels.to(self.device)
        self.mean = data.mean.to(self.device, torch.float32)
        self.std = data.std.to(self.device, torch.float32)
        check_augment(augment)
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.train_size = len(self.train_images)
        self.iters_per_epoch = self.train_size // batch_size  # the last partial batch of an epoch is dropped
        if self.iters_per_epoch == 0:
            raise DataError(f"batch size {batch_size} exceeds the {self.train_size} training images; "
                            f"lower the batch size or raise data.train_subset")
        self._epoch, self._perm = None, None

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=self.memory_format)

    def train_batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of global iteration `iteration` (0-based): a pure function of (seed, iteration), so resume
        is exact without saving any data RNG state."""
        epoch, step = divmod(iteration, self.iters_per_epoch)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.train_size, device=self.device,
                                        generator=self._generator(_seed("perm", self.seed, epoch)))
            self._epoch = epoch
        idx = self._perm[step * self.batch_size:(step + 1) * self.batch_size]
        x = self._normalise(self.train_images[idx])
        if self.augment != "none":
            x = augment_batch(x, self._generator(_seed("augment", self.seed, iteration)), mode=self.augment)
            x = x.contiguous(memory_format=self.memory_format)
        return x, self.train_labels[idx]

    def eval_batches(self, batch_size: int = 1000):
        """(images, labels) over the whole evaluation split, in order, normalised, no augmentation."""
        for start in range(0, len(self.eval_images), batch_size):
            yield (self._normalise(self.eval_images[start:start + batch_size]),
                   self.eval_labels[start:start + batch_size])

    def fixed_train_batch(self, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `size` images of a seed-independent (CPU-drawn, so device-independent) permutation,
        un-augmented: the probe batch for per-layer gradient norms, the same at every evaluation point."""
        perm = torch.randperm(self.train_size, generator=torch.Generator().manual_seed(SPLIT_SEED))
        idx = perm[:size].to(self.device)
        return self._normalise(self.train_images[idx]), self.train_labels[idx]
