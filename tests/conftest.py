import os
from pathlib import Path

import pytest
import torch

from experiments import train as train_mod
from tests.helpers import run_folder, smoke_cfg, tiny_cfg

REPO = Path(__file__).resolve().parents[1]
SHARED_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

# Tests share 2 cores with whatever else runs; one thread each keeps them predictable.
torch.set_num_threads(int(os.environ.get("TEST_THREADS", "1")))


@pytest.fixture
def shared_jpeg() -> Path:
    if not SHARED_JPEG.exists():
        pytest.skip(f"the shared CIFAR-10 JPEG copy is absent ({SHARED_JPEG})")
    return SHARED_JPEG


# Uninterrupted references that tests compare killed, resumed or relaunched runs with: trained once per test
# process (in-process, the same numbers as the CLI, which test_faults checks) instead of once per test.
# Read-only for tests: copy a folder (shutil.copytree) to change anything in it.
@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory) -> Path:
    """The results folder of `make sweep EXP=smoke` run to the end."""
    root = tmp_path_factory.mktemp("smoke-ref")
    for model in ("plain", "resnet"):
        train_mod.run(smoke_cfg(root, model))
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The run folder of one tiny run (tests.helpers.TINY, seed 0) run to the end."""
    root = tmp_path_factory.mktemp("tiny-ref")
    train_mod.run(tiny_cfg(root))
    return run_folder(root)
