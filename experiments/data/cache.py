"""The one-time decoding cache: each split of a source is decoded once into `<cache_dir>/<name>.pt`
(uint8 images, int64 labels, the key they were decoded under and a checksum), so a run's data layer
costs seconds. The key is a hash of the cache version, the source, the split and the input's
fingerprint: a changed input or layout simply stops matching, and a damaged file is rebuilt."""
from __future__ import annotations

import errno
import hashlib
import io
import os
import sys
import zlib
from pathlib import Path

import torch
from filelock import FileLock

from experiments.contract import atomic_write
from experiments.data.sources import DataError, fake, fingerprint_and_decoder

CACHE_VERSION = 1   # bump when the cache layout changes: old files then simply stop matching


def load_split(cfg, split: str, built: list | None = None):
    """uint8 images (N, 32, 32, 3), int64 labels and cache path of the `train` or `test` split."""
    source = cfg.source
    if source == "fake":  # generated in milliseconds: never cached
        return *fake(cfg.num_train if split == "train" else cfg.num_eval, split), None
    fingerprint, decode = fingerprint_and_decoder(cfg, split)
    key = hashlib.sha256(f"v{CACHE_VERSION}|{source}|{split}|{fingerprint}".encode()).hexdigest()
    return _cached(cfg.get("cache_dir"), f"{source}-{split}-{key[:16]}", key, decode, built)


def discard(built: list[tuple[str, bool]]) -> None:
    """Remove the files `_cached` recorded in `built` (and folders it made): a load that fails halfway
    leaves no half cache, e.g. a train file without its test file."""
    for path, made_dir in built:
        for leftover in (path, path + ".lock"):
            _remove(leftover, os.remove)
        if made_dir:
            _remove(os.path.dirname(path), os.rmdir)


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
        _write(path, {"key": key, "images": images, "labels": labels, "digest": _digest(images, labels)})
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


def _write(path: str, entry: dict) -> None:
    """The cache file, whole or not at all; a full disk is one DataError naming the file and the fix.
    Serialised in memory first (one copy of the split, ~180 MB at most): torch.save writing straight to
    a full disk says only "enforce fail at inline_container.cc", while a plain write keeps the errno."""
    buffer = io.BytesIO()
    torch.save(entry, buffer)
    try:  # 0644 whatever the umask: the cache is shared by everyone's runs
        atomic_write(Path(path), lambda f: f.write(buffer.getbuffer()), mode=0o644)
    except OSError as e:
        code = errno.errorcode.get(e.errno, "") if e.errno else ""
        fix = ("free disk space there" if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
               else "make that folder writable")
        raise DataError(f"cannot write the data cache {path} ({code + ': ' if code else ''}{e.strerror or e}); "
                        f"{fix}, or set data.cache_dir=<another folder> (null: no cache, decode every run)") from None


def _remove(path: str, how) -> None:
    try:
        how(path)
    except OSError:
        pass  # another run is using it: that run's business now
