"""Load the configured data once and describe it: sizes, class counts, statistics, cache files.

    python -m experiments.data [hydra overrides]      # what `make data DATA=... DATA_ROOT=...` runs
"""
from __future__ import annotations

import sys
import time

import torch

from experiments import CONF
from experiments.data.dataset import CifarData, channel_stats, check_data_option, load_data
from experiments.data.sources import CLASSES, DataError


def _describe(data: CifarData, seconds: float) -> str:
    mean, std = channel_stats(data.train_images)
    counts = lambda labels: " ".join(f"{n}:{int(k)}" for n, k in zip(CLASSES, torch.bincount(labels, minlength=10)))
    return "\n".join([
        f"source        {data.source} (split={data.split})",
        f"train         {len(data.train_images)} images  {counts(data.train_labels)}",
        f"eval ({data.split})".ljust(14) + f"{len(data.eval_images)} images  {counts(data.eval_labels)}",
        f"mean (train)  " + " ".join(f"{v:.4f}" for v in mean.tolist()) + "   per channel, [0,1] units",
        f"std (train)   " + " ".join(f"{v:.4f}" for v in std.tolist()),
        f"cache         " + (", ".join(data.cache_files) or "none (fake data is generated)"),
        f"loaded in     {seconds:.2f} s",
    ])


def main() -> None:
    import hydra

    from experiments.runfiles import hydra_quote

    # `make data DATA_ROOT=...` passes the path as `--data-root PATH`: quoted here, a space, a comma or
    # a non-ASCII letter in it is part of the path, not Hydra syntax.
    if "--data-root" in sys.argv[1:-1]:
        i = sys.argv.index("--data-root")
        sys.argv[i:i + 2] = [f"data.root={hydra_quote(sys.argv[i + 1])}"]

    try:  # `make data DATA=nosuch`: one line here, not Hydra's many after composing
        for arg in sys.argv[1:]:
            if arg.lstrip("+").startswith("data="):
                check_data_option(arg.split("=", 1)[1])
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    @hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
    def describe(cfg) -> None:
        start = time.perf_counter()
        try:
            data = load_data(cfg.data)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(_describe(data, time.perf_counter() - start))

    describe()


if __name__ == "__main__":
    main()
