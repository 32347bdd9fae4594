"""The three CIFAR-10 sources, each decoded to uint8 images (N, 32, 32, 3) and int64 labels: the official
archive (torchvision's download and md5 check), an image folder or a .tar(.gz) of one, and fake data.
Each cached source also gives a fingerprint of its input, from which the cache derives its key."""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SOURCES = ("cifar10", "cifar10_folder", "fake")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
FAKE_SEED = 1512


class DataError(Exception):
    """A problem the user can fix; str(e) is one clear line (what is wrong, how to fix it)."""


class DataUnavailable(DataError):
    """The official archive is absent and was not downloaded (offline, or data.download=false); `reason` says why."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def fingerprint_and_decoder(cfg, split: str):
    """(fingerprint of the input, a function decoding the `train` or `test` split) of a cached source:
    the decoding runs only when the cache misses."""
    root = str(cfg.root)
    if cfg.source == "cifar10":
        return _official_fingerprint(), lambda: _decode_official(root, bool(cfg.get("download")), split)
    return _folder_fingerprint(root, split), lambda: _decode_folder(root, split)


# ----------------------------------------------------------------------------- the official archive

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


# ----------------------------------------------------------------------------- an image folder or its archive

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
    """(path shown in errors, parts below <split>/, bytes or path of a file, or None for a folder) for
    everything under <root>/<split>/ or <root>/<single top folder>/<split>/; `root` is a folder or a tar
    archive."""
    entries, tops = [], set()
    if os.path.isfile(root):
        try:
            with tarfile.open(root, "r:*") as tf:
                entries, tops = _archive_entries(tf, root, split)
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


# A 32x32 image is 3 KiB of pixels; a PNG or JPEG of one stays far below this even with a colour profile
# and EXIF/XMP blocks. A larger archive member cannot be an image: it is refused from its header, before
# a byte of it is read (a 1000:1 compressed member would otherwise fill the memory).
MAX_IMAGE_BYTES = 1 << 20
# The bytes of one split's members are held until decoded: the PNG copy of CIFAR-10 is ~150 MB, the JPEG
# copy 19 MB. Many members just under MAX_IMAGE_BYTES would add up; a bigger split is refused as it grows.
MAX_SPLIT_BYTES = 2 << 30
MAX_LINK_HOPS = 40  # as Linux's MAXSYMLINKS: a longer chain of links is a loop


def _archive_entries(tf: tarfile.TarFile, root: str, split: str):
    """_folder_entries of an archive, in one streaming pass that keeps only this split's bytes. Hard and
    symbolic links are read as the files they name inside the archive (a tree and its tarball read the
    same); one that names nothing in the archive is refused."""
    entries, tops, members, links, total = [], set(), {}, [], 0
    for m in tf:
        name = _member_name(m.name)
        members[name] = m  # headers only: what a link may name
        parts = name.split("/")
        if len(parts) > 1 and parts[0] == split:
            tops.add("")
        elif len(parts) > 2 and parts[1] == split:
            tops.add(parts[0])
        else:
            continue
        rel, shown = parts[1:] if parts[0] == split else parts[2:], f"{root}:{m.name}"
        if m.isdir():
            entries.append((shown, rel, None))
        elif m.isfile():
            total = _check_size(m, shown, total, root, split)
            entries.append((shown, rel, tf.extractfile(m).read()))
        elif m.islnk() or m.issym():  # resolved once every header is known: a symlink may point ahead
            links.append((len(entries), m))
            entries.append((shown, rel, b""))
    targets = []
    for i, m in links:
        target = _link_target(m, members, root)
        total = _check_size(target, f"{root}:{m.name}", total, root, split)
        targets.append((i, target))
    # Read in archive order: a compressed stream seeks forward cheaply, backward only by starting over.
    for i, target in sorted(targets, key=lambda t: t[1].offset_data):
        shown, rel, _ = entries[i]
        entries[i] = (shown, rel, tf.extractfile(target).read())
    return entries, tops


def _member_name(name: str) -> str:
    """An archive name as a relative POSIX path: './train/cat/1.png' and 'train//cat/1.png' are 'train/cat/1.png'."""
    return posixpath.normpath(name).lstrip("/")


def _check_size(m: tarfile.TarInfo, shown: str, total: int, root: str, split: str) -> int:
    """The split's byte count with member `m` added; DataError, before reading it, when too big."""
    if m.size > MAX_IMAGE_BYTES:
        raise DataError(f"archive member {shown} is {m.size:,} bytes, more than any 32x32 image could be "
                        f"({MAX_IMAGE_BYTES:,}); not read; remove it from {root} or unpack the archive")
    total += m.size
    if total > MAX_SPLIT_BYTES:
        raise DataError(f"the {split}/ images in {root} add up to more than {MAX_SPLIT_BYTES:,} bytes, far more "
                        f"than CIFAR-10 (~150 MB as PNG); not read; check the archive or unpack it")
    return total


def _link_target(link: tarfile.TarInfo, members: dict, root: str) -> tarfile.TarInfo:
    """The regular member a hard or symbolic link member names, through any chain of links."""
    m = link
    for _ in range(MAX_LINK_HOPS):
        if not (m.islnk() or m.issym()):
            break
        # a hard link names an archive path; a symlink a path relative to its own folder
        name = m.linkname if m.islnk() else posixpath.join(posixpath.dirname(_member_name(m.name)), m.linkname)
        m = None if posixpath.isabs(name) else members.get(posixpath.normpath(name))
        if m is None:
            raise DataError(f"archive member {root}:{link.name} links to {name}, which is not a file in the "
                            f"archive; store the file itself (tar -h stores files, not links) or unpack it")
    if not m.isfile():
        raise DataError(f"archive member {root}:{link.name} is a link to a folder or a loop of links, not an "
                        f"image; remove it from the archive or unpack it")
    return m


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


# ----------------------------------------------------------------------------- fake

def fake(n: int, split: str):
    """Noise plus a fixed colour per class: a signal a tiny net learns in a few hundred steps, robust to
    crops and flips (so the loss visibly falls with augmentation on)."""
    colours = torch.rand(10, 1, 1, 3, generator=torch.Generator().manual_seed(FAKE_SEED))
    g = torch.Generator().manual_seed(FAKE_SEED + (1 if split == "train" else 2))
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    images = 0.5 * torch.rand(n, 32, 32, 3, generator=g) + 0.5 * colours[labels]
    return (images * 255).round().to(torch.uint8), labels
