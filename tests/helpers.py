"""Shared helpers: compose the suite's config in-process and read run folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
# The one tiny config (conf/recipe/tiny.yaml, which the smoke sweep uses too): 8-layer nets, 512 fake images,
# 40 iterations, one CPU thread. `data=<source>` after it replaces the fake data, sizes and all.
TINY = ["recipe=tiny"]
TIMING = ("elapsed_s", "images_per_s")


def tiny_cfg(results: Path, *overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[*TINY, f"results_dir={results}", *overrides])


def smoke_cfg(results: Path, model: str):
    """One run of `make sweep EXP=smoke`, composed as the sweep's Hydra job composes it."""
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["experiment=smoke", f"results_dir={results}", f"model={model}",
                                            "model.depth=8", "seed=0"])


def cli(*args: str, env: dict | None = None, module: str = "experiments.train", timeout: int = 300):
    """Run a module as a user would, in the repo, with one thread."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def make(*args: str) -> list[str]:
    """`make ARGS` as a test runs it: with PY set to the Python running the tests, so `make test PY=...` in an
    environment of one's own tests that environment, never .venv (which it may not have). A PY handed down by
    an outer make (MAKEFLAGS) is replaced too, and so is .venv's setup step: nothing is installed."""
    return ["make", "--no-print-directory", f"PY={sys.executable}", *args]


def run_folder(results: Path, name: str = "resnet-8-A", seed: int = 0, exp: str = "single") -> Path:
    return results / exp / "runs" / name / f"seed={seed}"


def metrics(folder: Path, drop_timing: bool = True) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (drop_timing and k in TIMING)} for r in rows]


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def png_tree(root: Path, train_per_class: int = 4, test_per_class: int = 2, seed: int = 0, **save) -> Path:
    """A CIFAR-10 folder tree (<root>/<train|test>/<class>/<i>.png) of random 32x32 images, as the folder
    source reads one; `save` goes to PIL (compress_level=0: every file the same size)."""
    import numpy as np
    from PIL import Image

    from experiments.data import CLASSES
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                image.save(root / split / name / f"{i}.png", **save)
    return root
