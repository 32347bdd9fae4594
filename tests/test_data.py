"""The data layer: sources agree, user errors are clear and leave no cache, splits and statistics are
honest, augmentation is the paper's, batches are a pure function of (seed, iteration).

One file (~430 lines) for the one package experiments/data/: its fixtures write every on-disk source format."""
import hashlib
import os
import pickle
import subprocess
import sys
import tarfile
import time
import urllib.error
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision.datasets import CIFAR10

from experiments import data as D
from experiments.data import sources
from experiments.data.dataset import split_indices

REPO = Path(__file__).resolve().parents[1]
SHARED_TARBALL = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"
TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 5


def cfg(tmp_path, **overrides):
    base = dict(source="cifar10", root=str(tmp_path / "cifar"), download=False, split="test", train_subset=None,
                normalize="pixel_mean", cache_dir=str(tmp_path / "cache"), num_train=200, num_eval=50)
    return OmegaConf.create({**base, **overrides})


def miniature(per_class, seed):
    """Random uint8 images ordered by class, so the official batch order equals the folder's (class, name)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    return rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), labels


@pytest.fixture
def official(tmp_path, monkeypatch):
    """A miniature cifar-10-batches-py (pickled dicts, channel-major rows) with torchvision's md5 table
    pointed at the generated files, as the real table points at the real ones."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train, test = miniature(TRAIN_PER_CLASS, 0), miniature(TEST_PER_CLASS, 1)

    def write(name, obj):
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    def batch(images, labels):
        return {"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072), "labels": labels.tolist()}

    chunks = np.array_split(np.arange(len(train[1])), 5)
    monkeypatch.setattr(CIFAR10, "train_list", [write(f"data_batch_{i + 1}", batch(train[0][c], train[1][c]))
                                                for i, c in enumerate(chunks)])
    monkeypatch.setattr(CIFAR10, "test_list", [write("test_batch", batch(*test))])
    meta = write("batches.meta", {"label_names": list(D.CLASSES), "num_vis": 3072})
    monkeypatch.setattr(CIFAR10, "meta", {"filename": meta[0], "key": "label_names", "md5": meta[1]})
    return tmp_path / "cifar", train, test


def write_folder(root, split, images, labels):
    for i, (img, y) in enumerate(zip(images, labels)):
        (root / split / D.CLASSES[y]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / split / D.CLASSES[y] / f"{i:05d}.png")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pngs"
    train, test = miniature(TRAIN_PER_CLASS, 0), miniature(TEST_PER_CLASS, 1)
    write_folder(root, "train", *train)
    write_folder(root, "test", *test)
    return root, train, test


@pytest.fixture
def no_network(monkeypatch):
    """torchvision's download path fails as it does offline, without ever opening a connection."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.setattr("torchvision.datasets.utils._urlretrieve", offline)


def assert_no_cache(tmp_path):
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# ----------------------------------------------------------------------------- sources

def test_official_folder_and_tarball_load_identical_tensors(tmp_path, official, folder):
    _, train, test = official
    tarball = tmp_path / "copy.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(folder[0], arcname="cifar10-png")  # one top-level folder, like the shared copy
    loads = [D.load_data(cfg(tmp_path)), D.load_data(cfg(tmp_path, source="cifar10_folder", root=str(folder[0]))),
             D.load_data(cfg(tmp_path, source="cifar10_folder", root=str(tarball)))]
    for d in loads:
        assert d.train_images.dtype == torch.uint8 and d.train_labels.dtype == torch.int64
        assert torch.equal(d.train_images, torch.from_numpy(train[0])) and d.train_labels.tolist() == train[1].tolist()
        assert torch.equal(d.eval_images, torch.from_numpy(test[0])) and d.eval_labels.tolist() == test[1].tolist()
        assert d.split == "test" and os.path.exists(d.cache_files[0])
    assert len({d.cache_files[0] for d in loads}) == 3  # keyed by source and fingerprint


def test_official_archive_is_verified_and_extracted_without_network(tmp_path, official, monkeypatch, no_network):
    root, train, _ = official
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5((root / "cifar-10-python.tar.gz").read_bytes()).hexdigest())
    for f in (root / "cifar-10-batches-py").iterdir():
        f.unlink()
    d = D.load_data(cfg(tmp_path, download=True))
    assert torch.equal(d.train_images, torch.from_numpy(train[0]))


def test_missing_official_files_name_folder_files_and_both_ways_out(tmp_path):
    with pytest.raises(D.DataError) as e:
        D.load_data(cfg(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cifar") in msg
    for part in ("cifar-10-python.tar.gz", "data_batch_1", "test_batch", "data=cifar10_folder data.root="):
        assert part in msg
    assert_no_cache(tmp_path)


def test_failed_download_becomes_the_clear_error(tmp_path, no_network):
    with pytest.raises(D.DataError, match="download failed.*data=cifar10_folder"):
        D.load_data(cfg(tmp_path, download=True))
    assert_no_cache(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_checksum_failing_batch_is_reported_corrupt(tmp_path, official, damage):
    path = official[0] / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(D.DataError, match=f"corrupt CIFAR-10 file {path}"):
        D.load_data(cfg(tmp_path))
    assert_no_cache(tmp_path)


def test_checksum_failing_archive_is_reported_corrupt(tmp_path):
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(D.DataError, match="corrupt CIFAR-10 archive"):
        D.load_data(cfg(tmp_path, download=True))
    assert_no_cache(tmp_path)


def _eleventh_class(root):
    (root / "train" / "unicorn").mkdir()
    Image.new("RGB", (32, 32)).save(root / "train" / "unicorn" / "0.png")
    return "unicorn"


def _wrong_size(root):
    Image.new("RGB", (33, 32)).save(root / "train" / "cat" / "00061.png")
    return "00061.png is 33x32"


def _empty_class(root):
    for f in (root / "train" / "dog").iterdir():
        f.unlink()
    return "train/dog"


@pytest.mark.parametrize("damage", [_eleventh_class, _wrong_size, _empty_class])
def test_bad_folder_names_the_offending_entry_and_caches_nothing(tmp_path, folder, damage):
    expected = damage(folder[0])
    with pytest.raises(D.DataError, match=expected):
        D.load_data(cfg(tmp_path, source="cifar10_folder", root=str(folder[0])))
    assert_no_cache(tmp_path)


def test_fake_is_deterministic_and_learnable(tmp_path):
    a, b = D.load_data(cfg(tmp_path, source="fake")), D.load_data(cfg(tmp_path, source="fake"))
    assert torch.equal(a.train_images, b.train_images) and a.cache_files == ()
    assert (len(a.train_images), len(a.eval_images)) == (200, 50)
    # nearest class-mean colour already separates the classes: a net can learn them
    colour = lambda x: x.float().mean((1, 2))
    centres = torch.stack([colour(a.train_images[a.train_labels == c]).mean(0) for c in range(10)])
    pred = torch.cdist(colour(a.eval_images), centres).argmin(1)
    assert (pred == a.eval_labels).float().mean() > 0.9
    assert_no_cache(tmp_path)


@pytest.mark.parametrize("bad, match", [
    (dict(source="imagenet"), "cifar10, cifar10_folder, fake"),
    (dict(split="train"), "data.split"),
    (dict(train_subset=0), "train_subset"),
    (dict(train_subset="10"), "train_subset"),
    (dict(normalize="zca"), "data.normalize"),
    (dict(source="cifar10_folder", root=None), "data.root is required"),
    (dict(source="cifar10_folder", root="/nonexistent/cifar"), "/nonexistent/cifar does not exist"),
    (dict(source="fake", num_train=0), "num_train"),
])
def test_config_errors_are_caught_early_and_create_nothing(tmp_path, bad, match):
    with pytest.raises(D.DataError, match=match):
        D.validate_data_config(cfg(tmp_path, **bad))
    assert not any(tmp_path.iterdir())


def test_command_line_reports_error_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.data", "data=cifar10", f"data.root={tmp_path}",
                          "data.download=false", f"data.cache_dir={tmp_path}/cache"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: CIFAR-10 not found") and out.stderr.count("\n") == 1
    assert_no_cache(tmp_path)


# ----------------------------------------------------------------------------- splits, statistics, cache

@pytest.mark.parametrize("normalize", ["pixel_mean", "channel"])
def test_statistics_come_from_training_images_only(tmp_path, folder, normalize):
    root, train, test = folder
    clean = D.load_data(cfg(tmp_path, source="cifar10_folder", root=str(root), normalize=normalize))
    write_folder(root, "test", np.full_like(test[0], 255), test[1])  # poison the test split
    poisoned = D.load_data(cfg(tmp_path, source="cifar10_folder", root=str(root), normalize=normalize))
    assert (poisoned.eval_images == 255).all()
    assert torch.equal(clean.mean, poisoned.mean) and torch.equal(clean.std, poisoned.std)
    x = torch.from_numpy(train[0]).double().permute(0, 3, 1, 2) / 255
    if normalize == "pixel_mean":
        assert torch.allclose(clean.mean.double(), x.mean(0), atol=1e-6) and (clean.std == 1).all()
    else:
        assert torch.allclose(clean.mean.double().flatten(), x.mean((0, 2, 3)), atol=1e-6)
        assert torch.allclose(clean.std.double().flatten(), x.std((0, 2, 3), unbiased=False), atol=1e-6)


def test_val_split_is_stratified_deterministic_and_never_loads_test(tmp_path, folder):
    root, train, _ = folder
    for f in (root / "test").rglob("*.png"):
        f.unlink()  # had the test split been loaded, this would be an error
    c = cfg(tmp_path, source="cifar10_folder", root=str(root), split="val")
    a, b = D.load_data(c), D.load_data(c)
    assert a.split == "val" and len(a.cache_files) == 1
    assert torch.bincount(a.eval_labels).tolist() == [TRAIN_PER_CLASS // 10] * 10  # 10% per class (500 of 5k)
    assert torch.bincount(a.train_labels).tolist() == [TRAIN_PER_CLASS * 9 // 10] * 10
    assert torch.equal(a.eval_images, b.eval_images) and torch.equal(a.train_images, b.train_images)
    everything = {img.tobytes() for img in train[0]}
    held, kept = {x.numpy().tobytes() for x in a.eval_images}, {x.numpy().tobytes() for x in a.train_images}
    assert held.isdisjoint(kept) and held | kept == everything
    sub = D.load_data(cfg(tmp_path, source="cifar10_folder", root=str(root), split="val", train_subset=53))
    assert torch.bincount(sub.train_labels).tolist() == [6, 6, 6] + [5] * 7
    assert torch.equal(sub.eval_images, a.eval_images)  # the subset never eats into the held-out images


def test_train_subset_is_stratified_nested_and_bounded(tmp_path):
    labels = torch.arange(1000) % 10
    small, _ = split_indices(labels, "test", 100)
    large, _ = split_indices(labels, "test", 300)
    assert torch.bincount(labels[small]).tolist() == [10] * 10
    assert set(small.tolist()) <= set(large.tolist())
    with pytest.raises(D.DataError, match="exceeds the 900 training images"):
        split_indices(labels, "val", 901)


def test_cache_is_hit_and_a_corrupt_cache_is_rebuilt(tmp_path, official, monkeypatch, capsys):
    first = D.load_data(cfg(tmp_path))
    real_decode = sources._decode_official

    def must_not_decode(*args):
        raise AssertionError("decoded again instead of reading the cache")
    monkeypatch.setattr(sources, "_decode_official", must_not_decode)
    second = D.load_data(cfg(tmp_path))
    assert torch.equal(first.train_images, second.train_images) and first.cache_files == second.cache_files
    monkeypatch.setattr(sources, "_decode_official", real_decode)
    for damage in ("truncate", "flip_byte"):
        raw = bytearray(Path(first.cache_files[0]).read_bytes())
        if damage == "truncate":
            raw = raw[: len(raw) // 3]
        else:
            raw[len(raw) // 2] ^= 0xFF  # inside the image payload: only the stored checksum catches it
        Path(first.cache_files[0]).write_bytes(bytes(raw))
        capsys.readouterr()
        rebuilt = D.load_data(cfg(tmp_path))
        err = capsys.readouterr().err
        assert err.startswith(f"warning: data cache {first.cache_files[0]} is corrupt") and "rebuilding it" in err
        assert torch.equal(rebuilt.train_images, first.train_images)


def test_a_cache_file_in_the_established_format_is_read_not_rebuilt(tmp_path, folder, monkeypatch):
    """The cache's file names and content are a format: caches written by earlier versions keep being used.
    Files written by hand under the names the key formula gives, holding images the folder does not
    have, are what load_data returns, and nothing is decoded."""
    tarball = tmp_path / "copy.tar"
    with tarfile.open(tarball, "w") as tf:
        tf.add(folder[0], arcname="pngs")
    fingerprint = hashlib.sha256(tarball.read_bytes()).hexdigest()
    (tmp_path / "cache").mkdir()
    planted = []
    for split, n in (("train", 30), ("test", 10)):
        key = hashlib.sha256(f"v1|cifar10_folder|{split}|{fingerprint}".encode()).hexdigest()
        images, labels = torch.full((n, 32, 32, 3), 7, dtype=torch.uint8), torch.arange(n) % 10
        digest = zlib.crc32(labels.numpy().tobytes(), zlib.crc32(images.numpy().tobytes()))
        planted.append(str(tmp_path / "cache" / f"cifar10_folder-{split}-{key[:16]}.pt"))
        torch.save({"key": key, "images": images, "labels": labels, "digest": digest}, planted[-1])
    monkeypatch.setattr(sources, "_decode_folder", lambda *args: pytest.fail("decoded instead of reading the cache"))
    d = D.load_data(cfg(tmp_path, source="cifar10_folder", root=str(tarball)))
    assert d.cache_files == tuple(planted)
    assert (len(d.train_images), len(d.eval_images)) == (30, 10) and (d.train_images == 7).all()


def test_concurrent_first_runs_decode_once_and_share_the_cache(tmp_path, folder, monkeypatch):
    real_decode, calls = sources._decode_folder, []

    def slow_decode(root, split):
        calls.append(split)
        time.sleep(0.3)  # long enough for the other run to arrive while this one holds the lock
        return real_decode(root, split)
    monkeypatch.setattr(sources, "_decode_folder", slow_decode)
    c = cfg(tmp_path, source="cifar10_folder", root=str(folder[0]))
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: D.load_data(c), range(2))
    assert sorted(calls) == ["test", "train"] and torch.equal(a.train_images, b.train_images)
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.pt")) == sorted(Path(p).name for p in a.cache_files)


# ----------------------------------------------------------------------------- augmentation and batches

def test_crop_offsets_cover_minus4_to_4_uniformly_and_flip_half_the_time():
    n = 9000
    pos = torch.stack(torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")) + 1  # (2, 32, 32)
    out = D.augment_batch(pos.expand(n, 2, 32, 32), torch.Generator().manual_seed(0))
    flipped = out[:, 1, 16, 17] < out[:, 1, 16, 16]
    dy = out[:, 0, 16, 16] - 17
    dx = out[:, 1, 16, 16] - torch.where(flipped, 16.0, 17.0)
    for offsets in (dy, dx):
        counts = torch.bincount((offsets + 4).long(), minlength=9)
        assert len(counts) == 9 and (counts - n / 9).abs().max() < 0.15 * n / 9
    assert abs(flipped.float().mean() - 0.5) < 0.03


def test_augment_modes_draw_the_papers_numbers_and_keep_their_half():
    x = torch.randn(64, 3, 32, 32)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    g = gen()  # the paper's default: the draws of the original pad-crop-flip, bit for bit
    dy, dx = (torch.randint(-4, 5, (64,), generator=g) for _ in range(2))
    flip = torch.randint(0, 2, (64,), generator=g).bool()
    assert torch.equal(D.augment_batch(x, gen()), D.crop_flip(x, dy, dx, flip))
    assert torch.equal(D.augment_batch(x, gen(), mode="crop"), D.crop_flip(x, dy, dx, torch.zeros_like(flip)))
    flipped = D.augment_batch(x, gen(), mode="flip")
    assert torch.equal(flipped, torch.where(flip[:, None, None, None], x.flip(-1), x))
    assert torch.equal(D.augment_batch(x, gen(), mode="none"), x)


def test_data_augment_none_trains_on_the_original_views_and_bad_values_are_refused():
    data = D.load_data(OmegaConf.create({"source": "fake", "num_train": 64, "num_eval": 16, "split": "test",
                                         "normalize": "pixel_mean", "cache_dir": "unused"}))
    plain = D.DeviceBatches(data, "cpu", 16, seed=0, augment="none")
    x, y = plain.train_batch(0)
    idx = plain._perm[:16]
    assert torch.equal(x, plain._normalise(plain.train_images[idx])) and torch.equal(y, plain.train_labels[idx])
    assert not torch.equal(D.DeviceBatches(data, "cpu", 16, seed=0).train_batch(0)[0], x)
    with pytest.raises(D.DataError, match="data.augment must be one of crop_flip, crop, flip, none"):
        D.validate_data_config(OmegaConf.create({"source": "fake", "split": "test", "normalize": "pixel_mean",
                                                 "augment": "mixup", "num_train": 64, "num_eval": 16}))


def test_crop_identity_flip_and_zero_padding():
    x = torch.randn(3, 3, 32, 32)
    zero, no = torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool)
    assert torch.equal(D.crop_flip(x, zero, zero, no), x)
    assert torch.equal(D.crop_flip(x, zero, zero, ~no), x.flip(-1))
    out = D.crop_flip(x, zero - 4, zero + 4, no)  # window moved up 4 and right 4
    assert (out[:, :, :4] == 0.0).all() and (out[:, :, :, 28:] == 0.0).all()
    assert torch.equal(out[:, :, 4:, :28], x[:, :, :28, 4:])


def test_batches_are_a_pure_function_of_seed_and_iteration(tmp_path):
    data = D.load_data(cfg(tmp_path, source="fake", num_train=320))
    first = D.DeviceBatches(data, "cpu", batch_size=64, seed=3)
    assert (first.iters_per_epoch, first.train_size) == (5, 320)
    seen = [first.train_batch(k) for k in range(12)]  # crosses two epoch boundaries
    resumed = D.DeviceBatches(data, "cpu", batch_size=64, seed=3)
    for k in (7, 2, 11):  # a fresh instance, any order: what a resumed run sees
        x, y = resumed.train_batch(k)
        assert torch.equal(x, seen[k][0]) and torch.equal(y, seen[k][1])
    assert not torch.equal(seen[0][0], seen[1][0]) and not torch.equal(seen[0][0], seen[5][0])
    other = D.DeviceBatches(data, "cpu", batch_size=64, seed=4)
    assert not torch.equal(other.train_batch(0)[0], seen[0][0])
    epoch = torch.cat([first.train_batch(k)[1] for k in range(5)])
    assert torch.equal(torch.bincount(epoch, minlength=10), torch.bincount(data.train_labels, minlength=10))
    assert torch.equal(first.fixed_train_batch(16)[0], other.fixed_train_batch(16)[0])


def test_eval_batches_in_order_normalised_and_channels_last(tmp_path):
    data = D.load_data(cfg(tmp_path, source="fake"))
    batches = D.DeviceBatches(data, "cpu", batch_size=32, seed=0, channels_last=True)
    xs, ys = zip(*batches.eval_batches(batch_size=20))
    expected = data.eval_images.permute(0, 3, 1, 2).float() / 255 - data.mean
    assert torch.allclose(torch.cat(xs), expected) and torch.equal(torch.cat(ys), data.eval_labels)
    x, y = batches.train_batch(0)
    assert x.dtype == torch.float32 and x.shape == (32, 3, 32, 32) and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- the shared JPEG copy

@pytest.mark.slow
@pytest.mark.skipif(not SHARED_TARBALL.exists(), reason=f"shared CIFAR-10 JPEG copy not found at {SHARED_TARBALL}")
def test_shared_jpeg_copy_loads_in_full_and_then_from_cache(tmp_path):
    c = cfg(tmp_path, source="cifar10_folder", root=str(SHARED_TARBALL))
    first = D.load_data(c)
    assert (len(first.train_images), len(first.eval_images)) == (50_000, 10_000)
    assert torch.bincount(first.train_labels).tolist() == [5000] * 10
    assert torch.bincount(first.eval_labels).tolist() == [1000] * 10
    start = time.perf_counter()
    second = D.load_data(c)
    assert time.perf_counter() - start < 5
    assert torch.equal(first.train_images, second.train_images)
    mean, _ = D.channel_stats(first.train_images)
    assert torch.allclose(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=2e-3)  # data/README.md
