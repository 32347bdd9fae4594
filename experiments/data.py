"""CIFAR-10 for the degradation suite: sources, one-time decoding cache, splits, normalisation, device batches.

Every source becomes uint8 tensors (N, 32, 32, 3) plus int64 labels, decoded once and cached on disk
(one file per split), so a run's data layer costs seconds. Training then runs from tensors resident on
the device with batched augmentation (cifar10-airbench style): no DataLoader, no workers, and every
batch a pure function of (seed, iteration), so a resumed run sees exactly the batches it would have.

    python -m experiments.data [hydra overrides]      # sizes, class counts, statistics, cache path
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from omegaconf import OmegaConf
from PIL import Image

from experiments import CONF
from experiments.contract import atomic_write

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SOURCES = ("cifar10", "cifar10_folder", "fake")
# Training augmentation (data.augment). crop_flip is the paper's (Sec. 4.2: pad 4, random 32x32 crop, random
# horizontal flip) and the default; a config.yaml recorded before the key existed means crop_flip.
AUGMENTATIONS = ("crop_flip", "crop", "flip", "none")
DEFAULT_AUGMENT = "crop_flip"
SPLITS = ("test", "val")
NORMALIZE = ("pixel_mean", "channel")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 1   # bump when the cache layout changes: old files then simply stop matching
SPLIT_SEED = 2016   # val hold-out and train_subset draws: fixed, independent of the run seed
VAL_FRACTION = 0.1  # 500 of 5,000 per class -> the 45k/5k split the paper tuned its schedule on
FAKE_SEED = 1512


class DataError(Exception):
    """A problem the user can fix; str(e) is one clear line (what is wrong, how to fix it)."""


class DataUnavailable(DataError):
    """The official archive is absent and was not downloaded (offline, or data.download=false); `reason` says why."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class CifarData:
    train_images: torch.Tensor   # uint8 (N, 32, 32, 3), CPU
    train_labels: torch.Tensor   # int64 (N,)
    eval_images: torch.Tensor    # uint8 (M, 32, 32, 3): the test set (split=test) or the held-out 5k (split=val)
    eval_labels: torch.Tensor
    mean: torch.Tensor           # float32 broadcastable to (3, 32, 32), [0,1] pixel units, training portion only
    std: torch.Tensor            # float32 broadcastable to (3, 32, 32); ones for pixel_mean
    source: str
    split: str
    eval_split: str
    cache_path: str | None       # the training split's cache file (None for fake)
    cache_files: tuple[str, ...] = ()  # every cache file this load used (train, and test for split=test)


# ----------------------------------------------------------------------------- config checks

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
    if cfg.get("augment", DEFAULT_AUGMENT) not in AUGMENTATIONS:
        raise DataError(f"data.augment must be one of {', '.join(AUGMENTATIONS)}, got {cfg.get('augment')!r}")
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


def _is_missing(cfg, key: str) -> bool:
    return OmegaConf.is_config(cfg) and key in cfg and OmegaConf.is_missing(cfg, key)


# ----------------------------------------------------------------------------- sources

def _official_fingerprint() -> str:
    # The decoded tensors are a function of the verified files, i.e. of their md5s.
    from torchvision.datasets import CIFAR10
    return repr((CIFAR10.tgz_md5, CIFAR10.train_list, CIFAR10.test_list, CIFAR10.meta))


def _official_ready(root: str, download: bool) -> None:
    """Make sure cifar-10-batches-py under root holds verified files, or raise DataError."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    folder = os.path.join(root, CIFAR10.base_folder)
    archive = os.path.join(root, CIFAR10.filename)
    files = CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    present = [os.path.isfile(os.path.join(folder, name)) for name, _ in files]
    for (name, md5), ok in zip(files, present):  # never use a file whose checksum fails
        if ok and not check_integrity(os.path.join(folder, name), md5):
            raise DataError(f"corrupt CIFAR-10 file {os.path.join(folder, name)} (md5 mismatch, truncated or damaged); "
                            f"delete {folder} and put the official {CIFAR10.filename} in {root}")
    if all(present):
        return
    names = ", ".join(name for name, _ in files)
    missing = (f"CIFAR-10 not found in {root}: expected {archive} (md5 {CIFAR10.tgz_md5}) or {folder}/{{{names}}}")
    ways_out = (f"put cifar-10-python.tar.gz in {root}, or use an image-folder copy: "
                f"data=cifar10_folder data.root=<folder or .tar.gz>")
    if os.path.isfile(archive):
        if not check_integrity(archive, CIFAR10.tgz_md5):
            raise DataError(f"corrupt CIFAR-10 archive {archive} (md5 mismatch, truncated or damaged); "
                            f"delete it, then {ways_out}")
    elif not download:
        raise DataUnavailable(f"{missing}; data.download is false; {ways_out}", "data.download is false")
    try:  # with a verified archive in place torchvision only extracts it; otherwise it downloads
        CIFAR10(root, train=True, download=True)
    except Exception as e:
        if os.path.isfile(archive) and not check_integrity(archive, CIFAR10.tgz_md5):
            os.remove(archive)  # a half-downloaded archive would only be reported as corrupt next time
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataUnavailable(f"{missing}; download failed ({reason}); {ways_out}", f"download failed: {reason}") from None


def prepare_source(cfg) -> None:
    """Make the data source usable before a sweep starts its runs: the official archive is downloaded and
    verified once, here, rather than by each run. Raises DataError; leaves no empty folder behind."""
    if cfg.get("source") != "cifar10":
        return  # the folder source is checked per run (validate_data_config); fake needs nothing
    root = Path(cfg["root"])
    made = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    try:
        _official_ready(str(root), bool(cfg.get("download")))
    except DataError:
        if made is not None and made.is_dir() and not any(made.rglob("*.*")):
            shutil.rmtree(made, ignore_errors=True)
        raise


def _decode_official(root: str, download: bool, split: str):
    from torchvision.datasets import CIFAR10
    _official_ready(root, download)
    try:
        ds = CIFAR10(root, train=(split == "train"), download=False)
    except RuntimeError as e:
        raise DataError(f"CIFAR-10 in {root} failed torchvision's check ({e}); delete it and put the archive back")
    if tuple(ds.classes) != CLASSES:
        raise DataError(f"batches.meta in {root} lists classes {ds.classes}, expected {list(CLASSES)}")
    return torch.from_numpy(np.ascontiguousarray(ds.data)), torch.tensor(ds.targets, dtype=torch.int64)


def _folder_fingerprint(root: str, split: str) -> str:
    """What the cache key knows of the input. An archive: its bytes (19 MB for the JPEG copy: ~0.1 s).
    A tree: per file its path, size, mtime, inode number and inode change time (ctime), without reading
    it. The ctime is set by the kernel on every write, rename, chmod or `touch` and cannot be set back
    by a user (`touch -d`, `cp -p`, `rsync -t` restore mtimes only), so two images swapped or rewritten
    with their names, sizes and mtimes kept still change the key. README, Data, says what it misses."""
    h = hashlib.sha256()
    if os.path.isfile(root):
        with open(root, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    top = _tree_split_dir(root, split)  # only the files this split is decoded from
    if top is None:  # no such folder: decoding will say so; key on what is there
        h.update("|".join(sorted(os.listdir(root))).encode())
        return h.hexdigest()
    h.update(f"{os.path.relpath(top, root)}\n".encode())

    def walk(folder: str, rel: str) -> None:  # scandir and string prefixes: ~2x faster than os.walk + relpath
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.is_dir():
                walk(e.path, f"{rel}{e.name}/")
            else:
                st = e.stat()
                h.update(f"{rel}{e.name}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}\n".encode())
    walk(top, "")
    return h.hexdigest()


def _tree_split_dir(root: str, split: str) -> str | None:
    """<root>/<split>, or <root>/<single top folder>/<split>, when it is a folder; else None."""
    base = root
    if not os.path.isdir(os.path.join(root, split)):
        subdirs = [d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d))]
        if len(subdirs) == 1:
            base = os.path.join(root, subdirs[0])
    top = os.path.join(base, split)
    return top if os.path.isdir(top) else None


def _folder_entries(root: str, split: str):
    """(path shown in errors, parts below <split>/, bytes or None for a folder) for everything under
    <root>/<split>/ or <root>/<single top folder>/<split>/; `root` is a folder or a tar archive."""
    entries, tops = [], set()
    if os.path.isfile(root):
        try:
            with tarfile.open(root, "r:*") as tf:
                for m in tf:  # one streaming pass; only the requested split's bytes are kept
                    parts = [p for p in m.name.split("/") if p not in ("", ".")]
                    if len(parts) > 1 and parts[0] == split:
                        tops.add("")
                    elif len(parts) > 2 and parts[1] == split:
                        tops.add(parts[0])
                    else:
                        continue
                    rel = parts[1:] if parts[0] == split else parts[2:]
                    if m.isfile() or m.isdir():
                        entries.append((f"{root}:{m.name}", rel, tf.extractfile(m).read() if m.isfile() else None))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            # tarfile's "r:*" lists every compression it tried, one per line: keep the first line only
            reason = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__
            raise DataError(f"cannot read {root} as a .tar.gz of an image folder ({reason}); check the file "
                            f"(a CIFAR-10 image-folder tree or a .tar/.tar.gz of one) or unpack it") from None
    else:
        top = _tree_split_dir(root, split)
        if top is not None:
            tops.add(os.path.dirname(top))
            for dirpath, dirnames, filenames in os.walk(top):
                rel_dir = Path(dirpath).relative_to(top).parts
                entries += [(os.path.join(dirpath, d), [*rel_dir, d], None) for d in dirnames]
                entries += [(os.path.join(dirpath, f), [*rel_dir, f], os.path.join(dirpath, f)) for f in filenames]
    if len(tops) != 1:
        how = "none found" if not tops else f"found several: {sorted(tops)}"
        raise DataError(f"no single {split}/ folder in {root} ({how}); expected {root}/{split}/<class>/*.png|jpg "
                        f"(or one top-level folder holding train/ and test/)")
    return entries


def _decode_folder(root: str, split: str):
    files = []
    for shown, rel, payload in _folder_entries(root, split):
        if any(p.startswith(".") for p in rel):
            continue  # .DS_Store, ._* AppleDouble files and the like
        if rel[0] not in CLASSES:
            raise DataError(f"unexpected entry {shown}: class folders must be exactly {' '.join(CLASSES)}")
        if payload is None and len(rel) == 1:
            continue  # a class folder itself
        if len(rel) != 2 or payload is None or not rel[1].lower().endswith(IMAGE_EXTS):
            raise DataError(f"unexpected entry {shown}: expected only {split}/<class>/*.png|jpg|jpeg")
        files.append((CLASSES.index(rel[0]), rel[1], shown, payload))
    counts = np.bincount([f[0] for f in files], minlength=10)
    if (counts == 0).any():
        cls = CLASSES[int(np.argmin(counts))]
        raise DataError(f"class folder {split}/{cls} in {root} is missing or holds no images; every one of "
                        f"{' '.join(CLASSES)} needs images")
    files.sort(key=lambda f: (f[0], f[1]))  # class, then file name: the same order for a tree and its tarball
    images = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    for i, (_, _, shown, payload) in enumerate(files):  # a plain loop decodes the 60k JPEGs in ~3 s
        try:
            with Image.open(payload if isinstance(payload, str) else io.BytesIO(payload)) as im:
                if im.size != (32, 32):
                    raise DataError(f"image {shown} is {im.size[0]}x{im.size[1]}, expected 32x32; "
                                    f"CIFAR-10 images must not be resized")
                images[i] = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot decode image {shown} ({e}); replace or remove it") from None
    return torch.from_numpy(images), torch.tensor([f[0] for f in files], dtype=torch.int64)


def _fake(n: int, split: str):
    """Noise plus a fixed colour per class: a signal a tiny net learns in a few hundred steps, robust to
    crops and flips (so the loss visibly falls with augmentation on)."""
    colours = torch.rand(10, 1, 1, 3, generator=torch.Generator().manual_seed(FAKE_SEED))
    g = torch.Generator().manual_seed(FAKE_SEED + (1 if split == "train" else 2))
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    images = 0.5 * torch.rand(n, 32, 32, 3, generator=g) + 0.5 * colours[labels]
    return (images * 255).round().to(torch.uint8), labels


# ----------------------------------------------------------------------------- cache

def _digest(images: torch.Tensor, labels: torch.Tensor) -> int:
    return zlib.crc32(labels.numpy().tobytes(), zlib.crc32(images.numpy().tobytes()))  # ~20 ms for 50k images


def _read_cache(path: str, key: str):
    """The cached tensors, or None; a damaged file is reported, removed and rebuilt, never used."""
    if not os.path.exists(path):
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = obj["images"], obj["labels"]
        ok = (obj["key"] == key and images.dtype == torch.uint8 and images.shape[1:] == (32, 32, 3)
              and labels.dtype == torch.int64 and labels.shape == images.shape[:1]
              and obj["digest"] == _digest(images, labels))
        if not ok:
            raise ValueError("content does not match its checksum")
        return images, labels
    except Exception as e:  # on stderr, as every warning of the suite: stdout is for results
        print(f"warning: data cache {path} is corrupt ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
              f"rebuilding it", file=sys.stderr)
        try:
            os.remove(path)
        except OSError:
            pass
        return None


def _cached(cache_dir: str | None, name: str, key: str, decode, built: list | None = None):
    """Decode once, then load from `<cache_dir>/<name>.pt`. Concurrent runs serialise on a lock (one
    decodes, the others then read its file); the file appears atomically, and an error leaves nothing.
    A file this call creates is appended to `built` (with its lock file and whether the folder is new)."""
    if not cache_dir:
        return *decode(), None
    path = os.path.join(cache_dir, f"{name}.pt")
    hit = _read_cache(path, key)
    if hit is not None:
        return *hit, path
    made_dir = not os.path.isdir(cache_dir)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        lock = FileLock(path + ".lock")
        lock.acquire()
    except OSError as e:
        raise DataError(f"cannot write the data cache in {cache_dir} ({e}); fix its permissions or set "
                        f"data.cache_dir=<writable folder>") from None
    try:
        hit = _read_cache(path, key)  # another run may have built it while we waited
        if hit is not None:
            return *hit, path
        images, labels = decode()
        entry = {"key": key, "images": images, "labels": labels, "digest": _digest(images, labels)}
        # 0644 whatever the umask: the cache is shared by everyone's runs
        atomic_write(Path(path), lambda f: torch.save(entry, f), mode=0o644)
        if built is not None:
            built.append((path, made_dir))
        return images, labels, path
    except BaseException:
        if not os.path.exists(path):  # errors leave the cache as they found it: drop our lock and folder
            _remove(path + ".lock", os.remove)
            if made_dir:
                _remove(cache_dir, os.rmdir)
        raise
    finally:
        lock.release()


def _remove(path: str, how) -> None:
    try:
        how(path)
    except OSError:
        pass  # another run is using it: that run's business now


def _load_split(cfg, split: str, built: list | None = None):
    """uint8 images (N, 32, 32, 3), int64 labels and cache path of the `train` or `test` split."""
    source = cfg.source
    if source == "fake":
        return *_fake(cfg.num_train if split == "train" else cfg.num_eval, split), None
    root = str(cfg.root)
    if source == "cifar10":
        fingerprint, decode = _official_fingerprint(), lambda: _decode_official(root, bool(cfg.get("download")), split)
    else:
        fingerprint, decode = _folder_fingerprint(root, split), lambda: _decode_folder(root, split)
    key = hashlib.sha256(f"v{CACHE_VERSION}|{source}|{split}|{fingerprint}".encode()).hexdigest()
    return _cached(cfg.get("cache_dir"), f"{source}-{split}-{key[:16]}", key, decode, built)


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


def _select(labels: torch.Tensor, split: str, subset: int | None):
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
        images, labels, train_cache = _load_split(cfg, "train", built)
        train_idx, held_idx = _select(labels, cfg.split, cfg.get("train_subset"))
        cache_files = (train_cache,) if train_cache else ()
        if cfg.split == "val":  # the test set is never loaded
            eval_images, eval_labels = images[held_idx], labels[held_idx]
        else:
            eval_images, eval_labels, test_cache = _load_split(cfg, "test", built)
            cache_files += (test_cache,) if test_cache else ()
    except DataError:  # e.g. an empty test class: no half cache (a train file without its test file) stays
        for path, made_dir in built:
            for leftover in (path, path + ".lock"):
                _remove(leftover, os.remove)
            if made_dir:
                _remove(os.path.dirname(path), os.rmdir)
        raise
    train_images, train_labels = images, labels
    if len(train_idx) < len(labels):  # indexing copies 150 MB: only when the split or subset needs it
        train_images, train_labels = images[train_idx], labels[train_idx]
    mean, std = _normalisation(train_images, cfg.normalize)  # training portion only, never evaluation images
    return CifarData(train_images, train_labels, eval_images, eval_labels, mean, std, cfg.source, cfg.split,
                     cfg.split, train_cache, cache_files)


# ----------------------------------------------------------------------------- device batches

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


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4, mode: str = DEFAULT_AUGMENT):
    """Batched pad-crop-flip of normalised NCHW float images (the paper's augmentation, Sec. 4.2): offsets
    uniform in -pad..pad on each axis, horizontal flip with probability 0.5; padded pixels are 0.0.
    mode crop or flip drops the other half; every mode draws the same numbers, so the crops of `crop`
    are those of `crop_flip`."""
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
        if augment not in AUGMENTATIONS:
            raise DataError(f"data.augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
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
            x = augment(x, self._generator(_seed("augment", self.seed, iteration)), mode=self.augment)
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


# ----------------------------------------------------------------------------- command line

def _describe(data: CifarData, seconds: float) -> str:
    mean, std = channel_stats(data.train_images)
    counts = lambda labels: " ".join(f"{n}:{int(k)}" for n, k in zip(CLASSES, torch.bincount(labels, minlength=10)))
    return "\n".join([
        f"source        {data.source} (split={data.split})",
        f"train         {len(data.train_images)} images  {counts(data.train_labels)}",
        f"eval ({data.eval_split})".ljust(14) + f"{len(data.eval_images)} images  {counts(data.eval_labels)}",
        f"mean (train)  " + " ".join(f"{v:.4f}" for v in mean.tolist()) + "   per channel, [0,1] units",
        f"std (train)   " + " ".join(f"{v:.4f}" for v in std.tolist()),
        f"cache         " + (", ".join(data.cache_files) or "none (fake data is generated)"),
        f"loaded in     {seconds:.2f} s",
    ])


def _main() -> None:
    import hydra

    from experiments.runfiles import hydra_quote

    # `make data DATA_ROOT=...` passes the path as `--data-root PATH`: quoted here, a space, a comma or
    # a non-ASCII letter in it is part of the path, not Hydra syntax.
    if "--data-root" in sys.argv[1:-1]:
        i = sys.argv.index("--data-root")
        sys.argv[i:i + 2] = [f"data.root={hydra_quote(sys.argv[i + 1])}"]

    @hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
    def main(cfg) -> None:
        start = time.perf_counter()
        try:
            data = load_data(cfg.data)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(_describe(data, time.perf_counter() - start))

    main()


if __name__ == "__main__":
    _main()
