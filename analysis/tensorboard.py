"""Every run's curves as TensorBoard event files, for users who look there.

    pip install '.[tensorboard]'
    python -m analysis.tensorboard --results results/<exp> [--logdir results/<exp>/tensorboard]
    tensorboard --logdir results/<exp>/tensorboard

Reads the same files as the report (metrics.jsonl of every run, whatever its status) and writes one
event-file folder per run, <logdir>/<arch>-<depth>-<shortcut>/seed=<k>/, with the step = iteration.
Rerunning replaces the event files it wrote before, so the export never holds a point twice.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from analysis.collect import ResultsError, collect

# metrics.jsonl field -> TensorBoard tag (grouped so train and test of one quantity share a section)
TAGS = {"train_err": "error/train", "test_err": "error/test", "train_loss": "loss/train", "test_loss": "loss/test",
        "lr": "lr", "images_per_s": "throughput/images_per_s"}
EVENTS = "events.out.tfevents.*"


def export(results_dir: Path, logdir: Path) -> list[Path]:
    """Write the event files; returns the run folders written. Raises ResultsError, ImportError."""
    from tensorboard.summary import Writer  # numpy-only writer: no TensorFlow, no torch

    metrics = collect(results_dir).metrics
    written = []
    for run, points in metrics.groupby("run_id", sort=True):
        folder = logdir / run
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(EVENTS):
            old.unlink()
        writer = Writer(str(folder))
        for point in points.sort_values("iter").itertuples(index=False):
            for field, tag in TAGS.items():
                value = getattr(point, field)
                if value is not None and math.isfinite(float(value)):
                    writer.add_scalar(tag, float(value), int(point.iter))
        writer.close()
        written.append(folder)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.tensorboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, type=Path, help="an experiment folder, e.g. results/quick")
    parser.add_argument("--logdir", type=Path, help="where the event files go (default <results>/tensorboard)")
    args = parser.parse_args(argv)
    try:
        written = export(args.results, args.logdir or args.results / "tensorboard")
    except ImportError:
        print("error: TensorBoard is not installed; pip install '.[tensorboard]' (or pip install tensorboard)",
              file=sys.stderr)
        return 2
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logdir = args.logdir or args.results / "tensorboard"
    print(f"wrote {len(written)} runs under {logdir}; view them with: tensorboard --logdir {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
