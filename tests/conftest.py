import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

# Tests share 2 cores with whatever else runs; one thread each keeps them predictable.
torch.set_num_threads(int(os.environ.get("TEST_THREADS", "1")))


@pytest.fixture
def shared_jpeg() -> Path:
    if not SHARED_JPEG.exists():
        pytest.skip(f"the shared CIFAR-10 JPEG copy is absent ({SHARED_JPEG})")
    return SHARED_JPEG
